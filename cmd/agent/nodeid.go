package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// defaultNodeID is this node's identity in its lease when --node-id is not given: an application-specific
// hash of the machine ID (/etc/machine-id, else /var/lib/dbus/machine-id), which machine-id(5) asks not to
// publish as it is; without one, "host:" and the hostname; empty if neither is known.
func defaultNodeID(readFile func(string) ([]byte, error), hostname func() (string, error)) string {
	for _, p := range []string{"/etc/machine-id", "/var/lib/dbus/machine-id"} {
		b, err := readFile(p)
		if id := strings.TrimSpace(string(b)); err == nil && id != "" {
			m := hmac.New(sha256.New, []byte("weft node id"))
			m.Write([]byte(id))
			return hex.EncodeToString(m.Sum(nil)[:16])
		}
	}
	if h, err := hostname(); err == nil && h != "" {
		return "host:" + h
	}
	return ""
}

package main

import (
	"errors"
	"io/fs"
	"strings"
	"testing"
)

func TestDefaultNodeID(t *testing.T) {
	const mid = "4f1c8b2e9a7d4c3b8e6f0a1b2c3d4e5f"
	files := func(m map[string]string) func(string) ([]byte, error) {
		return func(p string) ([]byte, error) {
			if v, ok := m[p]; ok {
				return []byte(v), nil
			}
			return nil, fs.ErrNotExist
		}
	}
	host := func(h string) func() (string, error) {
		return func() (string, error) {
			if h == "" {
				return "", errors.New("no hostname")
			}
			return h, nil
		}
	}
	fromMachine := defaultNodeID(files(map[string]string{"/etc/machine-id": mid + "\n"}), host("node1"))
	tests := []struct {
		name  string
		files map[string]string
		host  string
		check func(string) string // "" if fine
	}{
		{"machine id: hashed, never shown", map[string]string{"/etc/machine-id": mid + "\n"}, "node1", func(id string) string {
			if len(id) != 32 || strings.Contains(id, mid[:8]) || id != fromMachine {
				return "want a stable 32-hex-digit hash that does not show the machine ID"
			}
			return ""
		}},
		{"dbus machine id", map[string]string{"/var/lib/dbus/machine-id": mid}, "node1", func(id string) string {
			if id != fromMachine {
				return "want the same ID as from /etc/machine-id"
			}
			return ""
		}},
		{"no machine id: the hostname", map[string]string{"/etc/machine-id": "\n"}, "node1", func(id string) string {
			if id != "host:node1" {
				return `want "host:node1"`
			}
			return ""
		}},
		{"nothing", nil, "", func(id string) string {
			if id != "" {
				return "want empty"
			}
			return ""
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := defaultNodeID(files(tt.files), host(tt.host))
			if why := tt.check(id); why != "" {
				t.Errorf("defaultNodeID = %q: %s", id, why)
			}
		})
	}
}

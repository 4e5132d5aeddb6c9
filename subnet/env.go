package subnet

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DefaultEnvFile is where flanneld writes the subnet env file.
const DefaultEnvFile = "/run/flannel/subnet.env"

// Env is the content of the subnet env file (flannel's subnet.env) that dockerd and the flannel CNI plugin read.
type Env struct {
	Network     netip.Prefix // FLANNEL_NETWORK; zero for an IPv6-only network
	Subnet      netip.Prefix // FLANNEL_SUBNET: the subnet's first host address with the subnet length
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK; written only when valid
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET; written only when valid
	MTU         int          // FLANNEL_MTU
	IPMasq      bool         // FLANNEL_IPMASQ
}

// Marshal returns the file content, variables in flannel's order.
func (e Env) Marshal() []byte {
	var b bytes.Buffer
	if e.Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	}
	if e.IPv6Network.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes()
}

// WriteEnvFile writes e to path atomically (temp file in the same directory, then rename), mode 0644,
// creating the directory with mode 0755 if needed.
func WriteEnvFile(path string, e Env) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create env file directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(e.Marshal())
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write env file %s: %w", path, err)
	}
	return nil
}

// ReadEnvVars reads a shell-style env file of NAME=value lines into a map. Blank lines and # comments are
// skipped; a value may be wrapped in single or double quotes.
func ReadEnvVars(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		line = strings.TrimPrefix(line, "export ")
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s:%d: %q: want NAME=value", path, n, line)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		vars[strings.TrimSpace(k)] = v
	}
	return vars, sc.Err()
}

// ReadEnvFile reads and parses a subnet env file written by weftd or flanneld.
func ReadEnvFile(path string) (Env, error) {
	vars, err := ReadEnvVars(path)
	if err != nil {
		return Env{}, fmt.Errorf("read env file: %w", err)
	}
	var e Env
	prefix := func(name string, dst *netip.Prefix) error {
		v, ok := vars[name]
		if !ok {
			return nil
		}
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return fmt.Errorf("env file %s: %s=%q: want a CIDR: %w", path, name, v, err)
		}
		*dst = p
		return nil
	}
	for name, dst := range map[string]*netip.Prefix{
		"FLANNEL_NETWORK": &e.Network, "FLANNEL_SUBNET": &e.Subnet,
		"FLANNEL_IPV6_NETWORK": &e.IPv6Network, "FLANNEL_IPV6_SUBNET": &e.IPv6Subnet,
	} {
		if err := prefix(name, dst); err != nil {
			return Env{}, err
		}
	}
	if v, ok := vars["FLANNEL_MTU"]; ok {
		if e.MTU, err = strconv.Atoi(v); err != nil {
			return Env{}, fmt.Errorf("env file %s: FLANNEL_MTU=%q: want an integer", path, v)
		}
	}
	if v, ok := vars["FLANNEL_IPMASQ"]; ok {
		if e.IPMasq, err = strconv.ParseBool(v); err != nil {
			return Env{}, fmt.Errorf("env file %s: FLANNEL_IPMASQ=%q: want true or false", path, v)
		}
	}
	return e, nil
}

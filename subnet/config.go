package subnet

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Backend type names accepted in the network config.
const (
	BackendUDP    = "udp"
	BackendVXLAN  = "vxlan"
	BackendHostGW = "host-gw"
	BackendAlloc  = "alloc"
)

// BackendTypes lists every backend type the config may name.
var BackendTypes = []string{BackendAlloc, BackendHostGW, BackendUDP, BackendVXLAN}

// DefaultBackendType is used when the config has no Backend.Type. flannel's code defaults to udp while its
// docs say vxlan; we follow the docs.
const DefaultBackendType = BackendVXLAN

// Config is the network config stored at "<prefix>/config" (flannel's JSON schema).
type Config struct {
	EnableIPv4 bool         // default true
	Network    netip.Prefix // IPv4 overlay; required when EnableIPv4
	SubnetLen  int          // default 24 for a /22 or larger Network, else Network's length + 2
	SubnetMin  netip.Addr   // first allocatable subnet; default Network's second subnet
	SubnetMax  netip.Addr   // last allocatable subnet; default Network's last subnet

	EnableIPv6    bool         // default false
	IPv6Network   netip.Prefix // required when EnableIPv6
	IPv6SubnetLen int          // default 64 for a /62 or larger IPv6Network, else its length + 2
	IPv6SubnetMin netip.Addr   // default IPv6Network's second subnet
	IPv6SubnetMax netip.Addr   // default IPv6Network's last subnet

	// EnableNFTables selects nftables for the packet filter rules instead of iptables (flannel's key);
	// default false, and agents also use nftables when the host has no iptables command.
	EnableNFTables bool

	BackendType string          // Backend.Type; DefaultBackendType when absent
	Backend     json.RawMessage // the whole Backend object, for the backend to decode its own keys

	// DefaultedBackend is true when Backend.Type was absent and BackendType was defaulted.
	DefaultedBackend bool
}

// configJSON is the wire form. Go's encoding/json matches field names case-insensitively, as flannel does.
type configJSON struct {
	EnableIPv4     *bool           `json:"EnableIPv4,omitempty"`
	EnableIPv6     *bool           `json:"EnableIPv6,omitempty"`
	Network        string          `json:"Network,omitempty"`
	SubnetLen      int             `json:"SubnetLen,omitempty"`
	SubnetMin      string          `json:"SubnetMin,omitempty"`
	SubnetMax      string          `json:"SubnetMax,omitempty"`
	IPv6Network    string          `json:"IPv6Network,omitempty"`
	IPv6SubnetLen  int             `json:"IPv6SubnetLen,omitempty"`
	IPv6SubnetMin  string          `json:"IPv6SubnetMin,omitempty"`
	IPv6SubnetMax  string          `json:"IPv6SubnetMax,omitempty"`
	EnableNFTables bool            `json:"EnableNFTables,omitempty"`
	Backend        json.RawMessage `json:"Backend,omitempty"`
}

// ConfigError is a validation error naming the field, the offending value and the rule.
type ConfigError struct {
	Field string
	Value string
	Rule  string
}

func (e *ConfigError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("network config: %s: %s", e.Field, e.Rule)
	}
	return fmt.Sprintf("network config: %s %s: %s", e.Field, e.Value, e.Rule)
}

func cfgErr(field, value, rule string, args ...any) error {
	return &ConfigError{Field: field, Value: value, Rule: fmt.Sprintf(rule, args...)}
}

// ParseConfig decodes, defaults and validates a network config.
func ParseConfig(data []byte) (*Config, error) {
	var j configJSON
	// Unmarshal, not a Decoder: data after the object (a misplaced brace) must be an error, as in flannel.
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("network config: not valid JSON: %w", err)
	}
	c := &Config{EnableIPv4: true}
	if j.EnableIPv4 != nil {
		c.EnableIPv4 = *j.EnableIPv4
	}
	if j.EnableIPv6 != nil {
		c.EnableIPv6 = *j.EnableIPv6
	}
	if !c.EnableIPv4 && !c.EnableIPv6 {
		return nil, cfgErr("EnableIPv4", "false", "at least one of EnableIPv4 and EnableIPv6 must be true")
	}
	var err error
	if c.EnableIPv4 {
		c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax, err = parseFamily(familyFields{
			net: "Network", len: "SubnetLen", min: "SubnetMin", max: "SubnetMax",
			maxLen: 30, defaultLen: 24, defaultFrom: 22, v6: false,
		}, j.Network, j.SubnetLen, j.SubnetMin, j.SubnetMax)
		if err != nil {
			return nil, err
		}
	}
	if c.EnableIPv6 {
		c.IPv6Network, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax, err = parseFamily(familyFields{
			net: "IPv6Network", len: "IPv6SubnetLen", min: "IPv6SubnetMin", max: "IPv6SubnetMax",
			maxLen: 126, defaultLen: 64, defaultFrom: 62, v6: true,
		}, j.IPv6Network, j.IPv6SubnetLen, j.IPv6SubnetMin, j.IPv6SubnetMax)
		if err != nil {
			return nil, err
		}
	}
	c.EnableNFTables = j.EnableNFTables
	c.Backend = j.Backend
	if err := c.parseBackend(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) parseBackend() error {
	if len(c.Backend) == 0 || string(c.Backend) == "null" {
		c.Backend = nil
		c.BackendType, c.DefaultedBackend = DefaultBackendType, true
		return nil
	}
	// A struct, not a map: "Type" matches case-insensitively and, of several case variants, the last one
	// wins, deterministically and as for every other field.
	var b struct{ Type json.RawMessage }
	if err := json.Unmarshal(c.Backend, &b); err != nil {
		return cfgErr("Backend", string(c.Backend), "must be a JSON object")
	}
	raw := b.Type
	if raw == nil {
		c.BackendType, c.DefaultedBackend = DefaultBackendType, true
		return nil
	}
	if err := json.Unmarshal(raw, &c.BackendType); err != nil {
		return cfgErr("Backend.Type", string(raw), "must be a string")
	}
	// flanneld lowercases the type when it picks a backend, so "VXLAN" works there; it must here too.
	given := c.BackendType
	c.BackendType = strings.ToLower(given)
	if !slices.Contains(BackendTypes, c.BackendType) {
		return cfgErr("Backend.Type", fmt.Sprintf("%q", given), "unknown backend type, want one of %s", strings.Join(BackendTypes, ", "))
	}
	return nil
}

type familyFields struct {
	net, len, min, max string
	maxLen             int
	defaultLen         int // used when the network's length is <= defaultFrom
	defaultFrom        int
	v6                 bool
}

func parseFamily(f familyFields, network string, subnetLen int, minS, maxS string) (netip.Prefix, int, netip.Addr, netip.Addr, error) {
	var zp netip.Prefix
	var za netip.Addr
	fam := "IPv4"
	if f.v6 {
		fam = "IPv6"
	}
	if network == "" {
		return zp, 0, za, za, cfgErr(f.net, "", "required (an %s CIDR such as %s)", fam, map[bool]string{false: "10.5.0.0/16", true: "fd00:5::/48"}[f.v6])
	}
	n, err := netip.ParsePrefix(network)
	if err != nil || n.Addr().Is6() != f.v6 || n.Addr().Is4In6() {
		return zp, 0, za, za, cfgErr(f.net, fmt.Sprintf("%q", network), "must be an %s CIDR", fam)
	}
	n = n.Masked()
	switch {
	case subnetLen < 0:
		return zp, 0, za, za, cfgErr(f.len, fmt.Sprint(subnetLen), "must not be negative")
	case subnetLen == 0:
		if n.Bits() <= f.defaultFrom {
			subnetLen = f.defaultLen
		} else {
			subnetLen = n.Bits() + 2
		}
		if subnetLen > f.maxLen {
			return zp, 0, za, za, cfgErr(f.net, network, "too small: must be at most /%d to hold four /%d subnets", f.maxLen-2, f.maxLen)
		}
	case subnetLen > f.maxLen:
		return zp, 0, za, za, cfgErr(f.len, fmt.Sprint(subnetLen), "must be at most %d", f.maxLen)
	case subnetLen < n.Bits()+2:
		return zp, 0, za, za, cfgErr(f.len, fmt.Sprint(subnetLen), "must be at least %s's prefix length + 2 = %d (room for four subnets)", f.net, n.Bits()+2)
	}
	first := netip.PrefixFrom(n.Addr(), subnetLen)
	lo := NextSubnet(first)
	hi := LastSubnet(n, subnetLen)
	parseBound := func(field, s string, def netip.Addr) (netip.Addr, error) {
		if s == "" {
			return def, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Is6() != f.v6 || a.Zone() != "" {
			return za, cfgErr(field, fmt.Sprintf("%q", s), "must be an %s address", fam)
		}
		if !n.Contains(a) {
			return za, cfgErr(field, s, "must lie inside %s %s", f.net, n)
		}
		if netip.PrefixFrom(a, subnetLen).Masked().Addr() != a {
			return za, cfgErr(field, s, "must be aligned to %s %d (the start of a /%d subnet)", f.len, subnetLen, subnetLen)
		}
		return a, nil
	}
	minA, err := parseBound(f.min, minS, lo.Addr())
	if err != nil {
		return zp, 0, za, za, err
	}
	maxA, err := parseBound(f.max, maxS, hi.Addr())
	if err != nil {
		return zp, 0, za, za, err
	}
	if maxA.Less(minA) {
		return zp, 0, za, za, cfgErr(f.max, maxA.String(), "must not be below %s %s", f.min, minA)
	}
	return n, subnetLen, minA, maxA, nil
}

// MarshalJSON encodes the config in flannel's schema, with defaults made explicit.
func (c *Config) MarshalJSON() ([]byte, error) {
	t, f := true, false
	j := configJSON{Backend: c.Backend, EnableNFTables: c.EnableNFTables}
	if c.EnableIPv4 {
		j.Network, j.SubnetLen = c.Network.String(), c.SubnetLen
		j.SubnetMin, j.SubnetMax = c.SubnetMin.String(), c.SubnetMax.String()
	} else {
		j.EnableIPv4 = &f
	}
	if c.EnableIPv6 {
		j.EnableIPv6 = &t
		j.IPv6Network, j.IPv6SubnetLen = c.IPv6Network.String(), c.IPv6SubnetLen
		j.IPv6SubnetMin, j.IPv6SubnetMax = c.IPv6SubnetMin.String(), c.IPv6SubnetMax.String()
	}
	if j.Backend == nil && c.BackendType != "" {
		j.Backend, _ = json.Marshal(map[string]string{"Type": c.BackendType})
	}
	return json.Marshal(j)
}

// Fits reports whether lease l is allocatable under c: its subnets have the configured length and lie in
// [SubnetMin, SubnetMax] of each enabled family.
func (c *Config) Fits(l Lease) bool {
	if c.EnableIPv4 && !inRange(l.Subnet, c.SubnetLen, c.SubnetMin, c.SubnetMax) {
		return false
	}
	if c.EnableIPv6 && !inRange(l.IPv6Subnet, c.IPv6SubnetLen, c.IPv6SubnetMin, c.IPv6SubnetMax) {
		return false
	}
	return true
}

func inRange(p netip.Prefix, bits int, lo, hi netip.Addr) bool {
	return p.IsValid() && p.Bits() == bits && p.Masked() == p && !p.Addr().Less(lo) && !hi.Less(p.Addr())
}

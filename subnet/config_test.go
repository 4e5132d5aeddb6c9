package subnet_test

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// want is the part of a parsed Config a test checks; zero fields are not checked.
type want struct {
	network                netip.Prefix
	subnetLen              int
	subnetMin, subnetMax   netip.Addr
	ipv4Off                bool
	ipv6Network            netip.Prefix
	ipv6SubnetLen          int
	ipv6SubnetMin, ipv6Max netip.Addr
	backend                string
	defaulted              bool
}

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name string
		json string
		want want
	}{
		// SubnetLen defaults: 24 for a /22 or larger Network, else the Network's length + 2.
		{"/16 defaults to /24", `{"Network":"10.5.0.0/16"}`,
			want{network: pfx("10.5.0.0/16"), subnetLen: 24, subnetMin: addr("10.5.1.0"), subnetMax: addr("10.5.255.0")}},
		{"/8", `{"Network":"10.0.0.0/8"}`,
			want{subnetLen: 24, subnetMin: addr("10.0.1.0"), subnetMax: addr("10.255.255.0")}},
		{"/22 defaults to /24", `{"Network":"10.5.4.0/22"}`,
			want{subnetLen: 24, subnetMin: addr("10.5.5.0"), subnetMax: addr("10.5.7.0")}},
		{"/23 defaults to /25", `{"Network":"10.5.4.0/23"}`,
			want{subnetLen: 25, subnetMin: addr("10.5.4.128"), subnetMax: addr("10.5.5.128")}},
		{"/28 defaults to /30", `{"Network":"10.5.4.0/28"}`,
			want{subnetLen: 30, subnetMin: addr("10.5.4.4"), subnetMax: addr("10.5.4.12")}},
		{"Network with host bits is masked", `{"Network":"10.5.77.9/16"}`,
			want{network: pfx("10.5.0.0/16"), subnetMin: addr("10.5.1.0")}},
		{"explicit SubnetLen", `{"Network":"10.5.0.0/16","SubnetLen":26}`,
			want{subnetLen: 26, subnetMin: addr("10.5.0.64"), subnetMax: addr("10.5.255.192")}},
		{"SubnetLen 30 is the maximum", `{"Network":"10.5.0.0/16","SubnetLen":30}`,
			want{subnetLen: 30, subnetMax: addr("10.5.255.252")}},
		{"SubnetLen = Network + 2 is the minimum", `{"Network":"10.5.0.0/16","SubnetLen":18}`,
			want{subnetLen: 18, subnetMin: addr("10.5.64.0"), subnetMax: addr("10.5.192.0")}},
		{"SubnetMin and SubnetMax", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0"}`,
			want{subnetMin: addr("10.5.10.0"), subnetMax: addr("10.5.20.0")}},
		{"SubnetMin may be the network's first subnet", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.0.0"}`,
			want{subnetMin: addr("10.5.0.0"), subnetMax: addr("10.5.255.0")}},
		{"SubnetMin = SubnetMax", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.9.0","SubnetMax":"10.5.9.0"}`,
			want{subnetMin: addr("10.5.9.0"), subnetMax: addr("10.5.9.0")}},

		// Backend.
		{"Backend missing: vxlan, defaulted", `{"Network":"10.5.0.0/16"}`, want{backend: "vxlan", defaulted: true}},
		{"Backend null: vxlan, defaulted", `{"Network":"10.5.0.0/16","Backend":null}`, want{backend: "vxlan", defaulted: true}},
		{"Backend without Type: vxlan, defaulted", `{"Network":"10.5.0.0/16","Backend":{"VNI":4}}`, want{backend: "vxlan", defaulted: true}},
		{"udp", `{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":8285}}`, want{backend: "udp"}},
		{"type case folded as flanneld does", `{"Network":"10.5.0.0/16","Backend":{"Type":"VXLAN"}}`, want{backend: "vxlan"}},
		{"host-gw in mixed case", `{"Network":"10.5.0.0/16","Backend":{"Type":"Host-GW"}}`, want{backend: "host-gw"}},
		{"vxlan", `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`, want{backend: "vxlan"}},
		{"host-gw", `{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}`, want{backend: "host-gw"}},
		{"alloc", `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`, want{backend: "alloc"}},

		// Field names match case-insensitively, as encoding/json (and so flannel) does.
		{"lower-case field names", `{"network":"10.5.0.0/16","subnetlen":26,"subnetmin":"10.5.1.0","backend":{"type":"udp"}}`,
			want{network: pfx("10.5.0.0/16"), subnetLen: 26, subnetMin: addr("10.5.1.0"), backend: "udp"}},
		{"upper-case field names", `{"NETWORK":"10.5.0.0/16","BACKEND":{"TYPE":"host-gw"}}`,
			want{network: pfx("10.5.0.0/16"), backend: "host-gw"}},
		{"the last of two case variants wins, as in encoding/json", `{"Network":"10.5.0.0/16","Backend":{"Type":"udp","type":"host-gw"}}`,
			want{backend: "host-gw"}},
		{"unknown fields are ignored", `{"Network":"10.5.0.0/16","Comment":"x","Networks":["10.6.0.0/16"]}`,
			want{network: pfx("10.5.0.0/16")}},

		// IPv6.
		{"dual stack, /48 defaults to /64", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48"}`,
			want{network: pfx("10.5.0.0/16"), ipv6Network: pfx("fd00:5::/48"), ipv6SubnetLen: 64,
				ipv6SubnetMin: addr("fd00:5:0:1::"), ipv6Max: addr("fd00:5:0:ffff::")}},
		{"/62 defaults to /64", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/62"}`,
			want{ipv6SubnetLen: 64, ipv6SubnetMin: addr("fd00:5:0:1::"), ipv6Max: addr("fd00:5:0:3::")}},
		{"/63 defaults to /65", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/63"}`,
			want{ipv6SubnetLen: 65, ipv6SubnetMin: addr("fd00:5::8000:0:0:0"), ipv6Max: addr("fd00:5:0:1:8000::")}},
		{"/124 defaults to /126", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/124"}`,
			want{ipv6SubnetLen: 126, ipv6SubnetMin: addr("fd00:5::4"), ipv6Max: addr("fd00:5::c")}},
		{"IPv6SubnetLen 126 is the maximum", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":126}`,
			want{ipv6SubnetLen: 126}},
		{"IPv6SubnetMin and Max", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:5:0:10::","IPv6SubnetMax":"fd00:5:0:20::"}`,
			want{ipv6Network: pfx("fd00:5::/48"), ipv6SubnetMin: addr("fd00:5:0:10::"), ipv6Max: addr("fd00:5:0:20::")}},
		{"IPv6 only", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48"}`,
			want{ipv4Off: true, ipv6Network: pfx("fd00:5::/48"), ipv6SubnetLen: 64}},
		{"IPv6 only ignores a bad Network", `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Network":"bogus"}`,
			want{ipv4Off: true, ipv6SubnetLen: 64}},
		{"EnableIPv6 false ignores IPv6Network", `{"Network":"10.5.0.0/16","IPv6Network":"bogus"}`,
			want{network: pfx("10.5.0.0/16")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := subnet.ParseConfig([]byte(tt.json))
			if err != nil {
				t.Fatalf("ParseConfig(%s): %v", tt.json, err)
			}
			w := tt.want
			check := func(field string, got, want any, zero bool) {
				t.Helper()
				if !zero && got != want {
					t.Errorf("%s = %v, want %v", field, got, want)
				}
			}
			check("EnableIPv4", c.EnableIPv4, !w.ipv4Off, false)
			check("EnableIPv6", c.EnableIPv6, w.ipv6Network.IsValid() || w.ipv6SubnetLen != 0, false)
			check("Network", c.Network, w.network, !w.network.IsValid())
			check("SubnetLen", c.SubnetLen, w.subnetLen, w.subnetLen == 0)
			check("SubnetMin", c.SubnetMin, w.subnetMin, !w.subnetMin.IsValid())
			check("SubnetMax", c.SubnetMax, w.subnetMax, !w.subnetMax.IsValid())
			check("IPv6Network", c.IPv6Network, w.ipv6Network, !w.ipv6Network.IsValid())
			check("IPv6SubnetLen", c.IPv6SubnetLen, w.ipv6SubnetLen, w.ipv6SubnetLen == 0)
			check("IPv6SubnetMin", c.IPv6SubnetMin, w.ipv6SubnetMin, !w.ipv6SubnetMin.IsValid())
			check("IPv6SubnetMax", c.IPv6SubnetMax, w.ipv6Max, !w.ipv6Max.IsValid())
			check("BackendType", c.BackendType, w.backend, w.backend == "")
			check("DefaultedBackend", c.DefaultedBackend, w.defaulted, w.backend == "")
			if w.ipv4Off && (c.Network.IsValid() || c.SubnetLen != 0 || c.SubnetMin.IsValid() || c.SubnetMax.IsValid()) {
				t.Errorf("IPv4 disabled but IPv4 fields set: %+v", c)
			}
			if !c.EnableIPv6 && (c.IPv6Network.IsValid() || c.IPv6SubnetLen != 0) {
				t.Errorf("IPv6 disabled but IPv6 fields set: %+v", c)
			}
		})
	}
}

func TestParseConfigKeepsBackendObject(t *testing.T) {
	const backend = `{"Type":"vxlan","VNI":4,"Port":4789,"DirectRouting":true}`
	c, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":` + backend + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(c.Backend) != backend {
		t.Errorf("Backend = %s, want %s", c.Backend, backend)
	}
	c, err = subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16"}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != nil {
		t.Errorf("Backend = %s, want nil when absent", c.Backend)
	}
}

// TestParseConfigErrors checks that every validation error is a *ConfigError naming the field, the value
// and the rule.
func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name  string
		json  string
		field string
		value string   // substring of the message; "" when the error has no value
		rule  []string // substrings of the message
	}{
		{"Network missing", `{}`, "Network", "", []string{"required", "IPv4 CIDR"}},
		{"Network empty", `{"Network":""}`, "Network", "", []string{"required"}},
		{"Network not a CIDR", `{"Network":"10.5.0.0"}`, "Network", `"10.5.0.0"`, []string{"must be an IPv4 CIDR"}},
		{"Network garbage", `{"Network":"ten.five/16"}`, "Network", `"ten.five/16"`, []string{"must be an IPv4 CIDR"}},
		{"Network IPv6", `{"Network":"fd00::/48"}`, "Network", `"fd00::/48"`, []string{"must be an IPv4 CIDR"}},
		{"Network IPv4-mapped", `{"Network":"::ffff:10.5.0.0/112"}`, "Network", `"::ffff:10.5.0.0/112"`, []string{"IPv4 CIDR"}},
		{"Network /29 too small for the default", `{"Network":"10.5.4.0/29"}`, "Network", "10.5.4.0/29", []string{"too small", "/28", "/30"}},
		{"Network /32", `{"Network":"10.5.4.1/32"}`, "Network", "10.5.4.1/32", []string{"too small"}},
		{"SubnetLen 31", `{"Network":"10.5.0.0/16","SubnetLen":31}`, "SubnetLen", "31", []string{"at most 30"}},
		{"SubnetLen 32", `{"Network":"10.5.0.0/16","SubnetLen":32}`, "SubnetLen", "32", []string{"at most 30"}},
		{"SubnetLen < Network + 2", `{"Network":"10.5.0.0/16","SubnetLen":17}`, "SubnetLen", "17", []string{"at least", "Network", "18"}},
		{"SubnetLen = Network length", `{"Network":"10.5.0.0/16","SubnetLen":16}`, "SubnetLen", "16", []string{"at least", "18"}},
		{"SubnetLen shorter than Network", `{"Network":"10.5.0.0/16","SubnetLen":8}`, "SubnetLen", "8", []string{"at least"}},
		{"SubnetLen with a /29", `{"Network":"10.5.4.0/29","SubnetLen":30}`, "SubnetLen", "30", []string{"at least", "31"}},
		{"SubnetLen negative", `{"Network":"10.5.0.0/16","SubnetLen":-1}`, "SubnetLen", "-1", []string{"negative"}},
		{"SubnetMin below Network", `{"Network":"10.5.0.0/16","SubnetMin":"10.4.255.0"}`, "SubnetMin", "10.4.255.0", []string{"inside", "Network", "10.5.0.0/16"}},
		{"SubnetMin above Network", `{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}`, "SubnetMin", "10.6.0.0", []string{"inside", "10.5.0.0/16"}},
		{"SubnetMax outside Network", `{"Network":"10.5.0.0/16","SubnetMax":"10.6.0.0"}`, "SubnetMax", "10.6.0.0", []string{"inside", "10.5.0.0/16"}},
		{"SubnetMin unaligned", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.128"}`, "SubnetMin", "10.5.1.128", []string{"aligned", "SubnetLen 24"}},
		{"SubnetMax unaligned", `{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMax":"10.5.9.32"}`, "SubnetMax", "10.5.9.32", []string{"aligned", "SubnetLen 26"}},
		{"SubnetMin not an address", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0/24"}`, "SubnetMin", `"10.5.1.0/24"`, []string{"must be an IPv4 address"}},
		{"SubnetMax IPv6", `{"Network":"10.5.0.0/16","SubnetMax":"fd00::"}`, "SubnetMax", `"fd00::"`, []string{"must be an IPv4 address"}},
		{"SubnetMax < SubnetMin", `{"Network":"10.5.0.0/16","SubnetMin":"10.5.20.0","SubnetMax":"10.5.10.0"}`, "SubnetMax", "10.5.10.0", []string{"below", "SubnetMin", "10.5.20.0"}},
		{"SubnetMax below the default SubnetMin", `{"Network":"10.5.0.0/16","SubnetMax":"10.5.0.0"}`, "SubnetMax", "10.5.0.0", []string{"below", "SubnetMin 10.5.1.0"}},
		{"both families disabled", `{"Network":"10.5.0.0/16","EnableIPv4":false}`, "EnableIPv4", "false", []string{"at least one", "EnableIPv6"}},
		{"IPv6 enabled without IPv6Network", `{"Network":"10.5.0.0/16","EnableIPv6":true}`, "IPv6Network", "", []string{"required", "IPv6 CIDR"}},
		{"IPv6 only without IPv6Network", `{"EnableIPv4":false,"EnableIPv6":true}`, "IPv6Network", "", []string{"required"}},
		{"IPv6Network IPv4", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"10.6.0.0/16"}`, "IPv6Network", `"10.6.0.0/16"`, []string{"must be an IPv6 CIDR"}},
		{"IPv6Network IPv4-mapped", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"::ffff:10.6.0.0/112"}`, "IPv6Network", `"::ffff:10.6.0.0/112"`, []string{"must be an IPv6 CIDR"}},
		{"IPv6Network /125 too small", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}`, "IPv6Network", "fd00::/125", []string{"too small", "/124", "/126"}},
		{"IPv6SubnetLen 127", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}`, "IPv6SubnetLen", "127", []string{"at most 126"}},
		{"IPv6SubnetLen < IPv6Network + 2", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":49}`, "IPv6SubnetLen", "49", []string{"at least", "IPv6Network", "50"}},
		{"IPv6SubnetMin outside", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:6::"}`, "IPv6SubnetMin", "fd00:6::", []string{"inside", "IPv6Network fd00:5::/48"}},
		{"IPv6SubnetMax unaligned", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMax":"fd00:5:0:20::1"}`, "IPv6SubnetMax", "fd00:5:0:20::1", []string{"aligned", "IPv6SubnetLen 64"}},
		{"IPv6SubnetMin IPv4", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"10.5.0.0"}`, "IPv6SubnetMin", `"10.5.0.0"`, []string{"must be an IPv6 address"}},
		{"IPv6SubnetMin with a zone", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:5:0:1::%eth0"}`, "IPv6SubnetMin", `"fd00:5:0:1::%eth0"`, []string{"must be an IPv6 address"}},
		{"IPv6SubnetMax < Min", `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetMin":"fd00:5:0:20::","IPv6SubnetMax":"fd00:5:0:10::"}`, "IPv6SubnetMax", "fd00:5:0:10::", []string{"below", "IPv6SubnetMin fd00:5:0:20::"}},
		{"unknown Backend.Type", `{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}`, "Backend.Type", `"wireguard"`, []string{"unknown backend type", "alloc, host-gw, udp, vxlan"}},
		{"Backend.Type unknown in upper case", `{"Network":"10.5.0.0/16","Backend":{"Type":"WireGuard"}}`, "Backend.Type", `"WireGuard"`, []string{"unknown backend type"}},
		{"Backend.Type empty", `{"Network":"10.5.0.0/16","Backend":{"Type":""}}`, "Backend.Type", `""`, []string{"unknown backend type"}},
		{"Backend.Type a number", `{"Network":"10.5.0.0/16","Backend":{"Type":5}}`, "Backend.Type", "5", []string{"must be a string"}},
		{"Backend.Type an object", `{"Network":"10.5.0.0/16","Backend":{"type":{"name":"udp"}}}`, "Backend.Type", `{"name":"udp"}`, []string{"must be a string"}},
		{"Backend a string", `{"Network":"10.5.0.0/16","Backend":"udp"}`, "Backend", `"udp"`, []string{"must be a JSON object"}},
		{"Backend an array", `{"Network":"10.5.0.0/16","Backend":["udp"]}`, "Backend", `["udp"]`, []string{"must be a JSON object"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := subnet.ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.json, c)
			}
			var ce *subnet.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %q (%T) is not a *subnet.ConfigError", err, err)
			}
			if ce.Field != tt.field {
				t.Errorf("Field = %q, want %q (error %q)", ce.Field, tt.field, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "network config: "+tt.field+" ") && !strings.HasPrefix(msg, "network config: "+tt.field+":") {
				t.Errorf("error %q does not start with the field %q", msg, tt.field)
			}
			if tt.value == "" && ce.Value != "" {
				t.Errorf("Value = %q, want none", ce.Value)
			}
			for _, s := range append([]string{tt.value}, tt.rule...) {
				if !strings.Contains(msg, s) {
					t.Errorf("error %q does not contain %q", msg, s)
				}
			}
		})
	}
}

// TestParseConfigBadJSON covers input that does not decode: not a ConfigError, but a message that says so
// (and names the field for a type mismatch).
func TestParseConfigBadJSON(t *testing.T) {
	tests := []struct {
		name string
		json string
		want []string
	}{
		{"empty", ``, []string{"not valid JSON"}},
		{"truncated", `{"Network":"10.5.0.0/16"`, []string{"not valid JSON"}},
		{"not an object", `"10.5.0.0/16"`, []string{"not valid JSON"}},
		{"trailing comma", `{"Network":"10.5.0.0/16",}`, []string{"not valid JSON"}},
		{"a misplaced brace leaves the Backend outside", `{"Network":"10.5.0.0/16"}, "Backend":{"Type":"host-gw"}}`, []string{"not valid JSON"}},
		{"two objects", `{"Network":"10.5.0.0/16"} {"Network":"10.6.0.0/16"}`, []string{"not valid JSON"}},
		{"SubnetLen a string", `{"Network":"10.5.0.0/16","SubnetLen":"24"}`, []string{"SubnetLen"}},
		{"Network a number", `{"Network":10}`, []string{"Network"}},
		{"EnableIPv6 a string", `{"Network":"10.5.0.0/16","EnableIPv6":"true"}`, []string{"EnableIPv6"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := subnet.ParseConfig([]byte(tt.json))
			if err == nil {
				t.Fatalf("ParseConfig(%s) = %+v, want an error", tt.json, c)
			}
			if !strings.HasPrefix(err.Error(), "network config: ") {
				t.Errorf("error %q does not start with \"network config: \"", err)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestConfigMarshalRoundTrip checks that MarshalJSON makes the defaults explicit and parses back to the
// same Config.
func TestConfigMarshalRoundTrip(t *testing.T) {
	for _, in := range []string{
		`{"Network":"10.5.0.0/16"}`,
		`{"Network":"10.5.4.0/23","SubnetMin":"10.5.5.0","Backend":{"Type":"udp","Port":8285}}`,
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48"}`,
		`{"Network":"10.5.0.0/16","enableNFTables":true}`,
	} {
		c, err := subnet.ParseConfig([]byte(in))
		if err != nil {
			t.Fatalf("ParseConfig(%s): %v", in, err)
		}
		out, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		c2, err := subnet.ParseConfig(out)
		if err != nil {
			t.Fatalf("ParseConfig(Marshal(%s)) = ParseConfig(%s): %v", in, out, err)
		}
		c2.DefaultedBackend = c.DefaultedBackend // the marshalled form names the defaulted type
		if c.Backend == nil {
			c2.Backend = nil
		}
		if string(c2.Backend) != string(c.Backend) {
			t.Errorf("Backend %s, want %s", c2.Backend, c.Backend)
		}
		c2.Backend = c.Backend
		if c.EnableIPv4 != c2.EnableIPv4 || c.Network != c2.Network || c.SubnetLen != c2.SubnetLen ||
			c.SubnetMin != c2.SubnetMin || c.SubnetMax != c2.SubnetMax || c.EnableIPv6 != c2.EnableIPv6 ||
			c.IPv6Network != c2.IPv6Network || c.IPv6SubnetLen != c2.IPv6SubnetLen ||
			c.IPv6SubnetMin != c2.IPv6SubnetMin || c.IPv6SubnetMax != c2.IPv6SubnetMax || c.BackendType != c2.BackendType ||
			c.EnableNFTables != c2.EnableNFTables {
			t.Errorf("round trip of %s via %s:\n got %+v\nwant %+v", in, out, c2, c)
		}
	}
	c, _ := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16"}`))
	out, _ := json.Marshal(c)
	if want := `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMin":"10.5.1.0","SubnetMax":"10.5.255.0","Backend":{"Type":"vxlan"}}`; string(out) != want {
		t.Errorf("Marshal = %s, want %s", out, want)
	}
	c, _ = subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableNFTables":true}`))
	if out, _ := json.Marshal(c); !c.EnableNFTables || !strings.Contains(string(out), `"EnableNFTables":true`) {
		t.Errorf("EnableNFTables: parsed %t, marshalled %s; want true and the key written", c.EnableNFTables, out)
	}
}

func TestConfigFits(t *testing.T) {
	c, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","SubnetMin":"10.5.10.0","SubnetMax":"10.5.20.0","EnableIPv6":true,"IPv6Network":"fd00:5::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	v6 := pfx("fd00:5:0:34::/64")
	tests := []struct {
		l    subnet.Lease
		want bool
	}{
		{subnet.Lease{Subnet: pfx("10.5.10.0/24"), IPv6Subnet: v6}, true},
		{subnet.Lease{Subnet: pfx("10.5.20.0/24"), IPv6Subnet: v6}, true},
		{subnet.Lease{Subnet: pfx("10.5.9.0/24"), IPv6Subnet: v6}, false},                      // below SubnetMin
		{subnet.Lease{Subnet: pfx("10.5.21.0/24"), IPv6Subnet: v6}, false},                     // above SubnetMax
		{subnet.Lease{Subnet: pfx("10.5.12.0/25"), IPv6Subnet: v6}, false},                     // other length
		{subnet.Lease{Subnet: pfx("10.5.12.1/24"), IPv6Subnet: v6}, false},                     // not masked
		{subnet.Lease{Subnet: pfx("10.5.12.0/24")}, false},                                     // IPv6 missing
		{subnet.Lease{Subnet: pfx("10.5.12.0/24"), IPv6Subnet: pfx("fd00:5:0:0::/64")}, false}, // below IPv6SubnetMin
		{subnet.Lease{IPv6Subnet: v6}, false},                                                  // IPv4 missing
	}
	for _, tt := range tests {
		if got := c.Fits(tt.l); got != tt.want {
			t.Errorf("Fits(%s) = %v, want %v", tt.l.Key(), got, tt.want)
		}
	}
}

package subnet_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// flannelVXLANValue is a lease value written by flanneld's vxlan backend (compat.md §3).
const flannelVXLANValue = `{"PublicIP":"198.51.100.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`

func TestAttrsFlannelValue(t *testing.T) {
	var a subnet.Attrs
	if err := json.Unmarshal([]byte(flannelVXLANValue), &a); err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if a.PublicIP != addr("198.51.100.3") || a.PublicIPv6.IsValid() || a.BackendType != "vxlan" ||
		string(a.BackendData) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}` || a.BackendV6Data != nil {
		t.Errorf("Unmarshal = %+v", a)
	}
	out, err := json.Marshal(a)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	if string(out) != flannelVXLANValue {
		t.Errorf("Marshal:\n got %s\nwant %s", out, flannelVXLANValue)
	}
}

func TestAttrsMarshal(t *testing.T) {
	tests := []struct {
		name string
		a    subnet.Attrs
		want string
	}{
		{"vxlan", subnet.Attrs{PublicIP: addr("198.51.100.3"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)},
			flannelVXLANValue},
		{"BackendData is compacted", subnet.Attrs{PublicIP: addr("198.51.100.3"), BackendType: "vxlan", BackendData: json.RawMessage("{\n  \"VNI\": 1,\n  \"VtepMAC\": \"c6:d2:32:6f:8f:44\"\n}")},
			flannelVXLANValue},
		{"udp: no backend type or data", subnet.Attrs{PublicIP: addr("192.0.2.11")},
			`{"PublicIP":"192.0.2.11","PublicIPv6":null}`},
		{"host-gw", subnet.Attrs{PublicIP: addr("192.0.2.11"), BackendType: "host-gw"},
			`{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"host-gw"}`},
		{"null BackendData is omitted", subnet.Attrs{PublicIP: addr("192.0.2.11"), BackendType: "host-gw", BackendData: json.RawMessage("null"), BackendV6Data: json.RawMessage("null")},
			`{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"host-gw"}`},
		{"dual stack", subnet.Attrs{PublicIP: addr("192.0.2.11"), PublicIPv6: addr("2001:db8::11"), BackendType: "vxlan",
			BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`), BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}`)},
			`{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}`},
		{"no IPv4 (IPv6 only): flannel's zero address", subnet.Attrs{PublicIPv6: addr("2001:db8::11"), BackendType: "host-gw"},
			`{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11","BackendType":"host-gw"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := json.Marshal(tt.a)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if string(out) != tt.want {
				t.Errorf("Marshal:\n got %s\nwant %s", out, tt.want)
			}
			var back subnet.Attrs
			if err := json.Unmarshal(out, &back); err != nil {
				t.Fatalf("Unmarshal(%s): %v", out, err)
			}
			again, _ := json.Marshal(back)
			if string(again) != tt.want {
				t.Errorf("Marshal(Unmarshal(%s)) = %s", out, again)
			}
		})
	}
}

func TestAttrsUnmarshal(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want subnet.Attrs
	}{
		{"flannel udp: only PublicIP", `{"PublicIP":"192.0.2.11"}`, subnet.Attrs{PublicIP: addr("192.0.2.11")}},
		{"explicit nulls", `{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendData":null,"BackendV6Data":null}`, subnet.Attrs{PublicIP: addr("192.0.2.11")}},
		{"empty PublicIPv6", `{"PublicIP":"192.0.2.11","PublicIPv6":""}`, subnet.Attrs{PublicIP: addr("192.0.2.11")}},
		{"PublicIPv6", `{"PublicIP":"192.0.2.11","PublicIPv6":"2001:db8::11"}`, subnet.Attrs{PublicIP: addr("192.0.2.11"), PublicIPv6: addr("2001:db8::11")}},
		{"flannel IPv6 only", `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::11"}`, subnet.Attrs{PublicIP: addr("0.0.0.0"), PublicIPv6: addr("2001:db8::11")}},
		{"unknown fields ignored", `{"PublicIP":"192.0.2.11","Expiration":"2026-01-01T00:00:00Z"}`, subnet.Attrs{PublicIP: addr("192.0.2.11")}},
		{"lower-case names", `{"publicip":"192.0.2.11","backendtype":"host-gw"}`, subnet.Attrs{PublicIP: addr("192.0.2.11"), BackendType: "host-gw"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a subnet.Attrs
			if err := json.Unmarshal([]byte(tt.in), &a); err != nil {
				t.Fatalf("Unmarshal(%s): %v", tt.in, err)
			}
			if a.PublicIP != tt.want.PublicIP || a.PublicIPv6 != tt.want.PublicIPv6 || a.BackendType != tt.want.BackendType ||
				a.BackendData != nil || a.BackendV6Data != nil {
				t.Errorf("Unmarshal(%s) = %+v, want %+v", tt.in, a, tt.want)
			}
		})
	}
}

func TestAttrsUnmarshalErrors(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{`{"PublicIP":"198.51.100"}`, `PublicIP "198.51.100"`},
		{`{"PublicIP":"not an ip"}`, `PublicIP "not an ip"`},
		{`{"PublicIP":""}`, `PublicIP ""`},
		{`{}`, `PublicIP ""`},
		{`{"PublicIP":"2001:db8::11"}`, "must be an IPv4 address"},
		{`{"PublicIP":"::ffff:192.0.2.11"}`, "must be an IPv4 address"},
		{`{"PublicIP":"192.0.2.11","PublicIPv6":"192.0.2.12"}`, `PublicIPv6 "192.0.2.12"`},
		{`{"PublicIP":"192.0.2.11","PublicIPv6":"::ffff:192.0.2.12"}`, "must be an IPv6 address or null"},
		{`{"PublicIP":"192.0.2.11","PublicIPv6":"bogus"}`, `PublicIPv6 "bogus"`},
		{`{"PublicIP":3232235777}`, "PublicIP"},
		{`["192.0.2.11"]`, "cannot unmarshal"},
		{`{"PublicIP":"192.0.2.11"`, "unexpected end"},
	}
	for _, tt := range tests {
		var a subnet.Attrs
		err := json.Unmarshal([]byte(tt.in), &a)
		if err == nil {
			t.Errorf("Unmarshal(%s) = %+v, want an error", tt.in, a)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Unmarshal(%s): %q does not contain %q", tt.in, err, tt.want)
		}
	}
	// A failed decode leaves the value untouched.
	a := subnet.Attrs{PublicIP: addr("192.0.2.1")}
	if err := a.UnmarshalJSON([]byte(`{"PublicIP":"bogus","BackendType":"udp"}`)); err == nil || a.PublicIP != addr("192.0.2.1") || a.BackendType != "" {
		t.Errorf("after a failed UnmarshalJSON: %+v, %v", a, err)
	}
}

func TestKeyName(t *testing.T) {
	tests := []struct {
		v4, v6 netip.Prefix
		want   string
	}{
		{pfx("10.5.52.0/24"), netip.Prefix{}, "10.5.52.0-24"},
		{pfx("10.5.4.128/25"), netip.Prefix{}, "10.5.4.128-25"},
		{pfx("10.5.52.0/24"), pfx("fd00:5:0:34::/64"), "10.5.52.0-24&fd00:5:0:34::-64"},
		{pfx("10.5.52.0/24"), pfx("2001:db8:1234:5600::/56"), "10.5.52.0-24&2001:db8:1234:5600::-56"},
		// IPv6 only: flannel writes the zero IPv4 network.
		{netip.Prefix{}, pfx("fd00:5:0:34::/64"), "0.0.0.0-0&fd00:5:0:34::-64"},
	}
	for _, tt := range tests {
		if got := subnet.KeyName(tt.v4, tt.v6); got != tt.want {
			t.Errorf("KeyName(%v, %v) = %q, want %q", tt.v4, tt.v6, got, tt.want)
		}
		if got := (subnet.Lease{Subnet: tt.v4, IPv6Subnet: tt.v6}).Key(); got != tt.want {
			t.Errorf("Lease.Key() = %q, want %q", got, tt.want)
		}
		v4, v6, err := subnet.ParseKeyName(tt.want)
		if err != nil || v4 != tt.v4 || v6 != tt.v6 {
			t.Errorf("ParseKeyName(%q) = %v, %v, %v; want %v, %v", tt.want, v4, v6, err, tt.v4, tt.v6)
		}
	}
}

func TestParseKeyName(t *testing.T) {
	tests := []struct {
		name   string
		v4, v6 string // "" for zero
	}{
		{"10.5.52.0-24", "10.5.52.0/24", ""},
		{"10.5.0.0-16", "10.5.0.0/16", ""},
		{"10.5.4.252-30", "10.5.4.252/30", ""},
		{"10.5.52.0-24&fd00:5:0:34::-64", "10.5.52.0/24", "fd00:5:0:34::/64"},
		{"0.0.0.0-0&fd00:5:0:34::-64", "", "fd00:5:0:34::/64"},
	}
	for _, tt := range tests {
		v4, v6, err := subnet.ParseKeyName(tt.name)
		var w4, w6 netip.Prefix
		if tt.v4 != "" {
			w4 = pfx(tt.v4)
		}
		if tt.v6 != "" {
			w6 = pfx(tt.v6)
		}
		if err != nil || v4 != w4 || v6 != w6 {
			t.Errorf("ParseKeyName(%q) = %v, %v, %v; want %v, %v", tt.name, v4, v6, err, w4, w6)
		}
	}
}

func TestParseKeyNameErrors(t *testing.T) {
	tests := []struct {
		name string
		want string
	}{
		{"", "want ADDR-LEN"},
		{"10.5.52.0", "want ADDR-LEN"},
		{"10.5.52.0/24", "want ADDR-LEN"},
		{"10.5.52.0-", "bad prefix length"},
		{"10.5.52.0-x", "bad prefix length"},
		{"10.5.52.0-33", "bad prefix length"},
		{"10.5.52.0--1", "want an IPv4 address"},
		{"10.5.52.0-+24", "not in canonical form (want \"10.5.52.0-24\")"},
		{"10.5.52.0-024", "not in canonical form"},
		{"10.5.52.0-24&FD00:5:0:34::-64", "not in canonical form (want \"10.5.52.0-24&fd00:5:0:34::-64\")"},
		{"10.5.52.0-24&fd00:0005:0000:0034:0000:0000:0000:0000-64", "not in canonical form"},
		{"10.5.52.1-24", "bits set beyond the prefix length"}, // unmasked
		{"10.5.52.0-16", "bits set beyond the prefix length"},
		{"10.5.52-24", "want an IPv4 address"},
		{"fd00:5:0:34::-64", "want an IPv4 address"},
		{"garbage", "want ADDR-LEN"},
		{"config", "want ADDR-LEN"},
		{"10.5.52.0-24&", "want ADDR-LEN"},
		{"10.5.52.0-24&10.6.0.0-24", "want an IPv6 address"},
		{"10.5.52.0-24&fd00:5:0:34::1-64", "bits set beyond the prefix length"},
		{"10.5.52.0-24&fd00:5:0:34::-129", "bad prefix length"},
		{"10.5.52.0-24&fe80::%eth0-64", "want an IPv6 address"},
		{"10.5.52.0-24&fd00:5:0:34::-64&fd00:6::-64", "want an IPv6 address"},
		{"0.0.0.0-0", "neither an IPv4 nor an IPv6 subnet"}, // the zero IPv4 network only stands in before an IPv6 subnet
	}
	for _, tt := range tests {
		v4, v6, err := subnet.ParseKeyName(tt.name)
		if err == nil {
			t.Errorf("ParseKeyName(%q) = %v, %v; want an error", tt.name, v4, v6)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "lease key") {
			t.Errorf("ParseKeyName(%q): %q does not contain %q", tt.name, err, tt.want)
		}
		if v4.IsValid() || v6.IsValid() {
			t.Errorf("ParseKeyName(%q) returned %v, %v with its error", tt.name, v4, v6)
		}
	}
}

// TestPollConfig checks the loop behind the stores' WaitConfig: every failed read is reported and retried
// until one succeeds; the end of ctx, or the store's done channel, ends it with ctx's or the last error.
func TestPollConfig(t *testing.T) {
	want := &subnet.Config{Network: netip.MustParsePrefix("10.5.0.0/16")}
	errMissing := fmt.Errorf("etcd key /x/config: %w", subnet.ErrNoConfig)
	for _, tc := range []struct {
		name       string
		fails      int  // reads that fail before one succeeds; -1: all
		cancel     bool // cancel ctx at the first report
		closeDone  bool // close done at the first report
		wantCfg    bool
		wantErr    error
		wantReport int
	}{
		{"at once", 0, false, false, true, nil, 0},
		{"after a failure", 1, false, false, true, nil, 1},
		{"ctx ends", -1, true, false, false, context.Canceled, 1},
		{"store closed", -1, false, true, false, subnet.ErrNoConfig, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan struct{})
			reads, reports := 0, 0
			read := func(context.Context) (*subnet.Config, error) {
				reads++
				if tc.fails >= 0 && reads > tc.fails {
					return want, nil
				}
				return nil, errMissing
			}
			got, err := subnet.PollConfig(ctx, done, read, func(err error) {
				reports++
				if !errors.Is(err, subnet.ErrNoConfig) {
					t.Errorf("reported %v, want the read's error", err)
				}
				if tc.cancel {
					cancel()
				}
				if tc.closeDone {
					close(done)
				}
			})
			if (got == want) != tc.wantCfg || !errors.Is(err, tc.wantErr) || reports != tc.wantReport {
				t.Errorf("PollConfig = %v, %v after %d reports; want config %v, error %v, %d reports", got, err, reports, tc.wantCfg, tc.wantErr, tc.wantReport)
			}
		})
	}
}

package backend

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestSelectIface(t *testing.T) {
	a := netip.MustParseAddr
	ifaces := []Iface{
		{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Addr{a("192.0.2.11")}},
		{Name: "eth1", Index: 3, MTU: 9000, Addrs: []netip.Addr{a("198.51.100.5"), a("2001:db8:1::5"), a("198.51.100.6"), a("2001:db8:1::6")}},
		{Name: "wg0", Index: 4, MTU: 1420},
		{Name: "v6only", Index: 5, MTU: 1500, Addrs: []netip.Addr{a("2001:db8:2::7")}},
	}
	v6 := IfaceSelector{IPv6: true}
	v6only := IfaceSelector{IPv6: true, NoIPv4: true}
	tests := []struct {
		name      string
		sel       IfaceSelector
		byName    []string
		byRegex   []string
		wantName  string
		wantAddr  string
		wantAddr6 string
		wantErr   string
	}{
		{name: "by name", byName: []string{"eth1"}, wantName: "eth1", wantAddr: "198.51.100.5"},
		{name: "by address picks that address", byName: []string{"198.51.100.6"}, wantName: "eth1", wantAddr: "198.51.100.6"},
		{name: "first that resolves wins", byName: []string{"nope", "eth0"}, wantName: "eth0", wantAddr: "192.0.2.11"},
		{name: "name without address", byName: []string{"wg0"}, wantErr: "--iface wg0: interface has no IPv4 or global IPv6 address"},
		{name: "nothing matches", byName: []string{"eth9", "203.0.113.1"}, wantErr: "--iface eth9,203.0.113.1: no interface has that name or address"},
		{name: "regex on name", byRegex: []string{"^eth[1-9]$"}, wantName: "eth1", wantAddr: "198.51.100.5"},
		{name: "regex on address", byRegex: []string{`^192\.0\.2\.`}, wantName: "eth0", wantAddr: "192.0.2.11"},
		{name: "regex skips interfaces without address", byRegex: []string{"^wg"}, wantErr: "no interface with an address matches"},
		{name: "bad regex", byRegex: []string{"("}, wantErr: `--iface-regex "("`},
		{name: "dual stack by name", sel: v6, byName: []string{"eth1"}, wantName: "eth1", wantAddr: "198.51.100.5", wantAddr6: "2001:db8:1::5"},
		{name: "dual stack by IPv6 address picks it", sel: v6, byName: []string{"2001:db8:1::6"}, wantName: "eth1", wantAddr: "198.51.100.5", wantAddr6: "2001:db8:1::6"},
		{name: "dual stack by IPv6 regex", sel: v6, byRegex: []string{`^2001:db8:1::6$`}, wantName: "eth1", wantAddr: "198.51.100.5", wantAddr6: "2001:db8:1::6"},
		{name: "dual stack needs IPv6", sel: v6, byName: []string{"eth0"}, wantErr: "interface eth0 has no global IPv6 address"},
		{name: "IPv6 only by address", sel: v6only, byName: []string{"2001:db8:2::7"}, wantName: "v6only", wantAddr6: "2001:db8:2::7"},
		{name: "IPv6 only by name", sel: v6only, byName: []string{"v6only"}, wantName: "v6only", wantAddr6: "2001:db8:2::7"},
		{name: "IPv4 needs IPv4", byName: []string{"v6only"}, wantErr: "interface v6only has no IPv4 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var i Iface
			var addr netip.Addr
			var err error
			if tt.byName != nil {
				i, addr, err = selectByName(ifaces, tt.byName)
			} else {
				i, addr, err = selectByRegex(ifaces, tt.byRegex)
			}
			var e External
			if err == nil {
				e, err = external(i, addr, tt.sel, "test")
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				if !strings.Contains(tt.wantErr, "--iface-regex \"(\"") && !errors.Is(err, ErrNoIface) {
					t.Errorf("err %v does not wrap ErrNoIface", err)
				}
				return
			}
			str := func(a netip.Addr) string {
				if !a.IsValid() {
					return ""
				}
				return a.String()
			}
			if err != nil || e.Name != tt.wantName || str(e.Addr) != tt.wantAddr || str(e.Addr6) != tt.wantAddr6 {
				t.Fatalf("got %s %s %s %v, want %s %s %s", e.Name, e.Addr, e.Addr6, err, tt.wantName, tt.wantAddr, tt.wantAddr6)
			}
			if e.PublicIP != e.Addr || e.PublicIPv6 != e.Addr6 {
				t.Errorf("public addresses %s %s, want the interface's %s %s", e.PublicIP, e.PublicIPv6, e.Addr, e.Addr6)
			}
		})
	}
}

func TestExternalPublicIP(t *testing.T) {
	i := Iface{Name: "eth0", Index: 2, MTU: 1500, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("2001:db8::11")}}
	addr, addr6 := i.Addrs[0], i.Addrs[1]
	pub, pub6 := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8:ff::7")
	e, err := external(i, netip.Addr{}, IfaceSelector{PublicIP: pub, PublicIPv6: pub6, IPv6: true}, "test")
	if err != nil || e.PublicIP != pub || e.Addr != addr || e.PublicIPv6 != pub6 || e.Addr6 != addr6 {
		t.Errorf("got %+v %v, want Addr %s PublicIP %s Addr6 %s PublicIPv6 %s", e, err, addr, pub, addr6, pub6)
	}
}

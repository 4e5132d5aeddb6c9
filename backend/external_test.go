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
		{Name: "eth1", Index: 3, MTU: 9000, Addrs: []netip.Addr{a("198.51.100.5"), a("198.51.100.6")}},
		{Name: "wg0", Index: 4, MTU: 1420},
	}
	tests := []struct {
		name     string
		byName   []string
		byRegex  []string
		wantName string
		wantAddr string
		wantErr  string
	}{
		{name: "by name", byName: []string{"eth1"}, wantName: "eth1", wantAddr: "198.51.100.5"},
		{name: "by address picks that address", byName: []string{"198.51.100.6"}, wantName: "eth1", wantAddr: "198.51.100.6"},
		{name: "first that resolves wins", byName: []string{"nope", "eth0"}, wantName: "eth0", wantAddr: "192.0.2.11"},
		{name: "name without address", byName: []string{"wg0"}, wantErr: "--iface wg0: interface has no IPv4 address"},
		{name: "nothing matches", byName: []string{"eth9", "203.0.113.1"}, wantErr: "--iface eth9,203.0.113.1: no interface has that name or address"},
		{name: "regex on name", byRegex: []string{"^eth[1-9]$"}, wantName: "eth1", wantAddr: "198.51.100.5"},
		{name: "regex on address", byRegex: []string{`^192\.0\.2\.`}, wantName: "eth0", wantAddr: "192.0.2.11"},
		{name: "regex skips interfaces without address", byRegex: []string{"^wg"}, wantErr: "no interface with an IPv4 address matches"},
		{name: "bad regex", byRegex: []string{"("}, wantErr: `--iface-regex "("`},
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
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				if !strings.Contains(tt.wantErr, "--iface-regex \"(\"") && !errors.Is(err, ErrNoIface) {
					t.Errorf("err %v does not wrap ErrNoIface", err)
				}
				return
			}
			if err != nil || i.Name != tt.wantName || addr.String() != tt.wantAddr {
				t.Fatalf("got %s %s %v, want %s %s", i.Name, addr, err, tt.wantName, tt.wantAddr)
			}
		})
	}
}

func TestExternalPublicIP(t *testing.T) {
	i := Iface{Name: "eth0", Index: 2, MTU: 1500}
	addr := netip.MustParseAddr("192.0.2.11")
	if e := external(i, addr, netip.Addr{}); e.PublicIP != addr {
		t.Errorf("PublicIP = %s, want the interface address %s", e.PublicIP, addr)
	}
	pub := netip.MustParseAddr("203.0.113.7")
	if e := external(i, addr, pub); e.PublicIP != pub || e.Addr != addr {
		t.Errorf("got %+v, want Addr %s PublicIP %s", e, addr, pub)
	}
}

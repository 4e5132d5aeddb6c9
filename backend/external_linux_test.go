package backend_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestSelectExternalInNetns selects interfaces by default route, by reachability and by name in a namespace
// with two veth links.
func TestSelectExternalInNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	p := kerneltest.Prefix()
	ns := kerneltest.NewNS(t, p+"-sel")
	peer := kerneltest.NewNS(t, p+"-peer")
	kerneltest.Veth(t, ns, "eth0", "192.0.2.11/24", peer, "p0", "192.0.2.1/24")
	kerneltest.Veth(t, ns, "eth1", "198.51.100.11/24", peer, "p1", "198.51.100.1/24")
	ns.MustIP(t, "link", "set", "eth1", "mtu", "1400")
	ns.MustIP(t, "addr", "add", "2001:db8:a::11/64", "dev", "eth0", "nodad")
	ns.MustIP(t, "addr", "add", "2001:db8:b::11/64", "dev", "eth1", "nodad")
	peer.MustIP(t, "addr", "add", "2001:db8:b::1/64", "dev", "p1", "nodad")

	sel := func(s backend.IfaceSelector) (backend.External, error) {
		var e backend.External
		err := ns.Do(func() (err error) { e, err = backend.SelectExternal(s); return err })
		return e, err
	}
	if _, err := sel(backend.IfaceSelector{}); err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Errorf("without a default route: err = %v, want a 'no default route' error", err)
	}
	if _, err := sel(backend.IfaceSelector{NoIPv4: true, IPv6: true}); err == nil || !strings.Contains(err.Error(), "no default route for IPv6") {
		t.Errorf("IPv6 only without an IPv6 default route: err = %v, want a 'no default route for IPv6' error", err)
	}
	ns.MustIP(t, "route", "add", "default", "via", "198.51.100.1")
	ns.MustIP(t, "-6", "route", "add", "default", "via", "2001:db8:b::1")
	v6 := netip.MustParseAddr
	tests := []struct {
		name      string
		s         backend.IfaceSelector
		wantName  string
		wantAddr  string
		wantPub   string
		wantMTU   int
		wantAddr6 string
	}{
		{"default route", backend.IfaceSelector{}, "eth1", "198.51.100.11", "198.51.100.11", 1400, "invalid IP"},
		{"can reach", backend.IfaceSelector{CanReach: netip.MustParseAddr("192.0.2.77")}, "eth0", "192.0.2.11", "192.0.2.11", 1500, "invalid IP"},
		{"by name with public ip", backend.IfaceSelector{Ifaces: []string{"eth0"}, PublicIP: netip.MustParseAddr("203.0.113.9")}, "eth0", "192.0.2.11", "203.0.113.9", 1500, "invalid IP"},
		{"regex", backend.IfaceSelector{IfaceRegexes: []string{"^eth1$"}}, "eth1", "198.51.100.11", "198.51.100.11", 1400, "invalid IP"},
		{"dual stack default route", backend.IfaceSelector{IPv6: true}, "eth1", "198.51.100.11", "198.51.100.11", 1400, "2001:db8:b::11"},
		{"IPv6 only default route", backend.IfaceSelector{IPv6: true, NoIPv4: true}, "eth1", "invalid IP", "invalid IP", 1400, "2001:db8:b::11"},
		{"IPv6 can reach", backend.IfaceSelector{IPv6: true, CanReach: v6("2001:db8:a::77")}, "eth0", "192.0.2.11", "192.0.2.11", 1500, "2001:db8:a::11"},
		{"IPv6 by address", backend.IfaceSelector{IPv6: true, NoIPv4: true, Ifaces: []string{"2001:db8:a::11"}}, "eth0", "invalid IP", "invalid IP", 1500, "2001:db8:a::11"},
		{"IPv6 regex", backend.IfaceSelector{IPv6: true, IfaceRegexes: []string{`^2001:db8:a:`}}, "eth0", "192.0.2.11", "192.0.2.11", 1500, "2001:db8:a::11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := sel(tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if e.Name != tt.wantName || e.Addr.String() != tt.wantAddr || e.PublicIP.String() != tt.wantPub || e.MTU != tt.wantMTU || e.Index == 0 ||
				e.Addr6.String() != tt.wantAddr6 || e.PublicIPv6 != e.Addr6 {
				t.Errorf("got %+v, want %s addr %s public %s mtu %d addr6 %s", e, tt.wantName, tt.wantAddr, tt.wantPub, tt.wantMTU, tt.wantAddr6)
			}
		})
	}
}

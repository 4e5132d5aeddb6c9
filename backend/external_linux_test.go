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

	sel := func(s backend.IfaceSelector) (backend.External, error) {
		var e backend.External
		err := ns.Do(func() (err error) { e, err = backend.SelectExternal(s); return err })
		return e, err
	}
	if _, err := sel(backend.IfaceSelector{}); err == nil || !strings.Contains(err.Error(), "no default route") {
		t.Errorf("without a default route: err = %v, want a 'no default route' error", err)
	}
	ns.MustIP(t, "route", "add", "default", "via", "198.51.100.1")
	tests := []struct {
		name     string
		s        backend.IfaceSelector
		wantName string
		wantAddr string
		wantPub  string
		wantMTU  int
	}{
		{"default route", backend.IfaceSelector{}, "eth1", "198.51.100.11", "198.51.100.11", 1400},
		{"can reach", backend.IfaceSelector{CanReach: netip.MustParseAddr("192.0.2.77")}, "eth0", "192.0.2.11", "192.0.2.11", 1500},
		{"by name with public ip", backend.IfaceSelector{Ifaces: []string{"eth0"}, PublicIP: netip.MustParseAddr("203.0.113.9")}, "eth0", "192.0.2.11", "203.0.113.9", 1500},
		{"regex", backend.IfaceSelector{IfaceRegexes: []string{"^eth1$"}}, "eth1", "198.51.100.11", "198.51.100.11", 1400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := sel(tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if e.Name != tt.wantName || e.Addr.String() != tt.wantAddr || e.PublicIP.String() != tt.wantPub || e.MTU != tt.wantMTU || e.Index == 0 {
				t.Errorf("got %+v, want %s addr %s public %s mtu %d", e, tt.wantName, tt.wantAddr, tt.wantPub, tt.wantMTU)
			}
		})
	}
}

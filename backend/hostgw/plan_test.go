package hostgw

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

func lease(sub, pub, typ string) subnet.Lease {
	l := subnet.Lease{Subnet: netip.MustParsePrefix(sub), Attrs: subnet.Attrs{BackendType: typ}}
	if pub != "" {
		l.Attrs.PublicIP = netip.MustParseAddr(pub)
	}
	return l
}

func TestPlan(t *testing.T) {
	ext := backend.External{Name: "eth0", Index: 7, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11")}
	ext.PublicIP = ext.Addr
	own := lease("10.5.1.0/24", "192.0.2.11", Type)
	route := func(dst, gw string) kernel.Route {
		return kernel.Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: 7}
	}
	tests := []struct {
		name      string
		peers     []subnet.Lease
		want      []kernel.Route
		wantSkip  []string // "key: warn"
		noNetwork bool
	}{
		{name: "no peers"},
		{
			name:  "host-gw peers, and an untyped one",
			peers: []subnet.Lease{lease("10.5.2.0/24", "192.0.2.12", Type), lease("10.5.3.0/24", "192.0.2.13", "")},
			want:  []kernel.Route{route("10.5.2.0/24", "192.0.2.12"), route("10.5.3.0/24", "192.0.2.13")},
		},
		{
			name:     "other backend types are skipped quietly",
			peers:    []subnet.Lease{lease("10.5.2.0/24", "192.0.2.12", "vxlan"), lease("10.5.3.0/24", "192.0.2.13", Type)},
			want:     []kernel.Route{route("10.5.3.0/24", "192.0.2.13")},
			wantSkip: []string{"10.5.2.0-24: false"},
		},
		{
			name: "broken or hostile leases are skipped with a warning",
			peers: []subnet.Lease{
				lease("10.5.1.0/24", "192.0.2.99", Type),  // our own subnet
				lease("10.5.1.7/24", "192.0.2.98", Type),  // our own subnet, not in canonical form
				lease("10.5.4.0/24", "192.0.2.11", Type),  // our own address
				lease("192.0.2.0/24", "192.0.2.14", Type), // outside the network: would hijack the underlay
				lease("10.5.5.0/24", "", Type),            // no PublicIP
				lease("10.0.0.0/8", "192.0.2.15", Type),   // wider than the network
			},
			wantSkip: []string{"10.5.1.0-24: true", "10.5.1.7-24: true", "10.5.4.0-24: true", "192.0.2.0-24: true", "10.5.5.0-24: true", "10.0.0.0-8: true"},
		},
		{
			name:      "no network in the config: no containment check",
			peers:     []subnet.Lease{lease("10.9.0.0/24", "192.0.2.12", Type)},
			want:      []kernel.Route{route("10.9.0.0/24", "192.0.2.12")},
			noNetwork: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &backend.Config{Own: own, Peers: tt.peers}
			if !tt.noNetwork {
				cfg.Network.Network = netip.MustParsePrefix("10.5.0.0/16")
			}
			byKey, skipped := plan(cfg, backend.IPv4, ext)
			got := slices.SortedFunc(maps.Values(byKey), func(a, b kernel.Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("routes = %v, want %v", got, tt.want)
			}
			var gotSkip []string
			for _, s := range skipped {
				gotSkip = append(gotSkip, fmt.Sprintf("%s: %t", s.Key, !s.Quiet))
			}
			if fmt.Sprint(gotSkip) != fmt.Sprint(tt.wantSkip) {
				t.Errorf("skipped = %v, want %v", gotSkip, tt.wantSkip)
			}
		})
	}
}

// TestPlanIPv6 routes each peer's IPv6 subnet via its PublicIPv6, and skips a dual-stack peer without an
// IPv6 part, a peer claiming this node's PublicIPv6, and one outside the IPv6 network.
func TestPlanIPv6(t *testing.T) {
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	ext := backend.External{Name: "eth0", Index: 7, MTU: 1500, Addr6: a("2001:db8::11"), PublicIPv6: a("2001:db8::11")}
	l6 := func(v4, v6, pub6 string) subnet.Lease {
		l := subnet.Lease{IPv6Subnet: p(v6), Attrs: subnet.Attrs{BackendType: Type, PublicIP: a("192.0.2.1")}}
		if v4 != "" {
			l.Subnet = p(v4)
		}
		if pub6 != "" {
			l.Attrs.PublicIPv6 = a(pub6)
		}
		return l
	}
	own := l6("10.5.1.0/24", "fd00:5:0:1::/64", "2001:db8::11")
	cfg := &backend.Config{Own: own, Peers: []subnet.Lease{
		l6("10.5.2.0/24", "fd00:5:0:2::/64", "2001:db8::12"),
		l6("", "fd00:5:0:3::/64", "2001:db8::13"),
		l6("10.5.4.0/24", "fd00:5:0:4::/64", ""),
		l6("10.5.5.0/24", "fd00:5:0:5::/64", "2001:db8::11"),
		l6("10.5.6.0/24", "fd00:6::/64", "2001:db8::16"),
	}}
	cfg.Network.Network, cfg.Network.IPv6Network = p("10.5.0.0/16"), p("fd00:5::/48")
	byKey, skipped := plan(cfg, backend.IPv6, ext)
	got := slices.SortedFunc(maps.Values(byKey), func(a, b kernel.Route) int { return a.Dst.Addr().Compare(b.Dst.Addr()) })
	want := "[fd00:5:0:2::/64 via 2001:db8::12 dev #7 fd00:5:0:3::/64 via 2001:db8::13 dev #7]"
	if fmt.Sprint(got) != want {
		t.Errorf("routes = %v, want %s", got, want)
	}
	var gotSkip []string
	for _, s := range skipped {
		gotSkip = append(gotSkip, s.Key+": "+s.Reason)
	}
	wantSkip := "[10.5.4.0-24&fd00:5:0:4::-64: no IPv6 PublicIP 10.5.5.0-24&fd00:5:0:5::-64: its PublicIP 2001:db8::11 is this node's 10.5.6.0-24&fd00:6::-64: subnet fd00:6::/64 is outside the network fd00:5::/48]"
	if fmt.Sprint(gotSkip) != wantSkip {
		t.Errorf("skipped = %v, want %s", gotSkip, wantSkip)
	}
}

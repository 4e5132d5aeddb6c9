package backend

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func TestDropOverlapping(t *testing.T) {
	n, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"10.5.200.0"}`))
	if err != nil {
		t.Fatal(err)
	}
	l := func(p string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(p), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.20")}}
	}
	tests := []struct {
		name    string
		peers   []string
		kept    []string
		dropped []string
	}{
		{"disjoint peers all kept", []string{"10.5.3.0/24", "10.5.1.0/24", "10.5.2.0/24"}, []string{"10.5.3.0/24", "10.5.1.0/24", "10.5.2.0/24"}, nil},
		{"half of a live peer", []string{"10.5.2.0/24", "10.5.2.128/25", "10.5.3.0/24"}, []string{"10.5.2.0/24", "10.5.3.0/24"}, []string{"10.5.2.128-25"}},
		{"half listed first", []string{"10.5.2.128/25", "10.5.2.0/24"}, []string{"10.5.2.0/24"}, []string{"10.5.2.128-25"}},
		{"a /23 over two live peers", []string{"10.5.2.0/24", "10.5.3.0/24", "10.5.2.0/23"}, []string{"10.5.2.0/24", "10.5.3.0/24"}, []string{"10.5.2.0-23"}},
		{"two overlapping misfits both dropped", []string{"10.5.8.0/23", "10.5.9.0/25", "10.5.1.0/24"}, []string{"10.5.1.0/24"}, []string{"10.5.8.0-23", "10.5.9.0-25"}},
		{"a misfit alone is kept (after a SubnetLen change, say)", []string{"10.5.8.0/23", "10.5.1.0/24"}, []string{"10.5.8.0/23", "10.5.1.0/24"}, nil},
		{"outside SubnetMax and overlapping", []string{"10.5.201.0/24", "10.5.201.0/25"}, nil, []string{"10.5.201.0-24", "10.5.201.0-25"}},
		{"half of this node's own subnet", []string{"10.5.7.128/25", "10.5.1.0/24"}, []string{"10.5.1.0/24"}, []string{"10.5.7.128-25"}},
		{"a /23 over this node's own subnet", []string{"10.5.6.0/23"}, nil, []string{"10.5.6.0-23"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var peers []subnet.Lease
			for _, p := range tt.peers {
				peers = append(peers, l(p))
			}
			kept, skips := DropOverlapping(n, l("10.5.7.0/24"), peers)
			var gotKept, gotDropped []string
			for _, k := range kept {
				gotKept = append(gotKept, k.Subnet.String())
			}
			for _, s := range skips {
				gotDropped = append(gotDropped, s.Key)
				if s.Reason == "" || s.Quiet {
					t.Errorf("skip %+v: want a reason, not quiet", s)
				}
			}
			slices.Sort(gotDropped)
			if !slices.Equal(gotKept, tt.kept) || !slices.Equal(gotDropped, tt.dropped) {
				t.Errorf("kept %v dropped %v; want kept %v dropped %v", gotKept, gotDropped, tt.kept, tt.dropped)
			}
		})
	}
}

// TestDropOverlappingDualStack: in dual stack a lease's key names both subnets, so two keys can name the same
// subnet of one family (a hostile or broken write): the lease created first keeps it (this node's own lease
// always), the other is dropped as a duplicate naming the keeper; equal creation revisions go by key.
func TestDropOverlappingDualStack(t *testing.T) {
	n, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56"}`))
	if err != nil {
		t.Fatal(err)
	}
	l := func(v4, v6 string, created int64) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(v4), IPv6Subnet: netip.MustParsePrefix(v6), Created: created,
			Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.20"), PublicIPv6: netip.MustParseAddr("2001:db8::20")}}
	}
	own := l("10.5.7.0/24", "fd00:5:0:7::/64", 1)
	a, b := l("10.5.2.0/24", "fd00:5:0:2::/64", 5), l("10.5.3.0/24", "fd00:5:0:3::/64", 6)
	tests := []struct {
		name    string
		peers   []subnet.Lease
		kept    []string
		dropped map[string]string // key → the keeper its reason names
	}{
		{"disjoint", []subnet.Lease{a, b}, []string{a.Key(), b.Key()}, nil},
		{"a later lease with a's IPv6 subnet", []subnet.Lease{l("10.5.9.0/24", "fd00:5:0:2::/64", 9), a, b},
			[]string{a.Key(), b.Key()}, map[string]string{"10.5.9.0-24&fd00:5:0:2::-64": a.Key()}},
		{"a later lease with a's IPv4 subnet", []subnet.Lease{a, l("10.5.2.0/24", "fd00:5:0:9::/64", 9)},
			[]string{a.Key()}, map[string]string{"10.5.2.0-24&fd00:5:0:9::-64": a.Key()}},
		{"an earlier lease keeps it (the newcomer is dropped)", []subnet.Lease{a, l("10.5.9.0/24", "fd00:5:0:2::/64", 2)},
			[]string{"10.5.9.0-24&fd00:5:0:2::-64"}, map[string]string{a.Key(): "10.5.9.0-24&fd00:5:0:2::-64"}},
		{"equal revisions: the smaller key", []subnet.Lease{l("10.5.9.0/24", "fd00:5:0:2::/64", 5), a},
			[]string{a.Key()}, map[string]string{"10.5.9.0-24&fd00:5:0:2::-64": a.Key()}},
		{"this node's IPv6 subnet, created before it", []subnet.Lease{l("10.5.9.0/24", "fd00:5:0:7::/64", 0), a},
			[]string{a.Key()}, map[string]string{"10.5.9.0-24&fd00:5:0:7::-64": own.Key()}},
		{"an earlier misfit (IPv4 outside the network) does not keep it", []subnet.Lease{l("10.6.9.0/24", "fd00:5:0:2::/64", 1), a},
			[]string{a.Key()}, map[string]string{"10.6.9.0-24&fd00:5:0:2::-64": ""}},
		{"three with one subnet", []subnet.Lease{l("10.5.9.0/24", "fd00:5:0:2::/64", 8), a, l("10.5.8.0/24", "fd00:5:0:2::/64", 7)},
			[]string{a.Key()}, map[string]string{"10.5.9.0-24&fd00:5:0:2::-64": a.Key(), "10.5.8.0-24&fd00:5:0:2::-64": a.Key()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kept, skips := DropOverlapping(n, own, tt.peers)
			var gotKept []string
			for _, k := range kept {
				gotKept = append(gotKept, k.Key())
			}
			if !slices.Equal(gotKept, tt.kept) {
				t.Errorf("kept %v, want %v", gotKept, tt.kept)
			}
			if len(skips) != len(tt.dropped) {
				t.Errorf("skips %+v, want %d", skips, len(tt.dropped))
			}
			for _, s := range skips {
				keeper, ok := tt.dropped[s.Key]
				if keeper == "" { // a misfit: dropped for overlapping
					if !ok || s.Kind != SkipOverlap || s.Quiet {
						t.Errorf("skip %+v: want kind %s", s, SkipOverlap)
					}
					continue
				}
				if !ok || s.Kind != SkipDuplicateSubnet || s.Quiet || !strings.Contains(s.Reason, "is also lease "+keeper+"'s") {
					t.Errorf("skip %+v: want one of %v, kind %s, a reason naming the keeper", s, tt.dropped, SkipDuplicateSubnet)
				}
			}
		})
	}
}

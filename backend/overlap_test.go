package backend

import (
	"net/netip"
	"slices"
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

package vxlan

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

func peer(sub, pub, typ, data string) subnet.Lease {
	l := subnet.Lease{Subnet: netip.MustParsePrefix(sub), Attrs: subnet.Attrs{BackendType: typ}}
	if pub != "" {
		l.Attrs.PublicIP = netip.MustParseAddr(pub)
	}
	if data != "" {
		l.Attrs.BackendData = json.RawMessage(data)
	}
	return l
}

func vtep(mac string) string { return fmt.Sprintf(`{"VNI":1,"VtepMAC":%q}`, mac) }

// render prints a desired state the way iproute2 would, with dev #9 = flannel.1 and #2 = eth0.
func render(d desired) string {
	var b strings.Builder
	fmt.Fprintf(&b, "addr %s\n", d.addr)
	for _, n := range d.neighs {
		fmt.Fprintf(&b, "neigh %s\n", n)
	}
	for _, f := range d.fdb {
		fmt.Fprintf(&b, "fdb %s\n", f)
	}
	for _, r := range d.routes {
		fmt.Fprintf(&b, "route %s\n", r)
	}
	return b.String()
}

func TestPlan(t *testing.T) {
	ext := backend.External{Name: "eth0", Index: 2, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11"),
		PublicIP: netip.MustParseAddr("198.51.100.11")}
	own := peer("10.5.1.0/24", "198.51.100.11", Type, vtep("02:00:00:00:00:01"))
	m2, m3 := "02:00:00:00:00:02", "02:00:00:00:00:03"
	tests := []struct {
		name     string
		peers    []subnet.Lease
		direct   map[netip.Addr]bool
		want     string
		wantSkip []string
	}{
		{name: "no peers", want: "addr 10.5.1.0/32\n"},
		{
			name: "two vxlan peers",
			peers: []subnet.Lease{
				peer("10.5.2.0/24", "192.0.2.12", Type, vtep(m2)),
				peer("10.5.3.0/24", "192.0.2.13", Type, vtep(m3)),
			},
			want: `addr 10.5.1.0/32
neigh 10.5.2.0 lladdr 02:00:00:00:00:02 dev #9
neigh 10.5.3.0 lladdr 02:00:00:00:00:03 dev #9
fdb 02:00:00:00:00:02 dst 192.0.2.12 dev #9
fdb 02:00:00:00:00:03 dst 192.0.2.13 dev #9
route 10.5.2.0/24 via 10.5.2.0 dev #9 onlink
route 10.5.3.0/24 via 10.5.3.0 dev #9 onlink
`,
		},
		{
			name: "direct routing for a peer on the same segment",
			peers: []subnet.Lease{
				peer("10.5.2.0/24", "192.0.2.12", Type, vtep(m2)),
				peer("10.5.3.0/24", "203.0.113.13", Type, vtep(m3)),
			},
			direct: map[netip.Addr]bool{netip.MustParseAddr("192.0.2.12"): true, netip.MustParseAddr("203.0.113.13"): false},
			want: `addr 10.5.1.0/32
neigh 10.5.3.0 lladdr 02:00:00:00:00:03 dev #9
fdb 02:00:00:00:00:03 dst 203.0.113.13 dev #9
route 10.5.2.0/24 via 192.0.2.12 dev #2
route 10.5.3.0/24 via 10.5.3.0 dev #9 onlink
`,
		},
		{
			name: "other backends, bad data and hostile leases are skipped",
			peers: []subnet.Lease{
				peer("10.5.2.0/24", "192.0.2.12", "host-gw", ""),
				peer("10.5.3.0/24", "192.0.2.13", "", ""), // flannel's udp writes no type
				peer("10.5.4.0/24", "192.0.2.14", Type, `{"VNI":1}`),
				peer("10.5.5.0/24", "192.0.2.15", Type, `{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`),
				peer("10.5.1.0/24", "192.0.2.16", Type, vtep(m2)),    // our subnet
				peer("10.5.6.0/24", "198.51.100.11", Type, vtep(m2)), // our PublicIP
				peer("10.5.7.0/24", "192.0.2.11", Type, vtep(m2)),    // our address
				peer("192.0.2.0/24", "192.0.2.17", Type, vtep(m2)),   // outside the network
				peer("10.5.8.0/24", "", Type, vtep(m2)),              // no PublicIP
				peer("10.5.9.0/24", "192.0.2.19", Type, vtep(m3)),    // fine
			},
			want: `addr 10.5.1.0/32
neigh 10.5.9.0 lladdr 02:00:00:00:00:03 dev #9
fdb 02:00:00:00:00:03 dst 192.0.2.19 dev #9
route 10.5.9.0/24 via 10.5.9.0 dev #9 onlink
`,
			wantSkip: []string{
				`10.5.2.0-24: backend type "host-gw", not "vxlan"`,
				`10.5.3.0-24: backend type "", not "vxlan"`,
				`10.5.4.0-24: BackendData VtepMAC "": `,
				`10.5.5.0-24: BackendData VtepMAC "ff:ff:ff:ff:ff:ff": not a unicast Ethernet address`,
				`10.5.1.0-24: it is this node's own subnet`,
				`10.5.6.0-24: its PublicIP 198.51.100.11 is this node's`,
				`10.5.7.0-24: its PublicIP 192.0.2.11 is this node's`,
				`192.0.2.0-24: subnet 192.0.2.0/24 is outside the network 10.5.0.0/16`,
				`10.5.8.0-24: no IPv4 PublicIP`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &backend.Config{Network: subnet.Config{Network: netip.MustParsePrefix("10.5.0.0/16")}, Own: own, Peers: tt.peers}
			got, skipped := plan(cfg, planInput{ext: ext, dev: 9, direct: tt.direct})
			if g := render(got); g != tt.want {
				t.Errorf("plan:\n%s\nwant:\n%s", g, tt.want)
			}
			if len(skipped) != len(tt.wantSkip) {
				t.Fatalf("skipped %v, want %d", skipped, len(tt.wantSkip))
			}
			for i, s := range skipped {
				if g := s.Key + ": " + s.Reason; !strings.HasPrefix(g, tt.wantSkip[i]) {
					t.Errorf("skipped[%d] = %q, want prefix %q", i, g, tt.wantSkip[i])
				}
			}
		})
	}
}

func TestIncompatible(t *testing.T) {
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	want := kernel.VXLAN{Name: "flannel.1", VNI: 1, Local: netip.MustParseAddr("192.0.2.11"), VtepIndex: 2, Port: 8472, MTU: 1450, MAC: mac}
	tests := []struct {
		name   string
		change func(*kernel.VXLAN)
		want   string
	}{
		{"same", func(*kernel.VXLAN) {}, ""},
		{"mtu, mac and state can be fixed in place", func(v *kernel.VXLAN) { v.MTU, v.MAC, v.Up = 1400, nil, true }, ""},
		{"vni", func(v *kernel.VXLAN) { v.VNI = 2 }, "vni 2, want 1"},
		{"local", func(v *kernel.VXLAN) { v.Local = netip.MustParseAddr("192.0.2.99") }, "local 192.0.2.99, want 192.0.2.11"},
		{"no local", func(v *kernel.VXLAN) { v.Local = netip.Addr{} }, "local invalid IP, want 192.0.2.11"},
		{"port", func(v *kernel.VXLAN) { v.Port = 4789 }, "port 4789, want 8472"},
		{"underlay", func(v *kernel.VXLAN) { v.VtepIndex = 0 }, "underlay link 0, want 2"},
		{"learning and gbp", func(v *kernel.VXLAN) { v.Learning, v.GBP = true, true }, "learning true, want false; gbp true, want false"},
		{"flow-based", func(v *kernel.VXLAN) { v.FlowBased = true }, "flow-based (external)"},
		{"group", func(v *kernel.VXLAN) { v.HasGroup = true }, "has a multicast group or default remote"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			have := want
			tt.change(&have)
			if got := incompatible(have, want); got != tt.want {
				t.Errorf("incompatible = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPlanVtepMACClaims checks that a lease copying another lease's VtepMAC, or this node's, is refused:
// the first holder of a MAC keeps it (the one that held it at the last plan, else the key created first),
// so a copier never takes the FDB entry of the node it copies.
func TestPlanVtepMACClaims(t *testing.T) {
	ext := backend.External{Name: "eth0", Index: 2, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11"), PublicIP: netip.MustParseAddr("192.0.2.11")}
	own := peer("10.5.1.0/24", "192.0.2.11", Type, vtep("02:00:00:00:00:01"))
	ownMAC, _ := net.ParseMAC("02:00:00:00:00:01")
	m2 := "02:00:00:00:00:02"
	created := func(l subnet.Lease, rev int64) subnet.Lease { l.Created, l.Revision = rev, rev; return l }
	real2 := created(peer("10.5.2.0/24", "192.0.2.12", Type, vtep(m2)), 10)
	copier := created(peer("10.5.3.0/24", "192.0.2.13", Type, vtep(m2)), 20)
	tests := []struct {
		name     string
		peers    []subnet.Lease
		owners   map[string]string // MAC claims from the plan before
		want     string
		wantSkip []string
	}{
		{
			name:  "the key created first keeps the MAC",
			peers: []subnet.Lease{copier, real2},
			want: `addr 10.5.1.0/32
neigh 10.5.2.0 lladdr 02:00:00:00:00:02 dev #9
fdb 02:00:00:00:00:02 dst 192.0.2.12 dev #9
route 10.5.2.0/24 via 10.5.2.0 dev #9 onlink
`,
			wantSkip: []string{`10.5.3.0-24: its VtepMAC 02:00:00:00:00:02 is lease 10.5.2.0-24's`},
		},
		{
			name:   "the holder at the last plan keeps it, even if created later",
			peers:  []subnet.Lease{real2, copier},
			owners: map[string]string{m2: "10.5.3.0-24"},
			want: `addr 10.5.1.0/32
neigh 10.5.3.0 lladdr 02:00:00:00:00:02 dev #9
fdb 02:00:00:00:00:02 dst 192.0.2.13 dev #9
route 10.5.3.0/24 via 10.5.3.0 dev #9 onlink
`,
			wantSkip: []string{`10.5.2.0-24: its VtepMAC 02:00:00:00:00:02 is lease 10.5.3.0-24's`},
		},
		{
			name:     "this node's MAC",
			peers:    []subnet.Lease{created(peer("10.5.4.0/24", "192.0.2.14", Type, vtep("02:00:00:00:00:01")), 5)},
			want:     "addr 10.5.1.0/32\n",
			wantSkip: []string{`10.5.4.0-24: its VtepMAC 02:00:00:00:00:01 is this node's`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := &backend.Config{Network: subnet.Config{Network: netip.MustParsePrefix("10.5.0.0/16")}, Own: own, Peers: tt.peers}
			got, skipped := plan(cfg, planInput{ext: ext, dev: 9, ownMAC: ownMAC, macOwners: tt.owners})
			if g := render(got); g != tt.want {
				t.Errorf("plan:\n%s\nwant:\n%s", g, tt.want)
			}
			var gotSkip []string
			for _, s := range skipped {
				gotSkip = append(gotSkip, s.Key+": "+s.Reason)
			}
			if strings.Join(gotSkip, "\n") != strings.Join(tt.wantSkip, "\n") {
				t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(gotSkip, "\n"), strings.Join(tt.wantSkip, "\n"))
			}
		})
	}
}

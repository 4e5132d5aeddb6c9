package kerneltest

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TopologyNetwork is the overlay network of a Topology: every node's subnet lies in it.
var TopologyNetwork = netip.MustParsePrefix("10.5.0.0/16")

// TopologyNetwork6 is the IPv6 overlay network of a Topology: every node's IPv6 subnet lies in it.
var TopologyNetwork6 = netip.MustParsePrefix("fd00:5::/48")

// Topology is the backends' kernel-tier test cluster: an underlay switch and N nodes, each with a container
// behind a bridge addressed from the node's subnets. Nothing routes between the nodes' subnets: that is the
// job of the backend under test. Underlay and overlay are dual stack (IPv6 addresses without duplicate
// address detection, usable at once); a backend under test for IPv4 alone leaves the IPv6 ones unused.
//
//	netns <p>-lan   bridge br0: the underlay switch
//	  ├─ veth p1 ─ netns <p>-n1   eth0 192.0.2.11/24 2001:db8::11/64; bridge cbr0 10.5.1.1/24 fd00:5:0:1::1/64
//	  │                             └─ veth veth0 ─ netns <p>-c1   eth0 10.5.1.2/24 fd00:5:0:1::2/64,
//	  │                                                            default via 10.5.1.1 and fd00:5:0:1::1
//	  ├─ veth p2 ─ netns <p>-n2   eth0 192.0.2.12/24; ...
//	  └─ ...
type Topology struct {
	Prefix string  // the namespaces' name prefix <p>
	LAN    *NS     // the underlay switch's namespace, with the bridge br0
	Nodes  []*Node // Nodes[i] is node i+1
}

// Node is one node of a Topology.
type Node struct {
	I        int          // the node's number, from 1
	NS       *NS          // the node's namespace
	Ctr      *NS          // its container's namespace
	Underlay netip.Addr   // the address of the node's eth0 (192.0.2.1I/24) on the underlay
	Subnet   netip.Prefix // the node's subnet (10.5.I.0/24): cbr0 has .1, the container .2
	CtrAddr  netip.Addr   // the container's address (10.5.I.2)

	Underlay6 netip.Addr   // the IPv6 address of the node's eth0 (2001:db8::1I/64)
	Subnet6   netip.Prefix // the node's IPv6 subnet (fd00:5:0:I::/64): cbr0 has ::1, the container ::2
	CtrAddr6  netip.Addr   // the container's IPv6 address (fd00:5:0:I::2)
}

// NewTopology builds a Topology of n nodes in namespaces named with a fresh Prefix, all deleted in
// t.Cleanup. It skips the test unless it runs as root with iproute2 and ping (see RequireRoot).
func NewTopology(t testing.TB, n int) *Topology {
	t.Helper()
	RequireRoot(t)
	RequireCommand(t, "ping")
	p := Prefix()
	tp := &Topology{Prefix: p, LAN: NewNS(t, p+"-lan")}
	Bridge(t, tp.LAN, "br0")
	for i := 1; i <= n; i++ {
		nd := &Node{
			I:        i,
			NS:       NewNS(t, fmt.Sprintf("%s-n%d", p, i)),
			Ctr:      NewNS(t, fmt.Sprintf("%s-c%d", p, i)),
			Underlay: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24),
			CtrAddr:  netip.AddrFrom4([4]byte{10, 5, byte(i), 2}),
		}
		nd.Underlay6 = netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", 10+i))
		nd.Subnet6 = netip.MustParsePrefix(fmt.Sprintf("fd00:5:0:%x::/64", i))
		nd.CtrAddr6 = nd.Subnet6.Addr().Next().Next()
		gw6 := nd.Subnet6.Addr().Next()
		gw := nd.Subnet.Addr().Next()
		port := fmt.Sprintf("p%d", i)
		Veth(t, nd.NS, "eth0", netip.PrefixFrom(nd.Underlay, 24).String(), tp.LAN, port, "")
		tp.LAN.MustIP(t, "link", "set", port, "master", "br0")
		Bridge(t, nd.NS, "cbr0")
		nd.NS.MustIP(t, "addr", "add", netip.PrefixFrom(gw, nd.Subnet.Bits()).String(), "dev", "cbr0")
		Veth(t, nd.NS, "veth0", "", nd.Ctr, "eth0", netip.PrefixFrom(nd.CtrAddr, nd.Subnet.Bits()).String())
		nd.NS.MustIP(t, "link", "set", "veth0", "master", "cbr0")
		nd.Ctr.MustIP(t, "route", "add", "default", "via", gw.String())
		nd.NS.MustIP(t, "addr", "add", netip.PrefixFrom(nd.Underlay6, 64).String(), "dev", "eth0", "nodad")
		nd.NS.MustIP(t, "addr", "add", netip.PrefixFrom(gw6, 64).String(), "dev", "cbr0", "nodad")
		nd.Ctr.MustIP(t, "addr", "add", netip.PrefixFrom(nd.CtrAddr6, 64).String(), "dev", "eth0", "nodad")
		nd.Ctr.MustIP(t, "-6", "route", "add", "default", "via", gw6.String())
		tp.Nodes = append(tp.Nodes, nd)
	}
	return tp
}

// Ping pings dst from the node's container (two echo requests 0.2 s apart, waiting up to 2 s for each
// reply, numeric output) with the extra ping arguments, and returns ping's output. The error is non-nil
// unless every reply came back.
func (n *Node) Ping(dst netip.Addr, extra ...string) (string, error) {
	argv := append([]string{"ping", "-n", "-c", "2", "-i", "0.2", "-W", "2"}, extra...)
	return n.Ctr.Exec(append(argv, dst.String())...)
}

// PingAll checks that every container reaches every other one over IPv4, in both directions, and reports
// each pair that does not with t.Errorf.
func (tp *Topology) PingAll(t testing.TB) {
	t.Helper()
	tp.pingAll(t, func(n *Node) netip.Addr { return n.CtrAddr })
}

// PingAll6 is PingAll over IPv6 (the containers' CtrAddr6).
func (tp *Topology) PingAll6(t testing.TB) {
	t.Helper()
	tp.pingAll(t, func(n *Node) netip.Addr { return n.CtrAddr6 })
}

func (tp *Topology) pingAll(t testing.TB, addr func(*Node) netip.Addr) {
	t.Helper()
	for _, a := range tp.Nodes {
		for _, b := range tp.Nodes {
			if a != b {
				if out, err := a.Ping(addr(b)); err != nil {
					t.Errorf("c%d -> c%d (%s): %v\n%s", a.I, b.I, addr(b), err, out)
				}
			}
		}
	}
}

// Norm trims each line's surrounding blanks, folds runs of blanks and drops empty lines, so iproute2 output
// (which has trailing spaces) compares with golden text indented to fit the test; nexthop object IDs read
// "nhid N".
func Norm(s string) string {
	var lines []string
	for l := range strings.Lines(s) {
		if l = nhidRE.ReplaceAllString(strings.Join(strings.Fields(l), " "), "nhid N"); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// nhidRE matches a route's nexthop object ID, which Norm writes as "nhid N" (the IDs are not fixed).
var nhidRE = regexp.MustCompile(`\bnhid \d+`)

// Expect compares command output with the golden text want, both normalised by Norm, and reports a
// difference with t.Errorf naming what.
func Expect(t testing.TB, what, got, want string) {
	t.Helper()
	if g, w := Norm(got), Norm(want); g != w {
		t.Errorf("%s:\n%s\nwant:\n%s", what, g, w)
	}
}

// ExpectSorted is Expect with the lines of both sides sorted, for kernel dumps in hash order.
func ExpectSorted(t testing.TB, what, got, want string) {
	t.Helper()
	sorted := func(s string) string {
		lines := strings.Split(Norm(s), "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	if g, w := sorted(got), sorted(want); g != w {
		t.Errorf("%s:\n%s\nwant:\n%s", what, g, w)
	}
}

package vxlan

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// network6 is the topology's network config with IPv6 enabled (dual stack), or IPv6 only.
func network6(ipv4 bool) *subnet.Config {
	n := &subnet.Config{EnableIPv4: ipv4, EnableIPv6: true, IPv6Network: kerneltest.TopologyNetwork6, IPv6SubnetLen: 64,
		BackendType: Type, Backend: json.RawMessage(`{"Type":"vxlan"}`)}
	if ipv4 {
		n.Network, n.SubnetLen = kerneltest.TopologyNetwork, 24
	}
	return n
}

// linkMAC reads a link's MAC in the node's namespace.
func linkMAC(t *testing.T, n *backendtest.Node, dev string) string {
	t.Helper()
	f := strings.Fields(n.NS.MustIP(t, "-o", "link", "show", dev))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("n%d: no MAC for %s", n.I, dev)
	return ""
}

// TestVXLANDualStack runs three dual-stack vxlan nodes: flannel.1 over the IPv4 underlay and flannel-v6.1
// over the IPv6 one, each with its own VtepMAC (BackendData, BackendV6Data), the IPv6 device's MTU the
// underlay's − 70 and the env file's MTU the smaller of the two; containers reach each other over both
// families, the IPv6 neighbours, FDB entries (to PublicIPv6) and routes are flannel's and are repaired
// when deleted, and a DF packet one byte over the IPv6 device's MTU gets "packet too big".
func TestVXLANDualStack(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	backendtest.Start(t, nodes, New, network6(true))
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		m4, m6 := linkMAC(t, n, "flannel.1"), linkMAC(t, n, "flannel-v6.1")
		if n.Local.BackendType != "vxlan" || n.Local.MTU != 1430 || m4 == m6 ||
			string(n.Local.BackendData) != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, m4) ||
			string(n.Local.BackendV6Data) != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, m6) {
			t.Fatalf("n%d: Local = %+v %s %s; device MACs %s %s", n.I, n.Local, n.Local.BackendData, n.Local.BackendV6Data, m4, m6)
		}
	}
	link := n1.NS.MustIP(t, "-d", "link", "show", "flannel-v6.1")
	for _, want := range []string{"mtu 1430", ",UP,", "vxlan id 1 local 2001:db8::11 dev eth0", "dstport 8472", "nolearning"} {
		if !strings.Contains(link, want) {
			t.Errorf("flannel-v6.1 lacks %q:\n%s", want, link)
		}
	}
	if link4 := n1.NS.MustIP(t, "-d", "link", "show", "flannel.1"); !strings.Contains(link4, "mtu 1450") {
		t.Errorf("flannel.1 MTU is not the IPv4 underlay's − 50:\n%s", link4)
	}
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)
	tp.PingAll6(t)

	m2, m3 := linkMAC(t, n2, "flannel-v6.1"), linkMAC(t, n3, "flannel-v6.1")
	wantRoutes := `
		fd00:5:0:2::/64 via fd00:5:0:2:: dev flannel-v6.1 metric 1024 onlink pref medium
		fd00:5:0:3::/64 via fd00:5:0:3:: dev flannel-v6.1 metric 1024 onlink pref medium`
	wantNeigh := fmt.Sprintf(`
		fd00:5:0:2:: lladdr %s PERMANENT
		fd00:5:0:3:: lladdr %s PERMANENT`, m2, m3)
	wantFDB := fmt.Sprintf(`
		%s dst 2001:db8::12 self permanent
		%s dst 2001:db8::13 self permanent`, m2, m3)
	state := func() string { // routes, neighbours and FDB entries; the device may be away a moment during a repair
		r, _ := n1.NS.IP("-6", "route", "show", "proto", "87")
		n, _ := n1.NS.IP("-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent")
		f, _ := n1.NS.Exec("bridge", "fdb", "show", "dev", "flannel-v6.1")
		return r + "\n" + n + "\n" + f
	}
	check := func(when string) {
		t.Helper()
		kerneltest.Expect(t, "n1 IPv6 routes of ours "+when, n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"), wantRoutes)
		kerneltest.ExpectSorted(t, "n1 IPv6 neighbours "+when, n1.NS.MustIP(t, "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent"), wantNeigh)
		kerneltest.ExpectSorted(t, "n1 IPv6 fdb "+when, n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel-v6.1"), wantFDB)
	}
	check("after Set")
	if out := n1.NS.MustIP(t, "-6", "-o", "addr", "show", "dev", "flannel-v6.1", "scope", "global"); !strings.Contains(out, "inet6 fd00:5:0:1::/128") {
		t.Errorf("flannel-v6.1 addresses: %s", out)
	}
	kerneltest.Expect(t, "n1 IPv6 forwarding", n1.NS.MustExec(t, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"), "1")

	// The IPv6 device's MTU holds for IPv6 packets (1430 − 40 − 8 of ICMPv6 payload); one byte more gets
	// "packet too big" from the node.
	if out, err := n1.Ping(n2.CtrAddr6, "-M", "do", "-s", "1382"); err != nil {
		t.Errorf("IPv6 ping at the MTU (1430): %v\n%s", err, out)
	}
	if out, err := n1.Ping(n2.CtrAddr6, "-M", "do", "-s", "1383"); err == nil ||
		!(strings.Contains(out, "mtu=1430") || strings.Contains(out, "mtu = 1430") || strings.Contains(out, "too big")) {
		t.Errorf("IPv6 ping one byte over the MTU: err %v, want packet too big:\n%s", err, out)
	}
	// IPv4 keeps flannel.1's MTU.
	if out, err := n1.Ping(n2.CtrAddr, "-M", "do", "-s", "1422"); err != nil {
		t.Errorf("IPv4 ping at flannel.1's MTU (1450): %v\n%s", err, out)
	}

	// Repairs what was deleted behind its back at once, each alone, following kernel events (without a Set);
	// an update without resync keeps the state.
	for _, breakIt := range [][]string{
		{"ip", "-6", "neigh", "del", "fd00:5:0:2::", "dev", "flannel-v6.1"},
		{"bridge", "fdb", "del", m3, "dev", "flannel-v6.1", "dst", "2001:db8::13", "self"},
		{"ip", "-6", "route", "del", "fd00:5:0:3::/64"},
	} {
		n1.NS.MustExec(t, breakIt...)
		waitSorted(t, fmt.Sprintf("n1 IPv6 state after %v, without a Set", breakIt), state, wantRoutes+"\n"+wantNeigh+"\n"+wantFDB)
	}
	n1.Set(t, n2, n3)
	check("after a Set")
	n1.Update(t, n2, n3)
	check("after an update")
	tp.PingAll6(t)

	// A peer that left loses its IPv6 entries as well as its IPv4 ones.
	n1.Set(t, n2)
	wantRoutes = "fd00:5:0:2::/64 via fd00:5:0:2:: dev flannel-v6.1 metric 1024 onlink pref medium"
	wantNeigh = fmt.Sprintf("fd00:5:0:2:: lladdr %s PERMANENT", m2)
	wantFDB = fmt.Sprintf("%s dst 2001:db8::12 self permanent", m2)
	check("after n3 left")
	kerneltest.Expect(t, "n1 IPv4 routes after n3 left", n1.NS.MustIP(t, "route", "show", "proto", "87"), "10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink")
}

// TestVXLANIPv6Only runs three vxlan nodes in an IPv6-only network: flannel-v6.1 alone (no flannel.1), its
// VtepMAC in BackendV6Data and none in BackendData, containers reaching each other over IPv6, and a
// restarted backend reusing the device and its MAC.
func TestVXLANIPv6Only(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	backendtest.Start(t, nodes, New, network6(false))
	for _, n := range nodes {
		m6 := linkMAC(t, n, "flannel-v6.1")
		if n.Local.MTU != 1430 || n.Local.BackendData != nil || string(n.Local.BackendV6Data) != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, m6) {
			t.Fatalf("n%d: Local = %+v %s %s; device MAC %s", n.I, n.Local, n.Local.BackendData, n.Local.BackendV6Data, m6)
		}
		if _, err := n.NS.IP("link", "show", "flannel.1"); err == nil {
			t.Errorf("n%d: flannel.1 exists in an IPv6-only network", n.I)
		}
	}
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll6(t)
	kerneltest.Expect(t, "n1 IPv4 routes of ours", nodes[0].NS.MustIP(t, "route", "show", "proto", "87"), "")

	// A restarted backend reuses flannel-v6.1 with its MAC (its local IPv6 address reads back equal).
	n1 := nodes[0]
	before := string(n1.Local.BackendV6Data)
	if err := n1.Be.Close(); err != nil {
		t.Fatal(err)
	}
	backendtest.Start(t, nodes[:1], New, network6(false))
	if got := string(n1.Local.BackendV6Data); got != before {
		t.Errorf("after a restart BackendV6Data = %s, want the device reused with %s", got, before)
	}
	n1.Set(t, nodes[1:]...)
	tp.PingAll6(t)
}

// TestVXLANDirectRoutingIPv6: with DirectRouting in a dual-stack network, a peer whose PublicIPv6 is on
// the same L2 segment gets a host-gw IPv6 route via PublicIPv6 (no IPv6 neighbour or FDB entry), while a
// peer reached through a gateway goes over flannel-v6.1.
func TestVXLANDirectRoutingIPv6(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	n1, n3 := nodes[0], nodes[2]
	// From n1, n3's IPv6 address is reached through n2 (a router), so it is not directly reachable.
	n1.NS.MustIP(t, "-6", "route", "add", "2001:db8::13/128", "via", "2001:db8::12", "dev", "eth0")
	network := network6(true)
	network.Backend = json.RawMessage(`{"Type":"vxlan","DirectRouting":true}`)
	backendtest.Start(t, nodes, New, network)
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll6(t)
	tp.PingAll(t)
	m3 := linkMAC(t, n3, "flannel-v6.1")
	kerneltest.Expect(t, "n1 IPv6 routes of ours", n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"), `
		fd00:5:0:2::/64 via 2001:db8::12 dev eth0 metric 1024 pref medium
		fd00:5:0:3::/64 via fd00:5:0:3:: dev flannel-v6.1 metric 1024 onlink pref medium`)
	kerneltest.Expect(t, "n1 IPv6 neighbours", n1.NS.MustIP(t, "-6", "neigh", "show", "dev", "flannel-v6.1", "nud", "permanent"), "fd00:5:0:3:: lladdr "+m3+" PERMANENT")
	kerneltest.Expect(t, "n1 IPv6 fdb", n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel-v6.1"), m3+" dst 2001:db8::13 self permanent")
	kerneltest.Expect(t, "n1 IPv4 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
}

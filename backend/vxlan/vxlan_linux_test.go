package vxlan

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// startVXLAN creates and brings up the vxlan backend on every node with the given Backend JSON.
func startVXLAN(t *testing.T, nodes []*backendtest.Node, backendJSON string) {
	t.Helper()
	for _, n := range nodes {
		be, err := New(n.Deps(t, &subnet.Config{Network: kerneltest.TopologyNetwork, BackendType: Type, Backend: json.RawMessage(backendJSON)}))
		if err != nil {
			t.Fatal(err)
		}
		n.Be = be
		t.Cleanup(func() { be.Close() })
		n.Up(t)
	}
}

// vtepMAC is the node's published VTEP MAC.
func vtepMAC(t *testing.T, n *backendtest.Node) string {
	t.Helper()
	var d LeaseData
	if err := json.Unmarshal(n.Local.BackendData, &d); err != nil {
		t.Fatalf("n%d: BackendData %s: %v", n.I, n.Local.BackendData, err)
	}
	return d.VtepMAC
}

// devMAC reads flannel.1's MAC and ifindex from the kernel.
func devMAC(t *testing.T, n *backendtest.Node) (mac, index string) {
	t.Helper()
	out := n.NS.MustIP(t, "-o", "link", "show", "flannel.1")
	index, _, _ = strings.Cut(out, ":")
	f := strings.Fields(out)
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1], index
		}
	}
	t.Fatalf("no MAC in %q", out)
	return "", ""
}

// TestVXLANTraffic runs three vxlan nodes on one underlay and proves container-to-container traffic and
// the MTU, then reconcile: repair of hand-deleted neighbours, FDB entries and routes, removal of state
// nothing explains (while a foreign route stays), peer removal, and Close leaving the data path in place.
func TestVXLANTraffic(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		mac, _ := devMAC(t, n)
		if n.Local.BackendType != "vxlan" || n.Local.MTU != 1450 ||
			string(n.Local.BackendData) != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac) {
			t.Fatalf("n%d: Local = %+v %s; device MAC %s", n.I, n.Local, n.Local.BackendData, mac)
		}
	}
	link := n1.NS.MustIP(t, "-d", "link", "show", "flannel.1")
	for _, want := range []string{"mtu 1450", ",UP,", "vxlan id 1 local 192.0.2.11 dev eth0", "dstport 8472", "nolearning"} {
		if !strings.Contains(link, want) {
			t.Errorf("flannel.1 lacks %q:\n%s", want, link)
		}
	}

	// State nothing explains: a stale route, neighbour and FDB entry of ours, and a foreign route.
	n1.NS.MustIP(t, "route", "add", "10.5.99.0/24", "via", "10.5.99.0", "dev", "flannel.1", "onlink", "proto", "87")
	n1.NS.MustIP(t, "route", "add", "10.5.98.0/24", "via", "192.0.2.98", "dev", "eth0")
	n1.NS.MustIP(t, "neigh", "add", "10.5.97.0", "lladdr", "02:00:00:00:00:97", "dev", "flannel.1", "nud", "permanent")
	n1.NS.MustExec(t, "bridge", "fdb", "add", "02:00:00:00:00:97", "dev", "flannel.1", "dst", "192.0.2.97", "self", "permanent")

	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)

	m2, m3 := vtepMAC(t, n2), vtepMAC(t, n3)
	wantRoutes := `
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink`
	wantNeigh := fmt.Sprintf(`
		10.5.2.0 lladdr %s PERMANENT
		10.5.3.0 lladdr %s PERMANENT`, m2, m3)
	wantFDB := fmt.Sprintf(`
		%s dst 192.0.2.12 self permanent
		%s dst 192.0.2.13 self permanent`, m2, m3)
	check := func(when string) {
		t.Helper()
		kerneltest.Expect(t, "n1 routes of ours "+when, n1.NS.MustIP(t, "route", "show", "proto", "87"), wantRoutes)
		kerneltest.ExpectSorted(t, "n1 neighbours "+when, n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1"), wantNeigh)
		kerneltest.ExpectSorted(t, "n1 fdb "+when, n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1"), wantFDB)
	}
	check("after Set")
	kerneltest.Expect(t, "n1 foreign routes", n1.NS.MustIP(t, "route", "show", "proto", "boot"), "10.5.98.0/24 via 192.0.2.98 dev eth0")
	if out := n1.NS.MustIP(t, "-4", "-o", "addr", "show", "dev", "flannel.1"); !strings.Contains(out, "inet 10.5.1.0/32") ||
		strings.Count(out, "inet ") != 1 {
		t.Errorf("flannel.1 addresses: %s", out)
	}
	for _, n := range nodes {
		kerneltest.Expect(t, fmt.Sprintf("n%d ip_forward", n.I), n.NS.MustExec(t, "cat", "/proc/sys/net/ipv4/ip_forward"), "1")
	}

	// The device MTU holds for DF packets; one byte more gets "fragmentation needed".
	if out, err := n1.Ping(n2.CtrAddr, "-M", "do", "-s", "1422"); err != nil {
		t.Errorf("DF ping at the MTU (1450): %v\n%s", err, out)
	}
	if out, err := n1.Ping(n2.CtrAddr, "-M", "do", "-s", "1423"); err == nil ||
		!(strings.Contains(out, "mtu = 1450") || strings.Contains(out, "too long")) {
		t.Errorf("DF ping one byte over the MTU: err %v, want frag needed:\n%s", err, out)
	}

	// Idempotent, and repairs what was deleted behind its back.
	n1.Set(t, n2, n3)
	check("after a second Set")
	n1.NS.MustIP(t, "neigh", "del", "10.5.2.0", "dev", "flannel.1")
	n1.NS.MustExec(t, "bridge", "fdb", "del", m3, "dev", "flannel.1", "dst", "192.0.2.13", "self")
	n1.NS.MustIP(t, "route", "del", "10.5.3.0/24")
	n1.NS.MustIP(t, "addr", "flush", "dev", "flannel.1")
	n1.Set(t, n2, n3)
	check("after repair")
	tp.PingAll(t)

	// A peer that left loses its neighbour, FDB entry and route.
	n1.Set(t, n2)
	wantRoutes = "10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink"
	wantNeigh = fmt.Sprintf("10.5.2.0 lladdr %s PERMANENT", m2)
	wantFDB = fmt.Sprintf("%s dst 192.0.2.12 self permanent", m2)
	check("after n3 left")

	// Close changes nothing in the kernel.
	for _, n := range nodes {
		if err := n.Be.Close(); err != nil {
			t.Fatal(err)
		}
	}
	check("after Close")
	if _, err := n2.Ping(n1.CtrAddr); err != nil {
		t.Errorf("c2 -> c1 after Close: %v", err)
	}
}

// TestVXLANDeviceReuse checks that a restarted backend reuses a compatible leftover device with its MAC
// (fixing MTU and state in place), replaces an incompatible one, and that Set restores the published MAC
// and recreates a deleted device.
func TestVXLANDeviceReuse(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 2)
	n1, n2 := nodes[0], nodes[1]
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	mac1, idx1 := devMAC(t, n1)
	if vtepMAC(t, n1) != mac1 {
		t.Fatalf("published MAC %s, device MAC %s", vtepMAC(t, n1), mac1)
	}

	restart := func() {
		t.Helper()
		n1.Be.Close()
		startVXLAN(t, []*backendtest.Node{n1}, `{"Type":"vxlan"}`)
	}
	// A restart keeps the device and its MAC; MTU and state are fixed in place.
	n1.NS.MustIP(t, "link", "set", "flannel.1", "down", "mtu", "1300")
	restart()
	mac, idx := devMAC(t, n1)
	if mac != mac1 || idx != idx1 || vtepMAC(t, n1) != mac1 {
		t.Errorf("after restart: device %s MAC %s (published %s), want device %s MAC %s", idx, mac, vtepMAC(t, n1), idx1, mac1)
	}
	if link := n1.NS.MustIP(t, "link", "show", "flannel.1"); !strings.Contains(link, "mtu 1450") || !strings.Contains(link, ",UP") {
		t.Errorf("MTU or state not fixed: %s", link)
	}

	// Incompatible leftovers of the same name are replaced.
	for _, tc := range []struct {
		name string
		argv []string
		want string
	}{
		{"another port", []string{"type", "vxlan", "id", "1", "local", "192.0.2.11", "dev", "eth0", "dstport", "4789", "nolearning"}, "dstport 8472"},
		{"learning", []string{"type", "vxlan", "id", "1", "local", "192.0.2.11", "dev", "eth0", "dstport", "8472", "learning"}, "nolearning"},
		{"another vni", []string{"type", "vxlan", "id", "5", "local", "192.0.2.11", "dev", "eth0", "dstport", "8472", "nolearning"}, "vxlan id 1 "},
		{"a bridge", []string{"type", "bridge"}, "vxlan id 1 "},
	} {
		n1.Be.Close()
		n1.NS.MustIP(t, "link", "del", "flannel.1")
		n1.NS.MustIP(t, append([]string{"link", "add", "flannel.1"}, tc.argv...)...)
		oldMAC, oldIdx := devMAC(t, n1)
		startVXLAN(t, []*backendtest.Node{n1}, `{"Type":"vxlan"}`)
		mac, idx := devMAC(t, n1)
		link := n1.NS.MustIP(t, "-d", "link", "show", "flannel.1")
		if idx == oldIdx || mac == oldMAC || vtepMAC(t, n1) != mac || !strings.Contains(link, tc.want) || !strings.Contains(link, ",UP") {
			t.Errorf("%s: not replaced (index %s -> %s, MAC %s -> %s, published %s):\n%s", tc.name, oldIdx, idx, oldMAC, mac, vtepMAC(t, n1), link)
		}
	}

	// Set enforces the published MAC and recreates a deleted device with it.
	pub := vtepMAC(t, n1)
	n1.Set(t, n2)
	n2.Set(t, n1)
	n1.NS.MustIP(t, "link", "set", "flannel.1", "address", "02:12:34:56:78:9a")
	n1.Set(t, n2)
	if mac, _ := devMAC(t, n1); mac != pub {
		t.Errorf("after Set: MAC %s, want the published %s", mac, pub)
	}
	n1.NS.MustIP(t, "link", "del", "flannel.1")
	n1.Set(t, n2)
	if mac, _ := devMAC(t, n1); mac != pub {
		t.Errorf("recreated device: MAC %s, want the published %s", mac, pub)
	}
	if _, err := n1.Ping(n2.CtrAddr); err != nil {
		t.Errorf("c1 -> c2 after the device was recreated: %v", err)
	}

	// Another VNI is another device; the old one is no longer ours and is left alone.
	n1.Be.Close()
	startVXLAN(t, []*backendtest.Node{n1}, `{"Type":"vxlan","VNI":2,"Port":4789}`)
	if link := n1.NS.MustIP(t, "-d", "link", "show", "flannel.2"); !strings.Contains(link, "vxlan id 2 ") || !strings.Contains(link, "dstport 4789") {
		t.Errorf("flannel.2: %s", link)
	}
	n1.NS.MustIP(t, "link", "show", "flannel.1")
}

// TestVXLANDirectRouting checks that with DirectRouting a peer on the same L2 segment gets a host-gw route
// (and no neighbour or FDB entry) while a peer reached through a gateway goes over VXLAN.
func TestVXLANDirectRouting(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	// From n1, n3 is reached through n2 (a router), so it is not directly reachable.
	n1.NS.MustIP(t, "route", "add", "192.0.2.13/32", "via", "192.0.2.12", "dev", "eth0")
	startVXLAN(t, nodes, `{"Type":"vxlan","DirectRouting":true}`)
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)
	kerneltest.Expect(t, "n1 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink`)
	kerneltest.Expect(t, "n1 neighbours", n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1"), "10.5.3.0 lladdr "+vtepMAC(t, n3)+" PERMANENT")
	kerneltest.Expect(t, "n1 fdb", n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1"), vtepMAC(t, n3)+" dst 192.0.2.13 self permanent")
	kerneltest.Expect(t, "n2 routes of ours", n2.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.1.0/24 via 192.0.2.11 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)

	// When n3 becomes directly reachable, its vxlan state goes and a direct route replaces it.
	n1.NS.MustIP(t, "route", "del", "192.0.2.13/32")
	n1.Set(t, n2, n3)
	kerneltest.Expect(t, "n1 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
	kerneltest.Expect(t, "n1 neighbours", n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1"), "")
	kerneltest.Expect(t, "n1 fdb", n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1"), "")
	tp.PingAll(t)

	// Single changes (Update): n3 leaving and coming back gets its direct route again.
	if err := n1.Change(t, nil, n3.Lease()); err != nil {
		t.Fatal(err)
	}
	kerneltest.Expect(t, "n1 routes of ours after n3 left", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	if err := n1.Change(t, []subnet.Lease{n3.Lease()}); err != nil {
		t.Fatal(err)
	}
	kerneltest.Expect(t, "n1 routes of ours after n3 came back", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
	kerneltest.Expect(t, "n1 neighbours after n3 came back", n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1"), "")
	tp.PingAll(t)
}

// TestVXLANVtepMACHijackRefused checks that a lease copying another node's VtepMAC (here n3's lease
// publishing n2's MAC, written after n2's) never takes n2's FDB entry, whatever order the peers come in,
// and that the refusal is counted once; a lease copying this node's own MAC is refused too.
func TestVXLANVtepMACHijackRefused(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	real2 := n2.Lease()
	real2.Created = 10
	copier := n3.Lease()
	copier.Attrs.BackendData = n2.Local.BackendData
	copier.Created = 20
	ownCopy := n3.Lease()
	ownCopy.Subnet = netip.MustParsePrefix("10.5.9.0/24")
	ownCopy.Attrs.BackendData = n1.Local.BackendData
	ownCopy.Created = 30
	n2.Set(t, n1)
	m2 := vtepMAC(t, n2)
	wantFDB := fmt.Sprintf("%s dst 192.0.2.12 self permanent", m2)
	for i, peers := range [][]subnet.Lease{{real2, copier, ownCopy}, {copier, ownCopy, real2}, {real2, copier, ownCopy}} {
		cfg := &backend.Config{Network: subnet.Config{Network: kerneltest.TopologyNetwork}, Own: n1.Lease(), Peers: peers}
		if err := n1.Be.Set(cfg); err != nil {
			t.Fatalf("Set %d: %v", i, err)
		}
		kerneltest.ExpectSorted(t, fmt.Sprintf("n1 fdb after Set %d", i), n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1"), wantFDB)
		kerneltest.Expect(t, fmt.Sprintf("n1 routes after Set %d", i), n1.NS.MustIP(t, "route", "show", "proto", "87"),
			"10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink")
	}
	if out, err := n1.Ping(n2.CtrAddr); err != nil {
		t.Errorf("ping n1 → n2 with a copier around: %v\n%s", err, out)
	}
	_ = tp
	stats := n1.Be.(interface{ Stats() map[string]uint64 }).Stats()
	if got := stats["vtepmac_conflicts_total"]; got != 2 {
		t.Errorf("vtepmac_conflicts_total = %d, want 2 (the copier of n2's MAC and the copier of n1's, each counted once)", got)
	}
}

// TestVXLANOwnsOnlyItsNetwork checks Set's ownership scope: a route of ours for another network on the
// underlay (another weftd's, say host-gw for 10.6.0.0/16) is kept; a stale route of ours on the vxlan
// device, whatever its destination, is removed.
func TestVXLANOwnsOnlyItsNetwork(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 2)
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2 := nodes[0], nodes[1]
	n1.NS.MustIP(t, "route", "add", "10.6.2.0/24", "via", "192.0.2.12", "dev", "eth0", "proto", "87")
	n1.NS.MustIP(t, "route", "add", "10.7.0.0/24", "via", "10.7.0.0", "dev", "flannel.1", "onlink", "proto", "87")
	n1.Set(t, n2)
	kerneltest.Expect(t, "n1 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.6.2.0/24 via 192.0.2.12 dev eth0`)
}

// TestVXLANUpdate checks the change-only path (Set without Resync): peers join, leave and come back with a
// new MAC, and the kernel follows; it does not read the kernel, so a route deleted by hand comes back only
// with the next Resync.
func TestVXLANUpdate(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.Set(t) // the first Set: no peers yet
	}
	for _, n := range nodes {
		n.Update(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)
	state := func() string {
		return n1.NS.MustIP(t, "route", "show", "proto", "87") + n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1") +
			n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1")
	}
	m2, m3 := vtepMAC(t, n2), vtepMAC(t, n3)
	kerneltest.ExpectSorted(t, "n1 after Update with n2 and n3", state(), fmt.Sprintf(`
		10.5.2.0 lladdr %[1]s PERMANENT
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.5.3.0 lladdr %[2]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.12 self permanent
		%[2]s dst 192.0.2.13 self permanent`, m2, m3))

	n1.Update(t, n2)
	kerneltest.ExpectSorted(t, "n1 after n3 left", state(), fmt.Sprintf(`
		10.5.2.0 lladdr %[1]s PERMANENT
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.12 self permanent`, m2))

	// n3 comes back with a new device MAC.
	n3.Be.Close() // first: its keeper would repair the deleted device, MAC and all
	n3.NS.MustIP(t, "link", "del", "flannel.1")
	startVXLAN(t, []*backendtest.Node{n3}, `{"Type":"vxlan"}`)
	n3.Set(t, n1, n2)
	m3b := vtepMAC(t, n3)
	if m3b == m3 {
		t.Fatalf("n3's new device kept MAC %s", m3)
	}
	n1.Update(t, n2, n3)
	kerneltest.ExpectSorted(t, "n1 after n3 came back", state(), fmt.Sprintf(`
		10.5.2.0 lladdr %[1]s PERMANENT
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.5.3.0 lladdr %[2]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.12 self permanent
		%[2]s dst 192.0.2.13 self permanent`, m2, m3b))
	if out, err := n1.Ping(n3.CtrAddr); err != nil {
		t.Errorf("n1 → n3 after it came back: %v\n%s", err, out)
	}

	// Update does not read the kernel; Resync repairs.
	n1.NS.MustIP(t, "route", "del", "10.5.2.0/24")
	n1.Update(t, n2, n3)
	if strings.Contains(n1.NS.MustIP(t, "route", "show", "proto", "87"), "10.5.2.0/24") {
		t.Log("Update restored a hand-deleted route (it may, but need not)")
	}
	n1.Set(t, n2, n3)
	if !strings.Contains(kerneltest.Norm(n1.NS.MustIP(t, "route", "show", "proto", "87")), "10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink") {
		t.Error("Set with Resync did not restore the hand-deleted route")
	}
}

// TestVXLANChange checks backend.Updater: single leases joining, leaving and changing are programmed alone,
// a copier of a VtepMAC is refused as Set refuses it, and a change touching a contested MAC asks for Set.
func TestVXLANChange(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	if err := n1.Change(t, []subnet.Lease{n2.Lease()}); !errors.Is(err, backend.ErrNeedSet) {
		t.Errorf("Update before any Set: %v, want ErrNeedSet", err)
	}
	n1.Set(t, n2)
	n2.Set(t, n1, n3)
	n3.Set(t, n1, n2)
	state := func() string {
		return n1.NS.MustIP(t, "route", "show", "proto", "87") + n1.NS.MustIP(t, "neigh", "show", "dev", "flannel.1") +
			n1.NS.MustExec(t, "bridge", "fdb", "show", "dev", "flannel.1")
	}
	m2, m3 := vtepMAC(t, n2), vtepMAC(t, n3)
	mustChange := func(put []subnet.Lease, gone ...subnet.Lease) {
		t.Helper()
		if err := n1.Change(t, put, gone...); err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	mustChange([]subnet.Lease{n3.Lease()})
	kerneltest.ExpectSorted(t, "n1 after n3 joined", state(), fmt.Sprintf(`
		10.5.2.0 lladdr %[1]s PERMANENT
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.5.3.0 lladdr %[2]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.12 self permanent
		%[2]s dst 192.0.2.13 self permanent`, m2, m3))
	if out, err := n1.Ping(n3.CtrAddr); err != nil {
		t.Errorf("n1 → n3 after the change: %v\n%s", err, out)
	}
	mustChange(nil, n2.Lease())
	kerneltest.ExpectSorted(t, "n1 after n2 left", state(), fmt.Sprintf(`
		10.5.3.0 lladdr %[1]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.13 self permanent`, m3))

	// A lease copying n3's MAC is refused and counted; n3 keeps its entry.
	copier := n2.Lease()
	copier.Attrs.BackendData = n3.Local.BackendData
	mustChange([]subnet.Lease{copier})
	kerneltest.ExpectSorted(t, "n1 after a copier came", state(), fmt.Sprintf(`
		10.5.3.0 lladdr %[1]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.13 self permanent`, m3))
	if got := n1.Be.(interface{ Stats() map[string]uint64 }).Stats()["vtepmac_conflicts_total"]; got != 1 {
		t.Errorf("vtepmac_conflicts_total = %d, want 1", got)
	}
	// n3 leaving would hand its MAC to the copier: that is for Set to weigh.
	if err := n1.Change(t, nil, n3.Lease()); !errors.Is(err, backend.ErrNeedSet) {
		t.Errorf("Update of a lease with a contested MAC: %v, want ErrNeedSet", err)
	}
}

// TestVXLANPreviousMAC checks that a backend whose device is gone (a reboot) takes the VtepMAC it published
// before (Deps.PrevData; kube mode reads it back from the Node), unless that data is for another VNI or
// holds no unicast MAC.
func TestVXLANPreviousMAC(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 1)
	n := nodes[0]
	for _, tc := range []struct{ name, prev, want string }{
		{"same VNI", `{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`, "82:1f:5e:aa:01:02"},
		{"another VNI", `{"VNI":2,"VtepMAC":"82:1f:5e:aa:01:03"}`, ""},
		{"multicast MAC", `{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.NS.IP("link", "del", "flannel.1") // gone, as after a reboot (absent the first time)
			d := n.Deps(t, &subnet.Config{Network: kerneltest.TopologyNetwork, BackendType: Type, Backend: json.RawMessage(`{"Type":"vxlan"}`)})
			d.PrevData = json.RawMessage(tc.prev)
			be, err := New(d)
			if err != nil {
				t.Fatal(err)
			}
			n.Be = be
			defer be.Close()
			n.Up(t)
			mac, _ := devMAC(t, n)
			if vtepMAC(t, n) != mac {
				t.Errorf("published MAC %s, device MAC %s", vtepMAC(t, n), mac)
			}
			if tc.want != "" && mac != tc.want {
				t.Errorf("device MAC %s, want the previous %s", mac, tc.want)
			}
			if tc.want == "" && strings.Contains(tc.prev, mac) {
				t.Errorf("device MAC %s taken from unusable previous data %s", mac, tc.prev)
			}
		})
	}
}

// TestVXLANRepairsDriftFromEvents: what is deleted behind the backend's back (a neighbour, an FDB entry, a
// route, the device set down, the device deleted) comes back within a second without any Set, from the
// kernel's events; what the backend deletes itself (a peer leaving), and entries it did not make, trigger no
// repair.
func TestVXLANRepairsDriftFromEvents(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	kerneltest.RequireCommand(t, "bridge")
	startVXLAN(t, nodes, `{"Type":"vxlan"}`)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	if f, ok := n1.Be.(backend.Follower); !ok || !f.Following() {
		t.Fatal("the vxlan backend does not follow kernel events")
	}
	repairs := func() uint64 { return n1.Be.(backend.Stats).Stats()["drift_repairs_total"] }
	m2, m3 := vtepMAC(t, n2), vtepMAC(t, n3)
	state := func() string { // the device may be gone for a moment: no failure then, only a difference
		r, _ := n1.NS.IP("route", "show", "proto", "87")
		n, _ := n1.NS.IP("neigh", "show", "dev", "flannel.1")
		f, _ := n1.NS.Exec("bridge", "fdb", "show", "dev", "flannel.1")
		return r + "\n" + n + "\n" + f
	}
	full := fmt.Sprintf(`
		10.5.2.0 lladdr %[1]s PERMANENT
		10.5.2.0/24 nhid N via 10.5.2.0 dev flannel.1 onlink
		10.5.3.0 lladdr %[2]s PERMANENT
		10.5.3.0/24 nhid N via 10.5.3.0 dev flannel.1 onlink
		%[1]s dst 192.0.2.12 self permanent
		%[2]s dst 192.0.2.13 self permanent`, m2, m3)
	kerneltest.ExpectSorted(t, "n1 after Set", state(), full)
	r0 := repairs()
	for _, tc := range []struct {
		name    string
		breakIt []string
	}{
		{"neighbour deleted", []string{"ip", "neigh", "del", "10.5.2.0", "dev", "flannel.1"}},
		{"fdb entry deleted", []string{"bridge", "fdb", "del", m3, "dev", "flannel.1", "dst", "192.0.2.13", "self"}},
		{"route deleted", []string{"ip", "route", "del", "10.5.3.0/24"}},
		// Deleting nexthop objects deletes the IPv4 routes using them without a route event.
		{"nexthop objects flushed", []string{"ip", "nexthop", "flush"}},
		{"device down", []string{"ip", "link", "set", "flannel.1", "down"}},
		{"device deleted", []string{"ip", "link", "del", "flannel.1"}},
	} {
		n1.NS.MustExec(t, tc.breakIt...)
		waitSorted(t, "n1 after "+tc.name+", without a Set", state, full)
	}
	if mac, _ := devMAC(t, n1); mac != vtepMAC(t, n1) {
		t.Errorf("recreated device has MAC %s, published %s", mac, vtepMAC(t, n1))
	}
	tp.PingAll(t)
	if got := repairs() - r0; got < 6 {
		t.Errorf("%d repairs after 6 changes behind the backend's back", got)
	}

	// The backend's own deletions are not drift, nor entries on its device it did not make.
	time.Sleep(200 * time.Millisecond)
	r1 := repairs()
	n1.NS.MustIP(t, "neigh", "add", "10.5.77.7", "lladdr", "02:00:00:00:77:07", "dev", "flannel.1", "nud", "reachable")
	n1.NS.MustIP(t, "neigh", "del", "10.5.77.7", "dev", "flannel.1")
	n1.NS.MustIP(t, "route", "add", "10.5.77.0/24", "via", "10.5.77.0", "dev", "flannel.1", "onlink", "proto", "87")
	n1.NS.MustIP(t, "route", "del", "10.5.77.0/24")
	n1.Update(t, n2)
	n1.Set(t, n2)
	n1.Update(t, n2, n3)
	n1.Set(t, n2, n3)
	time.Sleep(300 * time.Millisecond)
	if got := repairs() - r1; got != 0 {
		t.Errorf("%d repairs after the backend's own changes, want 0", got)
	}
	kerneltest.ExpectSorted(t, "n1 at the end", state(), full)
}

// waitSorted waits up to a second for get's lines to equal want's in any order (a repair from kernel events),
// then checks them.
func waitSorted(t *testing.T, what string, get func() string, want string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for kerneltest.Norm(sortLines(get())) != kerneltest.Norm(sortLines(want)) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	kerneltest.ExpectSorted(t, what, get(), want)
}

func sortLines(s string) string {
	lines := strings.Split(kerneltest.Norm(s), "\n")
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

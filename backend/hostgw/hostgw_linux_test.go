package hostgw

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// TestHostGWTraffic runs three host-gw nodes on one L2 underlay and proves container-to-container traffic,
// then reconcile: peer removal, repair of hand-deleted routes, removal of a stale route of ours while a
// foreign route is kept, and Close leaving the routes in place.
func TestHostGWTraffic(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	for _, n := range nodes {
		be, err := New(n.Deps(t, &subnet.Config{Network: kerneltest.TopologyNetwork, BackendType: Type}))
		if err != nil {
			t.Fatal(err)
		}
		n.Be = be
		n.Up(t)
		if n.Local.BackendType != "host-gw" || n.Local.BackendData != nil || n.Local.MTU != 1500 {
			t.Fatalf("n%d: Local = %+v", n.I, n.Local)
		}
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	// A stale route of ours (from an "earlier run") and a foreign one in the overlay range.
	n1.NS.MustIP(t, "route", "add", "10.5.99.0/24", "via", "192.0.2.99", "dev", "eth0", "proto", "87")
	n1.NS.MustIP(t, "route", "add", "10.5.98.0/24", "via", "192.0.2.98", "dev", "eth0")
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)

	kerneltest.Expect(t, "n1 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
	kerneltest.Expect(t, "n1 foreign routes in the overlay", n1.NS.MustIP(t, "route", "show", "proto", "boot"), `
		10.5.98.0/24 via 192.0.2.98 dev eth0`)
	for _, n := range nodes {
		kerneltest.Expect(t, fmt.Sprintf("n%d ip_forward", n.I), n.NS.MustExec(t, "cat", "/proc/sys/net/ipv4/ip_forward"), "1")
	}

	// Set is idempotent.
	n1.Set(t, n2, n3)
	kerneltest.Expect(t, "n1 routes after a second Set", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)

	// A route deleted by hand comes back; a peer that left loses its route.
	n1.NS.MustIP(t, "route", "del", "10.5.2.0/24")
	n1.Set(t, n2)
	kerneltest.Expect(t, "n1 routes after n3 left", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	if _, err := n1.Ping(n3.CtrAddr); err == nil {
		t.Errorf("c1 -> c3 still works after n3 left")
	}
	if _, err := n1.Ping(n2.CtrAddr); err != nil {
		t.Errorf("c1 -> c2: %v", err)
	}

	// Close leaves the data path alone.
	for _, n := range nodes {
		if err := n.Be.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.Be.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	kerneltest.Expect(t, "n1 routes after Close", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	if _, err := n2.Ping(n1.CtrAddr); err != nil {
		t.Errorf("c2 -> c1 after Close: %v", err)
	}
	if err := n1.Be.Set(nil); err == nil {
		t.Errorf("Set after Close succeeded")
	}
}

// TestHostGWOwnsOnlyItsNetwork runs two host-gw backends on one node for two networks, as two weftd with
// different --etcd-prefix do: each Set keeps the other network's routes, though they carry the same route
// protocol on the same interface.
func TestHostGWOwnsOnlyItsNetwork(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 2)
	n1, n2 := nodes[0], nodes[1]
	netA, netB := kerneltest.TopologyNetwork, netip.MustParsePrefix("10.6.0.0/16")
	var bes []backend.Backend
	for _, network := range []netip.Prefix{netA, netB} {
		be, err := New(n1.Deps(t, &subnet.Config{Network: network, BackendType: Type}))
		if err != nil {
			t.Fatal(err)
		}
		n1.Be = be
		n1.Up(t)
		bes = append(bes, be)
		t.Cleanup(func() { be.Close() })
	}
	lease := func(sub string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(sub), Attrs: subnet.Attrs{PublicIP: n2.Ext.PublicIP, BackendType: Type}}
	}
	setA := &backend.Config{Network: subnet.Config{Network: netA}, Own: lease("10.5.1.0/24"), Peers: []subnet.Lease{lease("10.5.2.0/24")}}
	setB := &backend.Config{Network: subnet.Config{Network: netB}, Own: lease("10.6.1.0/24"), Peers: []subnet.Lease{lease("10.6.2.0/24")}}
	setA.Own.Attrs.PublicIP, setB.Own.Attrs.PublicIP = n1.Ext.PublicIP, n1.Ext.PublicIP
	for i, step := range []struct {
		be  backend.Backend
		cfg *backend.Config
	}{{bes[0], setA}, {bes[1], setB}, {bes[0], setA}, {bes[1], setB}} {
		if err := step.be.Set(step.cfg); err != nil {
			t.Fatalf("Set %d: %v", i, err)
		}
		if i == 0 {
			continue
		}
		kerneltest.Expect(t, fmt.Sprintf("n1 routes of ours after Set %d", i), n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.6.2.0/24 via 192.0.2.12 dev eth0`)
	}
}

// TestHostGWUpdate checks the change-only path (Set without Resync): routes follow peers joining and
// leaving, and traffic flows.
func TestHostGWUpdate(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	startHostGW(t, nodes)
	for _, n := range nodes {
		n.Set(t)
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		n.Update(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)
	n1.Update(t, n3)
	kerneltest.Expect(t, "n1 routes after n2 left", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
	n1.Update(t, n2, n3)
	kerneltest.Expect(t, "n1 routes after n2 came back", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)

	// backend.Updater: single leases alone.
	if err := n1.Change(t, nil, n3.Lease()); err != nil {
		t.Fatal(err)
	}
	kerneltest.Expect(t, "n1 routes after the change n3 left", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	moved := n2.Lease()
	moved.Subnet = netip.MustParsePrefix("10.5.9.0/24")
	hostile := n3.Lease()
	hostile.Subnet = netip.MustParsePrefix("10.5.1.0/24") // n1's own subnet
	if err := n1.Change(t, []subnet.Lease{n3.Lease(), moved, hostile}); err != nil {
		t.Fatal(err)
	}
	kerneltest.Expect(t, "n1 routes after the change n3 came, a lease moved and a hostile one came", n1.NS.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0
		10.5.9.0/24 via 192.0.2.12 dev eth0`)
	if out, err := n1.Ping(n3.CtrAddr); err != nil {
		t.Errorf("n1 → n3 after the change: %v\n%s", err, out)
	}
}

// TestHostGWRepairsDriftFromEvents: a route deleted behind the backend's back comes back within a second
// without a Set (kernel events), and routes of another network's backend on the node are not its concern.
func TestHostGWRepairsDriftFromEvents(t *testing.T) {
	_, nodes := backendtest.NewCluster(t, 3)
	startHostGW(t, nodes)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	n1.Set(t, n2, n3)
	want := `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`
	repairs := func() uint64 { return n1.Be.(backend.Stats).Stats()["drift_repairs_total"] }
	n1.NS.MustIP(t, "route", "add", "10.9.1.0/24", "via", "192.0.2.13", "dev", "eth0", "proto", "87") // another network's
	n1.NS.MustIP(t, "route", "del", "10.9.1.0/24")
	n1.NS.MustIP(t, "route", "del", "10.5.2.0/24")
	deadline := time.Now().Add(time.Second)
	for kerneltest.Norm(n1.NS.MustIP(t, "route", "show", "proto", "87")) != kerneltest.Norm(want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	kerneltest.Expect(t, "n1 routes after one was deleted by hand, without a Set", n1.NS.MustIP(t, "route", "show", "proto", "87"), want)
	if got := repairs(); got != 1 {
		t.Errorf("%d repairs, want 1", got)
	}
	n1.Update(t, n2)
	n1.Set(t, n2, n3)
	time.Sleep(300 * time.Millisecond)
	if got := repairs(); got != 1 {
		t.Errorf("%d repairs after the backend's own changes, want still 1", got)
	}
}

// startHostGW creates and brings up the host-gw backend on every node, closed when the test ends.
func startHostGW(t *testing.T, nodes []*backendtest.Node) {
	t.Helper()
	for _, n := range nodes {
		be, err := New(n.Deps(t, &subnet.Config{Network: kerneltest.TopologyNetwork, BackendType: Type}))
		if err != nil {
			t.Fatal(err)
		}
		n.Be = be
		t.Cleanup(func() { be.Close() })
		n.Up(t)
	}
}

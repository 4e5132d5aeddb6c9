package hostgw

import (
	"fmt"
	"testing"
)

// TestHostGWTraffic runs three host-gw nodes on one L2 underlay and proves container-to-container traffic,
// then reconcile: peer removal, repair of hand-deleted routes, removal of a stale route of ours while a
// foreign route is kept, and Close leaving the routes in place.
func TestHostGWTraffic(t *testing.T) {
	_, nodes := newCluster(t, 3)
	for _, n := range nodes {
		be, err := New(depsFor(t, n))
		if err != nil {
			t.Fatal(err)
		}
		n.be = be
		n.up(t)
		if n.local.BackendType != "host-gw" || n.local.BackendData != nil || n.local.MTU != 1500 {
			t.Fatalf("n%d: Local = %+v", n.i, n.local)
		}
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	// A stale route of ours (from an "earlier run") and a foreign one in the overlay range.
	n1.ns.MustIP(t, "route", "add", "10.5.99.0/24", "via", "192.0.2.99", "dev", "eth0", "proto", "87")
	n1.ns.MustIP(t, "route", "add", "10.5.98.0/24", "via", "192.0.2.98", "dev", "eth0")
	for _, n := range nodes {
		n.set(t, others(nodes, n)...)
	}
	mustPingAll(t, nodes)

	expect(t, "n1 routes of ours", n1.ns.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)
	expect(t, "n1 foreign routes in the overlay", n1.ns.MustIP(t, "route", "show", "proto", "boot"), `
		10.5.98.0/24 via 192.0.2.98 dev eth0`)
	for _, n := range nodes {
		expect(t, fmt.Sprintf("n%d ip_forward", n.i), n.ns.MustExec(t, "cat", "/proc/sys/net/ipv4/ip_forward"), "1")
	}

	// Set is idempotent.
	n1.set(t, n2, n3)
	expect(t, "n1 routes after a second Set", n1.ns.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0
		10.5.3.0/24 via 192.0.2.13 dev eth0`)

	// A route deleted by hand comes back; a peer that left loses its route.
	n1.ns.MustIP(t, "route", "del", "10.5.2.0/24")
	n1.set(t, n2)
	expect(t, "n1 routes after n3 left", n1.ns.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	if _, err := ping(n1, n3); err == nil {
		t.Errorf("c1 -> c3 still works after n3 left")
	}
	if _, err := ping(n1, n2); err != nil {
		t.Errorf("c1 -> c2: %v", err)
	}

	// Close leaves the data path alone.
	for _, n := range nodes {
		if err := n.be.Close(); err != nil {
			t.Fatal(err)
		}
		if err := n.be.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	expect(t, "n1 routes after Close", n1.ns.MustIP(t, "route", "show", "proto", "87"), `
		10.5.2.0/24 via 192.0.2.12 dev eth0`)
	if _, err := ping(n2, n1); err != nil {
		t.Errorf("c2 -> c1 after Close: %v", err)
	}
	if err := n1.be.Set(nil); err == nil {
		t.Errorf("Set after Close succeeded")
	}
}

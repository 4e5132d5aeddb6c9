package kernel_test

import (
	"errors"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// vtepRoute is a vxlan-style peer route (via the peer's VTEP address, onlink) through a nexthop object.
func vtepRoute(dst string, link int) kernel.Route {
	p := netip.MustParsePrefix(dst)
	return kernel.Route{Dst: p, Gw: p.Addr(), LinkIndex: link, OnLink: true, Nexthop: true}
}

// nexthopIDs returns the IDs of the nexthop objects with our protocol in ns.
func nexthopIDs(t *testing.T, ns *kerneltest.NS) []string {
	t.Helper()
	var ids []string
	for _, m := range regexp.MustCompile(`(?m)^id (\d+) .*proto 87`).FindAllStringSubmatch(ns.MustIP(t, "nexthop", "show"), -1) {
		ids = append(ids, m[1])
	}
	slices.Sort(ids)
	return ids
}

// TestNexthopRoutes checks in a namespace that routes with Nexthop go through nexthop objects of their own
// (one per route, our protocol), read back equal to what was wanted, and are added, replaced, adopted from a
// plain route and deleted together with their objects; that objects of ours no route uses (a route replaced
// by flanneld's RouteReplace on a node moving back) are swept by the next SyncRoutes, and foreign objects
// are not; and that a second SyncRoutes changes nothing.
func TestNexthopRoutes(t *testing.T) {
	// A flanneld-style plain route identical to a wanted one, and a foreign nexthop object nobody uses.
	ns := routeNS(t, []string{"10.5.3.0/24", "via", "10.5.3.0", "dev", "d0", "onlink"})
	ns.MustIP(t, "nexthop", "add", "id", "5", "via", "192.0.2.50", "dev", "d0", "proto", "static")
	owned := func(link int) func(kernel.Route) bool {
		return kernel.Owned(netip.MustParsePrefix("10.5.0.0/16"), link)
	}
	withD0(t, ns, func(h *kernel.Handle, l int) {
		if !h.Nexthops() {
			t.Fatal("Nexthops() = false on this kernel")
		}
		want := []kernel.Route{vtepRoute("10.5.1.0/24", l), vtepRoute("10.5.2.0/24", l), vtepRoute("10.5.3.0/24", l)}
		for pass := range 2 {
			if err := h.SyncRoutes(false, want, owned(l)); err != nil {
				t.Fatalf("SyncRoutes pass %d: %v", pass+1, err)
			}
		}
		got, err := h.OurRoutes(false)
		if err != nil {
			t.Fatal(err)
		}
		if put, del := kernel.DiffRoutes(got, want); len(put)+len(del) > 0 {
			t.Errorf("OurRoutes after sync differs from want: put %v, del %v", put, del)
		}
	})
	routes := ns.MustIP(t, "route", "show", "root", "10.5.0.0/16")
	if n := strings.Count(routes, "nhid"); n != 3 || !strings.Contains(routes, "10.5.3.0/24 nhid") {
		t.Errorf("want 3 routes through nexthop objects (10.5.3.0/24 adopted):\n%s", routes)
	}
	ids := nexthopIDs(t, ns)
	if len(ids) != 3 {
		t.Fatalf("want 3 nexthop objects of ours, have %v:\n%s", ids, ns.MustIP(t, "nexthop", "show"))
	}

	// Incremental: add one, change one's gateway (its object is updated in place), delete one.
	withD0(t, ns, func(h *kernel.Handle, l int) {
		if err := h.SyncRoutes(false, []kernel.Route{vtepRoute("10.5.1.0/24", l), vtepRoute("10.5.2.0/24", l)}, owned(l)); err != nil {
			t.Fatal(err)
		}
		had := []kernel.Route{vtepRoute("10.5.1.0/24", l), vtepRoute("10.5.2.0/24", l)}
		moved := vtepRoute("10.5.2.0/24", l)
		moved.Gw = netip.MustParseAddr("192.0.2.22")
		want := []kernel.Route{moved, vtepRoute("10.5.4.0/24", l)}
		if err := h.UpdateRoutes(had, want); err != nil {
			t.Fatal(err)
		}
	})
	kerneltest.Expect(t, "routes after update", maskNHID(ns.MustIP(t, "route", "show", "root", "10.5.0.0/16")), `
		10.5.2.0/24 nhid ID via 192.0.2.22 dev d0 proto 87 onlink
		10.5.4.0/24 nhid ID via 10.5.4.0 dev d0 proto 87 onlink`)
	if ids := nexthopIDs(t, ns); len(ids) != 2 {
		t.Errorf("after update want 2 nexthop objects of ours, have %v", ids)
	}

	// flanneld on a node moving back replaces a route with a plain one: the object is left unused, and
	// swept by the next sync (the route itself is adopted back).
	ns.MustIP(t, "route", "replace", "10.5.4.0/24", "via", "10.5.4.0", "dev", "d0", "onlink")
	before := nexthopIDs(t, ns)
	withD0(t, ns, func(h *kernel.Handle, l int) {
		if err := h.SyncRoutes(false, []kernel.Route{vtepRoute("10.5.4.0/24", l)}, owned(l)); err != nil {
			t.Fatal(err)
		}
	})
	after := nexthopIDs(t, ns)
	if len(after) != 1 || slices.Contains(before, after[0]) {
		t.Errorf("objects of ours before %v, after %v: want the unused ones swept and one new", before, after)
	}
	if !strings.Contains(ns.MustIP(t, "nexthop", "show"), "id 5 via 192.0.2.50") {
		t.Error("a foreign nexthop object was deleted")
	}

	// Plain routes wanted again (nexthop objects switched off): routes replaced, objects swept.
	withD0(t, ns, func(h *kernel.Handle, l int) {
		r := vtepRoute("10.5.4.0/24", l)
		r.Nexthop = false
		if err := h.SyncRoutes(false, []kernel.Route{r}, owned(l)); err != nil {
			t.Fatal(err)
		}
	})
	kerneltest.Expect(t, "plain routes", ns.MustIP(t, "route", "show", "root", "10.5.0.0/16"), `
		10.5.4.0/24 via 10.5.4.0 dev d0 proto 87 onlink`)
	if ids := nexthopIDs(t, ns); len(ids) != 0 {
		t.Errorf("objects of ours left with plain routes: %v", ids)
	}
}

// maskNHID replaces nexthop IDs in route dumps by "ID".
func maskNHID(s string) string { return regexp.MustCompile(`nhid \d+`).ReplaceAllString(s, "nhid ID") }

// TestNexthopRouteForeign checks that a route wanted through a nexthop object is not added over a foreign
// route that differs (ForeignRouteError, and no object left behind).
func TestNexthopRouteForeign(t *testing.T) {
	ns := routeNS(t, []string{"10.5.1.0/24", "via", "192.0.2.99", "proto", "static"})
	withD0(t, ns, func(h *kernel.Handle, l int) {
		err := h.UpdateRoutes(nil, []kernel.Route{vtepRoute("10.5.1.0/24", l)})
		var fe *kernel.ForeignRouteError
		if !errors.As(err, &fe) {
			t.Errorf("UpdateRoutes over a foreign route: %v, want a ForeignRouteError", err)
		}
	})
	if ids := nexthopIDs(t, ns); len(ids) != 0 {
		t.Errorf("objects left behind: %v", ids)
	}
}

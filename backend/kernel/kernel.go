// Package kernel is the one place that talks to the Linux kernel's networking (through netlink, /proc/sys
// and the iptables command) for the backends and the agent. It provides idempotent, declarative helpers:
// sync a set of routes tagged with Weft's route protocol, set a link's address, write a sysctl, keep a
// packet filter chain (masquerade, forward) equal to its plan.
//
// Ownership: every route Weft installs carries RouteProtocol, and route sync removes only routes with that
// protocol, so routes created by anyone else are never removed or changed; the one exception is a foreign
// unicast route identical to a wanted one (flanneld's, on a node weftd takes over), which is retagged. Among
// Weft's own routes a backend owns only those of its network or on its own devices (Owned), so several weftd
// instances for different networks (different --etcd-prefix) share a node without deleting each other's
// routes.
package kernel

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// RouteProtocol is the rtnetlink route protocol number (rtm_protocol) that tags every route Weft installs.
// 0x57 ('W') is not assigned in the kernel's rtnetlink.h nor in iproute2's rt_protos.
const RouteProtocol = 0x57

// Route is a unicast IPv4 or IPv6 route in the main table.
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr // zero for a device route
	LinkIndex int
	OnLink    bool
	// Nexthop: the gateway and device are a nexthop object of the route's own (IPv4 routes with a gateway,
	// where Handle.Nexthops is true), which makes adding one among thousands cheap; see nexthop_linux.go.
	Nexthop bool
}

// plain returns r without Nexthop: the route as a table dump of another program's shows it.
func (r Route) plain() Route {
	r.Nexthop = false
	return r
}

func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Dst.String())
	if r.Gw.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gw)
	}
	fmt.Fprintf(&b, " dev #%d", r.LinkIndex)
	if r.OnLink {
		b.WriteString(" onlink")
	}
	if r.Nexthop {
		b.WriteString(" (nexthop object)")
	}
	return b.String()
}

// ForeignRouteError means a route Weft wants to install has the destination of a route that another
// protocol (an operator, another daemon) installed, and differs from it; Weft leaves such a route alone.
// (A foreign unicast route identical to the wanted one, as flanneld leaves them, is adopted instead.)
type ForeignRouteError struct {
	Dst      netip.Prefix
	Protocol int
}

func (e *ForeignRouteError) Error() string {
	return fmt.Sprintf("route to %s exists with protocol %d (not ours); leaving it in place", e.Dst, e.Protocol)
}

// Owned returns the ownership scope of one backend's routes, for SyncRoutes: a route of ours belongs to the
// backend when its destination lies inside network (a valid prefix; zero: none) or it leaves through one of
// the backend's own devices (links, by index, such as its vxlan or tun device). Other routes with
// RouteProtocol belong to another weftd instance, for another network, and are left alone.
func Owned(network netip.Prefix, links ...int) func(Route) bool {
	network = network.Masked()
	return func(r Route) bool {
		if network.IsValid() && r.Dst.Bits() >= network.Bits() && network.Contains(r.Dst.Addr()) {
			return true
		}
		return slices.Contains(links, r.LinkIndex)
	}
}

// DiffRoutes compares the routes we have (all tagged ours) with those we want, keyed by destination. It
// returns the routes to add or replace (missing or different) and the routes to delete (no longer wanted).
// Both results are sorted by destination, so plans are deterministic.
func DiffRoutes(have, want []Route) (put, del []Route) {
	haveBy := map[netip.Prefix]Route{}
	for _, r := range have {
		haveBy[r.Dst] = r
	}
	wantBy := map[netip.Prefix]Route{}
	for _, r := range want {
		wantBy[r.Dst] = r
	}
	for dst, w := range wantBy {
		if h, ok := haveBy[dst]; !ok || h != w {
			put = append(put, w)
		}
	}
	for dst, h := range haveBy {
		if _, ok := wantBy[dst]; !ok {
			del = append(del, h)
		}
	}
	byDst := func(a, b Route) int { return comparePrefix(a.Dst, b.Dst) }
	slices.SortFunc(put, byDst)
	slices.SortFunc(del, byDst)
	return put, del
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Handle is a netlink handle bound to the network namespace that was current when NewHandle was called;
// all its calls act on that namespace whichever thread makes them. It is safe for use by one goroutine at a
// time.
type Handle struct {
	nl *netlink.Handle
	nh *nexthops // nil: no nexthop objects (see nexthop_linux.go)
	// gone, if set, is told of every deletion the handle makes, before it makes it (expect true), and again
	// (expect false) when the entry turned out to be gone already, so no event will come (Keeper).
	gone func(e Event, expect bool)
}

// NewHandle opens a netlink handle in the calling thread's network namespace.
func NewHandle() (*Handle, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("open netlink handle: %w", err)
	}
	return &Handle{nl: h, nh: openNexthops()}, nil
}

// Close releases the handle.
func (h *Handle) Close() {
	h.nl.Close()
	h.nh.close()
}

// NewForwardingHandle opens a handle for a backend that forwards overlay traffic over the link with index
// link, in the calling thread's network namespace: it checks the link is there (an error wrapping ErrNoLink
// if not) and enables IPv4 forwarding in the namespace. On error no handle is left open.
func NewForwardingHandle(link int) (*Handle, error) {
	h, err := NewHandle()
	if err != nil {
		return nil, err
	}
	if _, err := h.LinkName(link); err != nil {
		h.Close()
		return nil, err
	}
	if err := WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// EnableIPv6Forwarding turns on IPv6 forwarding (net.ipv6.conf.all.forwarding) in the calling thread's
// network namespace, for a backend that forwards IPv6 overlay traffic. Note that with forwarding on, the
// kernel ignores router advertisements on interfaces whose accept_ra is 1 (the default); a host that takes
// its IPv6 default route from them needs accept_ra 2.
func EnableIPv6Forwarding() error {
	return WriteSysctl("net.ipv6.conf.all.forwarding", "1")
}

// retry runs a netlink dump, retrying when the kernel reports the dump was interrupted by a change.
func retry[T any](f func() (T, error)) (T, error) {
	var v T
	var err error
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// OurRoutes lists the main-table unicast routes of the family of fam that carry RouteProtocol.
func (h *Handle) OurRoutes(v6 bool) ([]Route, error) {
	if !v6 && h.nh != nil {
		d, err := h.dumpRoutes4()
		return d.ours, err
	}
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	filter := &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol}
	nrs, err := retry(func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes with protocol %d: %w", RouteProtocol, err)
	}
	var out []Route
	for _, nr := range nrs {
		if nr.Dst == nil || nr.Type != unix.RTN_UNICAST {
			continue
		}
		r, ok := fromNetlink(nr)
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func fromNetlink(nr netlink.Route) (Route, bool) {
	dst, ok := prefixFromIPNet(nr.Dst)
	if !ok {
		return Route{}, false
	}
	r := Route{Dst: dst, LinkIndex: nr.LinkIndex, OnLink: nr.Flags&int(netlink.FLAG_ONLINK) != 0}
	if nr.Gw != nil {
		r.Gw, _ = netip.AddrFromSlice(nr.Gw)
		r.Gw = r.Gw.Unmap()
	}
	return r, true
}

func prefixFromIPNet(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func toNetlink(r Route) *netlink.Route {
	nr := &netlink.Route{
		Dst:       ipNet(r.Dst),
		LinkIndex: r.LinkIndex,
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
	}
	if r.Gw.IsValid() {
		nr.Gw = r.Gw.AsSlice()
		nr.Scope = netlink.SCOPE_UNIVERSE
	} else {
		nr.Scope = netlink.SCOPE_LINK
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// ipNet converts a prefix to the net.IPNet netlink wants.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ReplaceRoute adds r or replaces the route to the same destination, tagged with RouteProtocol.
func (h *Handle) ReplaceRoute(r Route) error {
	if r.Nexthop {
		if err := h.replaceNexthopRoute(r, false); err != nil {
			return fmt.Errorf("replace route %s: %w", r, err)
		}
		return nil
	}
	if err := h.nl.RouteReplace(toNetlink(r)); err != nil {
		return fmt.Errorf("replace route %s: %w", r, err)
	}
	return h.dropNexthop(r.Dst) // a plain route replaced one through an object: the object is unused now
}

// DeleteRoute deletes our route to r's destination (whatever its gateway, and whether or not through a
// nexthop object), and its nexthop object; a route already gone is not an error.
func (h *Handle) DeleteRoute(r Route) error {
	ev := Event{Kind: RouteGone, Route: r}
	h.expectGone(ev)
	del := toNetlink(r)
	del.Gw, del.LinkIndex, del.Flags = nil, 0, 0 // a gateway never matches a route through a nexthop object
	err := h.nl.RouteDel(del)
	if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENOENT) {
		h.notGone(ev)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("delete route %s: %w", r, err)
	}
	return h.dropNexthop(r.Dst)
}

// SyncRoutes makes the set of our routes of the family of the wanted routes' (v6) equal want, within scope:
// routes of ours outside scope (scope returns false) are left alone; nil scope means all of ours. It adds
// before it deletes and keeps going after an error, returning the first one.
func (h *Handle) SyncRoutes(v6 bool, want []Route, scope func(Route) bool) error {
	var dump *routeDump
	var have []Route
	if !v6 && h.nh != nil {
		d, err := h.dumpRoutes4()
		if err != nil {
			return err
		}
		dump, have = &d, d.ours
	} else {
		var err error
		if have, err = h.OurRoutes(v6); err != nil {
			return err
		}
	}
	if scope != nil {
		have = slicesFilter(have, scope)
	}
	if dump != nil {
		// What the kernel holds is the truth about which of our routes use which objects.
		clear(h.nh.byDst)
		clear(h.nh.dstOf)
		for _, r := range have {
			if id := dump.nhid[r.Dst]; id != 0 {
				h.nh.byDst[r.Dst], h.nh.dstOf[id] = id, r.Dst
			}
		}
	}
	put, del := DiffRoutes(have, want)
	var first error
	if len(put) > 0 {
		foreign, err := h.foreignRoutes(v6)
		if err != nil {
			return err
		}
		for _, r := range put {
			if f, ok := foreign[r.Dst]; ok && !(f.unicast && f.route == r.plain()) {
				// Replacing would take over a route somebody else made: leave it and say so.
				if first == nil {
					first = &ForeignRouteError{Dst: r.Dst, Protocol: f.protocol}
				}
				continue
			}
			// A foreign unicast route identical to the wanted one (what flanneld leaves behind, with the
			// default protocol, when weftd replaces it on a node) is adopted: retagging it changes no path.
			if err := h.ReplaceRoute(r); err != nil && first == nil {
				first = err
			}
		}
	}
	for _, r := range del {
		if err := h.DeleteRoute(r); err != nil && first == nil {
			first = err
		}
	}
	if dump != nil {
		if err := h.sweepNexthops(dump.used); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// UpdateRoutes applies the difference between had, the routes of ours applied last (by SyncRoutes or
// UpdateRoutes), and want, without listing the routing table: its cost follows the size of the change, not
// of the table. A wanted route to a destination in had is replaced; one to a new destination is added only
// if no route to it exists, and a route that exists and is not ours is left alone, as SyncRoutes does
// (ForeignRouteError). Routes in had and not in want are deleted. Call SyncRoutes at start and periodically
// to repair what changed behind Weft's back. It keeps going after an error, returning the first one.
func (h *Handle) UpdateRoutes(had, want []Route) error {
	put, del := DiffRoutes(had, want)
	ours := make(map[netip.Prefix]bool, len(had))
	for _, r := range had {
		ours[r.Dst] = true
	}
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	for _, r := range put {
		if ours[r.Dst] {
			keep(h.ReplaceRoute(r))
			continue
		}
		keep(h.addRoute(r))
	}
	for _, r := range del {
		keep(h.DeleteRoute(r))
	}
	return first
}

// addRoute adds r if no route to its destination exists; if one does, it replaces it only if it is ours.
func (h *Handle) addRoute(r Route) error {
	var err error
	if r.Nexthop {
		err = h.replaceNexthopRoute(r, true)
	} else {
		err = h.nl.RouteAdd(toNetlink(r))
	}
	if err == nil || !errors.Is(err, unix.EEXIST) {
		if err != nil {
			return fmt.Errorf("add route %s: %w", r, err)
		}
		return nil
	}
	foreign, err := h.foreignRoutes(r.Dst.Addr().Is6())
	if err != nil {
		return err
	}
	if f, ok := foreign[r.Dst]; ok && !(f.unicast && f.route == r.plain()) {
		return &ForeignRouteError{Dst: r.Dst, Protocol: f.protocol}
	}
	return h.ReplaceRoute(r) // ours, or a foreign route identical to r (adopted, as SyncRoutes does)
}

// foreignRoute is a main-table route that is not ours.
type foreignRoute struct {
	protocol int
	unicast  bool
	route    Route // valid when unicast
}

// foreignRoutes returns the main-table destinations held by routes that are not ours (another protocol, or
// a type other than unicast, such as an operator's blackhole or unreachable route).
func (h *Handle) foreignRoutes(v6 bool) (map[netip.Prefix]foreignRoute, error) {
	family := netlink.FAMILY_V4
	if v6 {
		family = netlink.FAMILY_V6
	}
	nrs, err := retry(func() ([]netlink.Route, error) {
		return h.nl.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list main-table routes: %w", err)
	}
	out := map[netip.Prefix]foreignRoute{}
	for _, nr := range nrs {
		if nr.Dst == nil || (nr.Protocol == RouteProtocol && nr.Type == unix.RTN_UNICAST) {
			continue
		}
		r, ok := fromNetlink(nr)
		if !ok {
			continue
		}
		// A multipath route reads as a single path here: never treat it as identical.
		unicast := nr.Type == unix.RTN_UNICAST && len(nr.MultiPath) == 0
		out[r.Dst] = foreignRoute{protocol: int(nr.Protocol), unicast: unicast, route: r}
	}
	return out, nil
}

func slicesFilter[T any](s []T, keep func(T) bool) []T {
	var out []T
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// setAddrs makes the link's addresses of the family of want exactly want (want must be non-empty; all of
// one family).
func (h *Handle) setAddrs(link netlink.Link, want ...netip.Prefix) error {
	family := netlink.FAMILY_V4
	if want[0].Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	have, err := h.nl.AddrList(link, family)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
	}
	for _, a := range have {
		p, ok := prefixFromIPNet(a.IPNet)
		if ok && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if ok && wanted[p] {
			delete(wanted, p)
			continue
		}
		if err := h.nl.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete address %s from %s: %w", a.IPNet, link.Attrs().Name, err)
		}
	}
	for p := range wanted {
		if err := h.nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(p)}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add address %s to %s: %w", p, link.Attrs().Name, err)
		}
	}
	return nil
}

// WriteSysctl writes value to /proc/sys/<name>, where name uses dots or slashes ("net.ipv4.ip_forward").
// It acts on the network namespace of the calling thread. Writing the value it already has is a no-op.
func WriteSysctl(name, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
	if cur, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

package kernel

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Routes through nexthop objects.
//
// The kernel compares a new IPv4 route's nexthop with every existing one that hashes alike, and the hash
// covers the device, protocol and metric but not the gateway: adding one of thousands of peer routes on one
// device costs time in proportion to their number (about 250 µs with 4,000). A route that names a nexthop
// object (RTA_NH_ID) skips that search. A Route with Nexthop set gets a nexthop object of its own, with
// RouteProtocol and an ID derived from its destination; the route and its object are added, replaced and
// deleted together, and an object of ours that no route uses (left by a route somebody deleted, or
// replaced, as flanneld's RouteReplace does on a node moving back to it) is deleted by the next SyncRoutes.
//
// Only IPv4 routes with a gateway take objects (IPv6 route insertion has no such search), and only where the
// kernel has them and dumps such routes with their gateway (net.ipv4.nexthop_compat_mode 1, the default), so
// that tools and flanneld reading the table see the same gateway and device as before.

// rtaNHID is RTA_NH_ID (linux/rtnetlink.h): the nexthop object a route uses.
const rtaNHID = 30

// nexthop ID space used for ours: above the small numbers people pick by hand.
const (
	nhIDBase   = 1 << 24
	nhIDSpan   = 1<<31 - nhIDBase
	nhIDProbes = 64
)

// nexthops is a handle's own nexthop objects: which destination's route uses which ID. It is rebuilt from
// the kernel by SyncRoutes and kept by the handle's own changes in between.
type nexthops struct {
	sock  *nl.SocketHandle
	byDst map[netip.Prefix]uint32
	dstOf map[uint32]netip.Prefix
}

// openNexthops returns the nexthop state for a handle in the calling thread's namespace, or nil when
// routes cannot go through nexthop objects there.
func openNexthops() *nexthops {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/nexthop_compat_mode"); err != nil || strings.TrimSpace(string(b)) != "1" {
		return nil
	}
	s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil
	}
	s.SetExtAck(true)
	n := &nexthops{sock: &nl.SocketHandle{Socket: s}, byDst: map[netip.Prefix]uint32{}, dstOf: map[uint32]netip.Prefix{}}
	// Probe with one object that is never ours (not a dump of them all, on every start): a kernel with
	// nexthop objects answers ENOENT, one without them (before 5.3) refuses the request.
	req := n.request(unix.RTM_GETNEXTHOP, unix.NLM_F_ACK)
	req.AddData(&nhmsg{})
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(nhIDBase-1)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		s.Close()
		return nil
	}
	return n
}

func (n *nexthops) close() {
	if n != nil {
		n.sock.Close()
	}
}

func (n *nexthops) request(typ uint16, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(int(typ), flags)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: n.sock}
	return req
}

// newFlags are the flags of a request that adds (excl: only if absent) or adds or replaces.
func newFlags(excl bool) int {
	if excl {
		return unix.NLM_F_CREATE | unix.NLM_F_ACK | unix.NLM_F_EXCL
	}
	return unix.NLM_F_CREATE | unix.NLM_F_ACK | unix.NLM_F_REPLACE
}

// nhmsg is struct nhmsg.
type nhmsg struct{ unix.Nhmsg }

func (m *nhmsg) Len() int { return unix.SizeofNhmsg }
func (m *nhmsg) Serialize() []byte {
	b := make([]byte, unix.SizeofNhmsg)
	b[0], b[1], b[2] = m.Family, m.Scope, m.Protocol
	native.PutUint32(b[4:], m.Flags)
	return b
}

// set creates (excl) or creates-or-replaces the nexthop object id for r's gateway and device.
func (n *nexthops) set(id uint32, r Route, excl bool) error {
	req := n.request(unix.RTM_NEWNEXTHOP, newFlags(excl))
	m := &nhmsg{unix.Nhmsg{Family: unix.AF_INET, Protocol: RouteProtocol}}
	if r.OnLink {
		m.Flags = unix.RTNH_F_ONLINK
	}
	req.AddData(m)
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	req.AddData(nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(uint32(r.LinkIndex))))
	req.AddData(nl.NewRtAttr(unix.NHA_GATEWAY, r.Gw.AsSlice()))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// del deletes the nexthop object id; one already gone is not an error.
func (n *nexthops) del(id uint32) error {
	req := n.request(unix.RTM_DELNEXTHOP, unix.NLM_F_ACK)
	req.AddData(&nhmsg{})
	req.AddData(nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(id)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}

// nexthopInfo is what SyncRoutes needs of a nexthop object.
type nexthopInfo struct {
	id       uint32
	family   uint8
	protocol uint8
}

// list dumps the namespace's nexthop objects.
func (n *nexthops) list() ([]nexthopInfo, error) {
	req := n.request(unix.RTM_GETNEXTHOP, unix.NLM_F_DUMP)
	req.AddData(&nhmsg{})
	var out []nexthopInfo
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWNEXTHOP, func(msg []byte) bool {
		if len(msg) < unix.SizeofNhmsg {
			return true
		}
		attrs, err := nl.ParseRouteAttr(msg[unix.SizeofNhmsg:])
		if err != nil {
			return true
		}
		for _, a := range attrs {
			if a.Attr.Type == unix.NHA_ID && len(a.Value) == 4 {
				out = append(out, nexthopInfo{id: native.Uint32(a.Value), family: msg[0], protocol: msg[2]})
			}
		}
		return true
	})
	return out, err
}

// route adds (excl) or creates-or-replaces the main-table route to dst through nexthop object id.
func (n *nexthops) route(dst netip.Prefix, id uint32, excl bool) error {
	req := n.request(unix.RTM_NEWROUTE, newFlags(excl))
	m := nl.NewRtMsg() // main table, unicast, universe scope, boot protocol: set ours below
	m.Family = unix.AF_INET
	m.Dst_len = uint8(dst.Bits())
	m.Protocol = RouteProtocol
	req.AddData(m)
	req.AddData(nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()))
	req.AddData(nl.NewRtAttr(rtaNHID, nl.Uint32Attr(id)))
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// routeDump is one dump of the IPv4 routing tables: our main-table unicast routes (with their nexthop
// objects, 0 for none) and every nexthop object some route of any table uses.
type routeDump struct {
	ours []Route
	nhid map[netip.Prefix]uint32
	used map[uint32]bool
}

// dumpRoutes4 dumps the IPv4 routes.
func (n *nexthops) dumpRoutes4() (routeDump, error) {
	d := routeDump{nhid: map[netip.Prefix]uint32{}, used: map[uint32]bool{}}
	req := n.request(unix.RTM_GETROUTE, unix.NLM_F_DUMP)
	req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET}})
	err := req.ExecuteIter(unix.NETLINK_ROUTE, unix.RTM_NEWROUTE, func(msg []byte) bool {
		r, id, ours := decodeOurRoute(msg)
		if ours {
			d.ours = append(d.ours, r)
			if id != 0 {
				d.nhid[r.Dst] = id
			}
		} else {
			id = routeNHID(msg) // a route of another program, or another table's, may use one of ours too
		}
		if id != 0 {
			d.used[id] = true
		}
		return true
	})
	return d, err
}

// dumpRoutes4 dumps the IPv4 routes through the nexthop socket, again if a change interrupted the dump.
func (h *Handle) dumpRoutes4() (routeDump, error) {
	d, err := retry(h.nh.dumpRoutes4)
	if err != nil {
		return routeDump{}, fmt.Errorf("list IPv4 routes: %w", err)
	}
	return d, nil
}

// routeNHID returns the nexthop object of a route message, 0 for none.
func routeNHID(msg []byte) uint32 {
	if len(msg) < unix.SizeofRtMsg {
		return 0
	}
	attrs, err := nl.ParseRouteAttr(msg[unix.SizeofRtMsg:])
	if err != nil {
		return 0
	}
	for _, a := range attrs {
		if a.Attr.Type == rtaNHID && len(a.Value) == 4 {
			return native.Uint32(a.Value)
		}
	}
	return 0
}

// firstID is where the search for a free ID for dst's object starts: a hash of dst, so a restarted weftd
// tends to the same IDs.
func firstID(dst netip.Prefix) uint32 {
	f := fnv.New32a()
	b, _ := dst.MarshalBinary()
	f.Write(b)
	return nhIDBase + f.Sum32()%nhIDSpan
}

func nextID(id uint32) uint32 {
	if id++; id >= nhIDBase+nhIDSpan {
		id = nhIDBase
	}
	return id
}

// create makes a nexthop object for r under a free ID and records it.
func (n *nexthops) create(r Route) (uint32, error) {
	id := firstID(r.Dst)
	for range nhIDProbes {
		if _, taken := n.dstOf[id]; !taken {
			err := n.set(id, r, true)
			if err == nil {
				n.byDst[r.Dst], n.dstOf[id] = id, r.Dst
				return id, nil
			}
			if !errors.Is(err, unix.EEXIST) {
				return 0, err
			}
		}
		id = nextID(id)
	}
	return 0, fmt.Errorf("no free nexthop ID after %d tries from %d", nhIDProbes, firstID(r.Dst))
}

// forget drops dst's object from the records.
func (n *nexthops) forget(dst netip.Prefix) {
	if id, ok := n.byDst[dst]; ok {
		delete(n.byDst, dst)
		delete(n.dstOf, id)
	}
}

// Nexthops reports whether routes with Route.Nexthop can be installed through this handle.
func (h *Handle) Nexthops() bool { return h.nh != nil }

// replaceNexthopRoute installs r (Nexthop set) through its nexthop object: it creates the object or updates
// it in place, then adds (excl) or replaces the route naming it.
func (h *Handle) replaceNexthopRoute(r Route, excl bool) error {
	n := h.nh
	if n == nil {
		return fmt.Errorf("route %s: the kernel offers no nexthop objects here", r)
	}
	if !r.Dst.Addr().Is4() || !r.Gw.Is4() {
		return fmt.Errorf("route %s: a nexthop object needs an IPv4 route with an IPv4 gateway", r)
	}
	id, had := n.byDst[r.Dst]
	var err error
	if had {
		err = n.set(id, r, false)
	} else {
		id, err = n.create(r)
	}
	if err != nil {
		return fmt.Errorf("nexthop object for route %s: %w", r, err)
	}
	err = n.route(r.Dst, id, excl)
	if errors.Is(err, unix.EINVAL) {
		// The object went between the two requests (a sweep by another weftd): once more.
		if err = n.set(id, r, false); err == nil {
			err = n.route(r.Dst, id, excl)
		}
	}
	if err != nil && !had {
		h.deleteNexthop(id)
		n.forget(r.Dst)
	}
	return err
}

// deleteNexthop deletes one of our nexthop objects, telling the keeper first.
func (h *Handle) deleteNexthop(id uint32) error {
	ev := Event{Kind: NexthopGone, ID: id}
	h.expectGone(ev)
	err := h.nh.del(id)
	if err != nil {
		h.notGone(ev)
		return fmt.Errorf("delete nexthop object %d: %w", id, err)
	}
	return nil
}

// dropNexthop deletes the nexthop object the route to dst used, if this handle holds one.
func (h *Handle) dropNexthop(dst netip.Prefix) error {
	if h.nh == nil {
		return nil
	}
	id, ok := h.nh.byDst[dst]
	if !ok {
		return nil
	}
	h.nh.forget(dst)
	return h.deleteNexthop(id)
}

// sweepNexthops deletes our nexthop objects (RouteProtocol, IPv4) that no route uses and that this handle
// does not hold; used lists those routes use.
func (h *Handle) sweepNexthops(used map[uint32]bool) error {
	all, err := h.nh.list()
	if err != nil {
		return fmt.Errorf("list nexthop objects: %w", err)
	}
	var first error
	for _, nh := range all {
		if nh.protocol != RouteProtocol || nh.family != unix.AF_INET || used[nh.id] {
			continue
		}
		if _, ours := h.nh.dstOf[nh.id]; ours {
			continue
		}
		if err := h.deleteNexthop(nh.id); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ownsNexthop reports whether id is one of this handle's nexthop objects.
func (h *Handle) ownsNexthop(id uint32) bool {
	if h.nh == nil {
		return false
	}
	_, ok := h.nh.dstOf[id]
	return ok
}

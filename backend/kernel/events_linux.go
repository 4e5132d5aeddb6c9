package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// eventBuffer is the receive buffer of an event socket: room for the burst of a start with thousands of peers
// (each route, neighbour and FDB entry added is announced, and the reader skips them one by one).
const eventBuffer = 16 << 20

// eventSocket receives the route, neighbour and link events of the namespace it was opened in. It reads into
// one buffer of its own, so a burst of events costs no allocation per message.
type eventSocket struct {
	f  *os.File // closing it makes a blocked read return
	rc syscall.RawConn
}

// openEvents subscribes to route, nexthop object, neighbour (and FDB) and link events in the calling
// thread's namespace.
func openEvents() (*eventSocket, error) {
	f, rc, err := subscribe("netlink-events", []uint32{unix.RTNLGRP_LINK, unix.RTNLGRP_NEIGH, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE, unix.RTNLGRP_NEXTHOP},
		eventBuffer, dropAdditions)
	if err != nil {
		return nil, fmt.Errorf("subscribe to kernel events: %w", err)
	}
	return &eventSocket{f: f, rc: rc}, nil
}

// subscribe opens a non-blocking rtnetlink socket in the calling thread's namespace, joined to groups,
// with a receive buffer of rcvbuf bytes (0: the default) and the socket filter that filter attaches.
func subscribe(name string, groups []uint32, rcvbuf int, filter func(fd int) error) (*os.File, syscall.RawConn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, fmt.Errorf("netlink socket: %w", err)
	}
	var mask uint32
	for _, g := range groups {
		mask |= 1 << (g - 1)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: mask}); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("bind: %w", err)
	}
	if rcvbuf > 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("set receive buffer: %w", err)
		}
	}
	if err := filter(fd); err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, rc, nil
}

// attachFilter attaches a classic BPF socket filter.
func attachFilter(fd int, prog []unix.SockFilter) error {
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attach socket filter: %w", err)
	}
	return nil
}

// bpfMsgType is a netlink message type as a BPF load of nlmsg_type sees it: loads are big-endian,
// nlmsg_type is in the host's order.
func bpfMsgType(t uint16) uint32 {
	var b [2]byte
	native.PutUint16(b[:], t)
	return uint32(b[0])<<8 | uint32(b[1])
}

// dropAdditions attaches a socket filter that drops route, nexthop object and neighbour additions in the
// kernel: a start at 4,000 peers announces 16,000 of them, and reading them (one wake-up and one read each)
// slowed the start by a third.
func dropAdditions(fd int) error {
	return attachFilter(fd, []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 4}, // nlmsg_type
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 3, K: bpfMsgType(unix.RTM_NEWROUTE)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 2, K: bpfMsgType(unix.RTM_NEWNEXTHOP)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: bpfMsgType(unix.RTM_NEWNEIGH)},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff}, // keep
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},          // drop
	})
}

// close makes a blocked read return.
func (e *eventSocket) close() { e.f.Close() }

// read delivers deletions and link-down events to fn until the socket is closed, and a Missed event when
// the kernel dropped events. Additions are skipped by their header, before anything is decoded.
func (e *eventSocket) read(fn func(Event)) {
	buf := make([]byte, 64<<10)
	for {
		var n int
		var rerr error
		err := e.rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return // closed
		case errors.Is(rerr, unix.ENOBUFS):
			fn(Event{Kind: Missed})
			continue
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return
		}
		for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(native.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				break
			}
			if ev, ok := decodeEvent(native.Uint16(b[4:6]), b[unix.NLMSG_HDRLEN:l]); ok {
				fn(ev)
			}
			b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
		}
	}
}

func decodeEvent(typ uint16, data []byte) (Event, bool) {
	switch typ {
	case unix.RTM_DELROUTE:
		r, _, ok := decodeOurRoute(data)
		return Event{Kind: RouteGone, Route: r}, ok
	case unix.RTM_DELNEXTHOP:
		return decodeNexthopGone(data)
	case unix.RTM_DELNEIGH:
		n, err := netlink.NeighDeserialize(data)
		if err != nil {
			return Event{}, false
		}
		if n.Family == unix.AF_BRIDGE {
			return Event{Kind: FDBGone, Link: n.LinkIndex, MAC: n.HardwareAddr.String()}, true
		}
		if n.Family != unix.AF_INET && n.Family != unix.AF_INET6 {
			return Event{}, false
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		return Event{Kind: NeighGone, Link: n.LinkIndex, IP: ip.Unmap()}, ok
	case unix.RTM_DELLINK:
		if len(data) < unix.SizeofIfInfomsg {
			return Event{}, false
		}
		return Event{Kind: LinkDown, Link: int(nl.DeserializeIfInfomsg(data).Index)}, true
	case unix.RTM_NEWLINK:
		if len(data) < unix.SizeofIfInfomsg {
			return Event{}, false
		}
		m := nl.DeserializeIfInfomsg(data)
		if m.Flags&unix.IFF_UP != 0 {
			return Event{}, false
		}
		return Event{Kind: LinkDown, Link: int(m.Index)}, true
	}
	return Event{}, false
}

// decodeNexthopGone decodes the deletion of a nexthop object with RouteProtocol.
func decodeNexthopGone(data []byte) (Event, bool) {
	if len(data) < unix.SizeofNhmsg || data[2] != RouteProtocol {
		return Event{}, false
	}
	attrs, err := nl.ParseRouteAttr(data[unix.SizeofNhmsg:])
	if err != nil {
		return Event{}, false
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.NHA_ID && len(a.Value) == 4 {
			return Event{Kind: NexthopGone, ID: native.Uint32(a.Value)}, true
		}
	}
	return Event{}, false
}

// decodeOurRoute decodes a route message about a main-table route with RouteProtocol (else ok is false),
// and the nexthop object it uses (0: none).
func decodeOurRoute(data []byte) (r Route, nhid uint32, ok bool) {
	if len(data) < unix.SizeofRtMsg {
		return Route{}, 0, false
	}
	m := nl.DeserializeRtMsg(data)
	if m.Protocol != RouteProtocol || m.Type != unix.RTN_UNICAST {
		return Route{}, 0, false
	}
	table := uint32(m.Table)
	attrs, err := nl.ParseRouteAttr(data[unix.SizeofRtMsg:])
	if err != nil {
		return Route{}, 0, false
	}
	var dst netip.Addr
	for _, a := range attrs {
		switch a.Attr.Type {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_GATEWAY:
			r.Gw, _ = netip.AddrFromSlice(a.Value)
		case unix.RTA_OIF:
			if len(a.Value) == 4 {
				r.LinkIndex = int(native.Uint32(a.Value))
			}
		case unix.RTA_TABLE:
			if len(a.Value) == 4 {
				table = native.Uint32(a.Value)
			}
		case rtaNHID:
			if len(a.Value) == 4 {
				nhid = native.Uint32(a.Value)
			}
		}
	}
	if !dst.IsValid() || table != unix.RT_TABLE_MAIN {
		return Route{}, 0, false
	}
	r.Dst = netip.PrefixFrom(dst.Unmap(), int(m.Dst_len))
	r.Gw = r.Gw.Unmap()
	r.OnLink = m.Flags&unix.RTNH_F_ONLINK != 0
	r.Nexthop = nhid != 0
	return r, nhid, true
}

var native = nl.NativeEndian()

// expectGone records a deletion this handle is about to make, so the keeper following the handle's events
// does not take it for drift.
func (h *Handle) expectGone(e Event) {
	if h.gone != nil {
		h.gone(e, true)
	}
}

// notGone withdraws expectGone's record for an entry that was gone already.
func (h *Handle) notGone(e Event) {
	if h.gone != nil {
		h.gone(e, false)
	}
}

// setGone installs the handle's deletion hook (see Handle.gone).
func (h *Handle) setGone(fn func(Event, bool)) { h.gone = fn }

// linkUp reports whether the link with the index exists and is administratively up.
func (h *Handle) linkUp(index int) bool {
	l, err := h.linkByIndex(index)
	return err == nil && l.Attrs().Flags&net.FlagUp != 0
}

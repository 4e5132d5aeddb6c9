package kernel

import (
	"fmt"
	"net/netip"
)

// EventKind says what a kernel Event reports.
type EventKind uint8

const (
	// RouteGone: a route with RouteProtocol was deleted (Event.Route).
	RouteGone EventKind = iota + 1
	// NeighGone: a neighbour entry was deleted (Event.Link, Event.IP).
	NeighGone
	// FDBGone: a forwarding-database entry was deleted (Event.Link, Event.MAC).
	FDBGone
	// LinkDown: a link was deleted or set administratively down (Event.Link).
	LinkDown
	// NexthopGone: a nexthop object with RouteProtocol was deleted (Event.ID); the kernel deletes the IPv4
	// routes that used it without a route event of their own.
	NexthopGone
	// Missed: events were dropped (the socket's buffer overflowed); any state may have changed.
	Missed
)

// Event is one change of kernel state that can undo what a backend installed: something of ours gone, or
// events lost. Additions are not reported: the periodic comparison with the kernel repairs an entry that
// somebody replaced.
type Event struct {
	Kind  EventKind
	Route Route      // RouteGone
	Link  int        // NeighGone, FDBGone, LinkDown: the link's index
	IP    netip.Addr // NeighGone
	MAC   string     // FDBGone, in net.HardwareAddr's String form
	ID    uint32     // NexthopGone
}

func (e Event) String() string {
	switch e.Kind {
	case RouteGone:
		return "route " + e.Route.String() + " deleted"
	case NeighGone:
		return fmt.Sprintf("neighbour %s on link #%d deleted", e.IP, e.Link)
	case FDBGone:
		return fmt.Sprintf("fdb entry %s on link #%d deleted", e.MAC, e.Link)
	case LinkDown:
		return fmt.Sprintf("link #%d deleted or down", e.Link)
	case NexthopGone:
		return fmt.Sprintf("nexthop object %d deleted", e.ID)
	case Missed:
		return "kernel events missed"
	}
	return "unknown kernel event"
}

// eventKey identifies the entry an Event is about, to match a deletion Weft made itself.
type eventKey struct {
	kind EventKind
	dst  netip.Prefix
	link int
	ip   netip.Addr
	mac  string
	id   uint32
}

func (e Event) key() eventKey {
	switch e.Kind {
	case RouteGone:
		return eventKey{kind: e.Kind, dst: e.Route.Dst}
	case NeighGone:
		return eventKey{kind: e.Kind, link: e.Link, ip: e.IP}
	case FDBGone:
		return eventKey{kind: e.Kind, link: e.Link, mac: e.MAC}
	case NexthopGone:
		return eventKey{kind: e.Kind, id: e.ID}
	}
	return eventKey{kind: e.Kind, link: e.Link}
}

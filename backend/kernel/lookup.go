package kernel

import "net/netip"

// Lookup is where the kernel sends traffic: the outgoing link and the preferred source address (invalid if
// the route names none).
type Lookup struct {
	LinkIndex int
	Src       netip.Addr
}

// RouteEvent is one route added or deleted in the main or any table, as the kernel announces it.
type RouteEvent struct {
	Add  bool         // added (else deleted)
	Dst  netip.Prefix // invalid for a default route
	Ours bool         // carries RouteProtocol
}

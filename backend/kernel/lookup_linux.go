package kernel

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Lookup is where the kernel sends traffic: the outgoing link and the preferred source address (invalid if
// the route names none).
type Lookup struct {
	LinkIndex int
	Src       netip.Addr
}

func lookupOf(r netlink.Route) Lookup {
	l := Lookup{LinkIndex: r.LinkIndex}
	if src, ok := netip.AddrFromSlice(r.Src); ok {
		l.Src = src.Unmap()
	}
	return l
}

// LookupRoute asks the kernel, in the calling thread's network namespace, how it reaches dst (`ip route get`).
func LookupRoute(dst netip.Addr) (Lookup, error) {
	rs, err := netlink.RouteGet(dst.AsSlice())
	if err != nil {
		return Lookup{}, fmt.Errorf("look up route to %s: %w", dst, err)
	}
	if len(rs) == 0 {
		return Lookup{}, fmt.Errorf("look up route to %s: no route", dst)
	}
	return lookupOf(rs[0]), nil
}

// DefaultRoutes4 lists the IPv4 default routes of the main table in the calling thread's network namespace.
func DefaultRoutes4() ([]Lookup, error) {
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes to find the default route: %w", err)
	}
	var out []Lookup
	for _, r := range rs {
		if r.Dst == nil || r.Dst.String() == "0.0.0.0/0" {
			out = append(out, lookupOf(r))
		}
	}
	return out, nil
}

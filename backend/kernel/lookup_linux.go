package kernel

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
func DefaultRoutes4() ([]Lookup, error) { return defaultRoutes(netlink.FAMILY_V4) }

// DefaultRoutes6 lists the IPv6 default routes of the main table in the calling thread's network namespace.
func DefaultRoutes6() ([]Lookup, error) { return defaultRoutes(netlink.FAMILY_V6) }

func defaultRoutes(family int) ([]Lookup, error) {
	rs, err := netlink.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes to find the default route: %w", err)
	}
	var out []Lookup
	for _, r := range rs {
		if ones, _ := r.Dst.Mask.Size(); r.Dst == nil || ones == 0 {
			out = append(out, lookupOf(r))
		}
	}
	return out, nil
}

// SubscribeRoutes delivers the calling thread's namespace's route events on the returned channel (buffered
// with room for size events) until done is closed. Events that find the buffer full are dropped by netlink.
func SubscribeRoutes(size int, done <-chan struct{}) (<-chan RouteEvent, error) {
	raw := make(chan netlink.RouteUpdate, size)
	if err := netlink.RouteSubscribe(raw, done); err != nil {
		return nil, fmt.Errorf("subscribe to route events: %w", err)
	}
	out := make(chan RouteEvent, size)
	go func() { // ends when netlink closes raw, after done is closed
		defer close(out)
		for u := range raw {
			e := RouteEvent{Add: u.Type == unix.RTM_NEWROUTE, Ours: u.Protocol == RouteProtocol}
			if u.Dst != nil {
				a, _ := netip.AddrFromSlice(u.Dst.IP)
				bits, _ := u.Dst.Mask.Size()
				e.Dst = netip.PrefixFrom(a.Unmap(), bits)
			}
			select {
			case out <- e:
			case <-done:
				return
			}
		}
	}()
	return out, nil
}

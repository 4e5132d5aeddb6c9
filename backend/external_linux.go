package backend

import (
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/backend/kernel"
)

// SelectExternal chooses the external interface in the calling thread's network namespace.
func SelectExternal(s IfaceSelector) (External, error) {
	if s.PublicIP.IsValid() && !s.PublicIP.Is4() {
		return External{}, fmt.Errorf("--public-ip %s: must be an IPv4 address", s.PublicIP)
	}
	ifaces, err := listIfaces()
	if err != nil {
		return External{}, err
	}
	var i Iface
	var addr netip.Addr
	switch {
	case len(s.Ifaces) > 0:
		i, addr, err = selectByName(ifaces, s.Ifaces)
	case len(s.IfaceRegexes) > 0:
		i, addr, err = selectByRegex(ifaces, s.IfaceRegexes)
	case s.CanReach.IsValid():
		i, addr, err = routeTo(ifaces, s.CanReach, "--iface-can-reach "+s.CanReach.String())
	default:
		i, addr, err = defaultRouteIface(ifaces)
	}
	if err != nil {
		return External{}, err
	}
	return external(i, addr, s.PublicIP), nil
}

func listIfaces() ([]Iface, error) {
	nis, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	var out []Iface
	for _, ni := range nis {
		if ni.Flags&net.FlagLoopback != 0 {
			continue
		}
		i := Iface{Name: ni.Name, Index: ni.Index, MTU: ni.MTU, Up: ni.Flags&net.FlagUp != 0}
		addrs, err := ni.Addrs()
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", ni.Name, err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap().Is4() && !ip.IsLinkLocalUnicast() {
					i.Addrs = append(i.Addrs, ip.Unmap())
				}
			}
		}
		out = append(out, i)
	}
	slices.SortFunc(out, func(a, b Iface) int { return a.Index - b.Index })
	return out, nil
}

func routeTo(ifaces []Iface, dst netip.Addr, what string) (Iface, netip.Addr, error) {
	r, err := kernel.LookupRoute(dst)
	if err != nil {
		return Iface{}, netip.Addr{}, fmt.Errorf("%s: no route: %v: %w", what, err, ErrNoIface)
	}
	for _, i := range ifaces {
		if i.Index != r.LinkIndex {
			continue
		}
		if r.Src.Is4() {
			return i, r.Src, nil
		}
		if len(i.Addrs) > 0 {
			return i, i.Addrs[0], nil
		}
		return Iface{}, netip.Addr{}, fmt.Errorf("%s: interface %s has no IPv4 address: %w", what, i.Name, ErrNoIface)
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("%s: route uses link #%d, which is not a usable interface: %w", what, r.LinkIndex, ErrNoIface)
}

func defaultRouteIface(ifaces []Iface) (Iface, netip.Addr, error) {
	routes, err := kernel.DefaultRoutes4()
	if err != nil {
		return Iface{}, netip.Addr{}, err
	}
	for _, r := range routes {
		for _, i := range ifaces {
			if i.Index == r.LinkIndex && len(i.Addrs) > 0 {
				if r.Src.Is4() {
					return i, r.Src, nil
				}
				return i, i.Addrs[0], nil
			}
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("no default route with an IPv4 interface; choose one with --iface, --iface-regex or --iface-can-reach: %w", ErrNoIface)
}

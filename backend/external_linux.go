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
	if s.PublicIPv6.IsValid() && (!s.PublicIPv6.Is6() || s.PublicIPv6.Is4In6()) {
		return External{}, fmt.Errorf("--public-ipv6 %s: must be an IPv6 address", s.PublicIPv6)
	}
	ifaces, err := listIfaces()
	if err != nil {
		return External{}, err
	}
	var i Iface
	var addr netip.Addr
	var how string
	switch {
	case len(s.Ifaces) > 0:
		how = fmt.Sprintf("--iface %v", s.Ifaces)
		i, addr, err = selectByName(ifaces, s.Ifaces)
	case len(s.IfaceRegexes) > 0:
		how = fmt.Sprintf("--iface-regex %v", s.IfaceRegexes)
		i, addr, err = selectByRegex(ifaces, s.IfaceRegexes)
	case s.CanReach.IsValid():
		how = "--iface-can-reach " + s.CanReach.String()
		i, addr, err = routeTo(ifaces, s.CanReach, how)
	default:
		how = "the default route"
		i, addr, err = defaultRouteIface(ifaces, s.NoIPv4)
	}
	if err != nil {
		return External{}, err
	}
	return external(i, addr, s, how)
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
				if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLinkLocalUnicast() {
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
		if r.Src.IsValid() && slices.Contains(i.Addrs, r.Src) {
			return i, r.Src, nil
		}
		if len(i.Addrs) > 0 {
			return i, netip.Addr{}, nil
		}
		return Iface{}, netip.Addr{}, fmt.Errorf("%s: interface %s has no IPv4 or global IPv6 address: %w", what, i.Name, ErrNoIface)
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("%s: route uses link #%d, which is not a usable interface: %w", what, r.LinkIndex, ErrNoIface)
}

// defaultRouteIface returns the interface of the IPv4 default route, or of the IPv6 one when v6 (an
// IPv6-only network).
func defaultRouteIface(ifaces []Iface, v6 bool) (Iface, netip.Addr, error) {
	list, fam := kernel.DefaultRoutes4, "IPv4"
	if v6 {
		list, fam = kernel.DefaultRoutes6, "IPv6"
	}
	routes, err := list()
	if err != nil {
		return Iface{}, netip.Addr{}, err
	}
	for _, r := range routes {
		for _, i := range ifaces {
			if i.Index != r.LinkIndex || !slices.ContainsFunc(i.Addrs, func(a netip.Addr) bool { return a.Is6() == v6 }) {
				continue
			}
			if r.Src.IsValid() && r.Src.Is6() == v6 && slices.Contains(i.Addrs, r.Src) {
				return i, r.Src, nil
			}
			return i, netip.Addr{}, nil
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("no default route for %s with an %s address on its interface; choose one with --iface, --iface-regex or --iface-can-reach: %w", fam, fam, ErrNoIface)
}

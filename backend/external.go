package backend

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// IfaceSelector says how to choose the external (underlay) interface, in flanneld's order of precedence:
// Ifaces, else IfaceRegexes, else CanReach, else the interface of the default route (IPv4's, or IPv6's for an
// IPv6-only network). Unlike flanneld, every way accepts IPv6 addresses as well (flannel #2081).
type IfaceSelector struct {
	Ifaces       []string   // interface names or addresses, IPv4 or IPv6, tried in order (--iface)
	IfaceRegexes []string   // regular expressions matched against names and addresses (--iface-regex)
	CanReach     netip.Addr // choose the interface used to reach this address, IPv4 or IPv6 (--iface-can-reach); zero: unset
	PublicIP     netip.Addr // IPv4 address to publish (--public-ip); zero: the interface's address
	PublicIPv6   netip.Addr // IPv6 address to publish (--public-ipv6); zero: the interface's IPv6 address
	// NoIPv4 selects no IPv4 address (an IPv6-only network, EnableIPv4 false); false: the interface must
	// have one.
	NoIPv4 bool
	// IPv6 also selects an IPv6 address (EnableIPv6); the interface must then have a global one. False: none.
	IPv6 bool
}

// Iface is what selection needs to know about one interface.
type Iface struct {
	Name  string
	Index int
	MTU   int
	Up    bool
	Addrs []netip.Addr // IPv4 and global IPv6 addresses, in the kernel's order
}

// ErrNoIface is wrapped by selection errors when no interface matches.
var ErrNoIface = errors.New("no matching external interface")

// selectByName implements --iface: each entry is an interface name or one of its addresses. The address
// is returned when an entry named one (zero for a name).
func selectByName(ifaces []Iface, wanted []string) (Iface, netip.Addr, error) {
	for _, w := range wanted {
		if ip, err := netip.ParseAddr(w); err == nil {
			for _, i := range ifaces {
				for _, a := range i.Addrs {
					if a == ip {
						return i, a, nil
					}
				}
			}
			continue
		}
		for _, i := range ifaces {
			if i.Name == w {
				if len(i.Addrs) == 0 {
					return Iface{}, netip.Addr{}, fmt.Errorf("--iface %s: interface has no IPv4 or global IPv6 address: %w", w, ErrNoIface)
				}
				return i, netip.Addr{}, nil
			}
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("--iface %s: no interface has that name or address: %w", strings.Join(wanted, ","), ErrNoIface)
}

// selectByRegex implements --iface-regex: the first interface (in index order) whose name or one of whose
// addresses matches one of the expressions, tried in order. The address is returned when one matched.
func selectByRegex(ifaces []Iface, exprs []string) (Iface, netip.Addr, error) {
	for _, e := range exprs {
		re, err := regexp.Compile(e)
		if err != nil {
			return Iface{}, netip.Addr{}, fmt.Errorf("--iface-regex %q: %w", e, err)
		}
		for _, i := range ifaces {
			if len(i.Addrs) == 0 {
				continue
			}
			if re.MatchString(i.Name) {
				return i, netip.Addr{}, nil
			}
			for _, a := range i.Addrs {
				if re.MatchString(a.String()) {
					return i, a, nil
				}
			}
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("--iface-regex %s: no interface with an address matches: %w", strings.Join(exprs, ","), ErrNoIface)
}

// external builds the External for interface i: the address of each family s selects is matched (the
// address the selection named, if of that family), else the interface's first of that family. It fails,
// wrapping ErrNoIface, when the interface has no address of a family s selects. how names the selection
// for errors ("--iface eth0", "the default route").
func external(i Iface, matched netip.Addr, s IfaceSelector, how string) (External, error) {
	pick := func(v6 bool) netip.Addr {
		if matched.IsValid() && matched.Is6() == v6 {
			return matched
		}
		for _, a := range i.Addrs {
			if a.Is6() == v6 {
				return a
			}
		}
		return netip.Addr{}
	}
	e := External{Name: i.Name, Index: i.Index, MTU: i.MTU}
	if !s.NoIPv4 {
		if e.Addr = pick(false); !e.Addr.IsValid() {
			return External{}, fmt.Errorf("%s: interface %s has no IPv4 address: %w", how, i.Name, ErrNoIface)
		}
		e.PublicIP = s.PublicIP
		if !e.PublicIP.IsValid() {
			e.PublicIP = e.Addr
		}
	}
	if s.IPv6 {
		if e.Addr6 = pick(true); !e.Addr6.IsValid() {
			return External{}, fmt.Errorf("%s: interface %s has no global IPv6 address (the network config enables IPv6): %w", how, i.Name, ErrNoIface)
		}
		e.PublicIPv6 = s.PublicIPv6
		if !e.PublicIPv6.IsValid() {
			e.PublicIPv6 = e.Addr6
		}
	}
	return e, nil
}

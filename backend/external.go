package backend

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// IfaceSelector says how to choose the external (underlay) interface, in flanneld's order of precedence:
// Ifaces, else IfaceRegexes, else CanReach, else the interface of the default route.
type IfaceSelector struct {
	Ifaces       []string   // interface names or IPv4 addresses, tried in order (--iface)
	IfaceRegexes []string   // regular expressions matched against names and addresses (--iface-regex)
	CanReach     netip.Addr // choose the interface used to reach this address (--iface-can-reach); zero: unset
	PublicIP     netip.Addr // address to publish (--public-ip); zero: the interface's address
}

// Iface is what selection needs to know about one interface.
type Iface struct {
	Name  string
	Index int
	MTU   int
	Up    bool
	Addrs []netip.Addr // IPv4 addresses, in the kernel's order
}

// ErrNoIface is wrapped by selection errors when no interface matches.
var ErrNoIface = errors.New("no matching external interface")

// selectByName implements --iface: each entry is an interface name or one of its IPv4 addresses.
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
					return Iface{}, netip.Addr{}, fmt.Errorf("--iface %s: interface has no IPv4 address: %w", w, ErrNoIface)
				}
				return i, i.Addrs[0], nil
			}
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("--iface %s: no interface has that name or address: %w", strings.Join(wanted, ","), ErrNoIface)
}

// selectByRegex implements --iface-regex: the first interface (in index order) whose name or one of whose
// IPv4 addresses matches one of the expressions, tried in order.
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
				return i, i.Addrs[0], nil
			}
			for _, a := range i.Addrs {
				if re.MatchString(a.String()) {
					return i, a, nil
				}
			}
		}
	}
	return Iface{}, netip.Addr{}, fmt.Errorf("--iface-regex %s: no interface with an IPv4 address matches: %w", strings.Join(exprs, ","), ErrNoIface)
}

// external builds the External for a chosen interface and address.
func external(i Iface, addr, publicIP netip.Addr) External {
	e := External{Name: i.Name, Index: i.Index, MTU: i.MTU, Addr: addr, PublicIP: publicIP}
	if !e.PublicIP.IsValid() {
		e.PublicIP = addr
	}
	return e
}

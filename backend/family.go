package backend

import (
	"encoding/json"
	"net/netip"

	"github.com/weft-net/weft/subnet"
)

// Family selects one address family of the leases, the network config and the underlay, for a backend
// (vxlan, host-gw) that runs one data path per family, as flannel does: IPv4 subnets over the IPv4
// underlay (PublicIP, BackendData) and IPv6 subnets over the IPv6 underlay (PublicIPv6, BackendV6Data).
// The zero value is IPv4.
type Family struct{ V6 bool }

var (
	IPv4 = Family{}
	IPv6 = Family{V6: true}
)

func (f Family) String() string {
	if f.V6 {
		return "IPv6"
	}
	return "IPv4"
}

// Subnet is l's subnet of the family (zero if none).
func (f Family) Subnet(l subnet.Lease) netip.Prefix {
	if f.V6 {
		return l.IPv6Subnet
	}
	return l.Subnet
}

// PublicIP is the lease's public address of the family (zero if none).
func (f Family) PublicIP(a subnet.Attrs) netip.Addr {
	if f.V6 {
		return a.PublicIPv6
	}
	return a.PublicIP
}

// Data is the lease's backend data of the family (BackendData or BackendV6Data).
func (f Family) Data(a subnet.Attrs) json.RawMessage {
	if f.V6 {
		return a.BackendV6Data
	}
	return a.BackendData
}

// Network is the network config's overlay of the family.
func (f Family) Network(n *subnet.Config) netip.Prefix {
	if f.V6 {
		return n.IPv6Network
	}
	return n.Network
}

// Enabled reports whether the network config enables the family.
func (f Family) Enabled(n *subnet.Config) bool {
	if f.V6 {
		return n.EnableIPv6
	}
	return n.EnableIPv4
}

// Addr is the external interface's address of the family (the tunnel source).
func (f Family) Addr(e External) netip.Addr {
	if f.V6 {
		return e.Addr6
	}
	return e.Addr
}

// Public is the address of the family this node publishes.
func (f Family) Public(e External) netip.Addr {
	if f.V6 {
		return e.PublicIPv6
	}
	return e.PublicIP
}

// Is reports whether a is an address of the family.
func (f Family) Is(a netip.Addr) bool {
	if f.V6 {
		return a.Is6() && !a.Is4In6()
	}
	return a.Is4()
}

// Bits is the length of the family's addresses.
func (f Family) Bits() int {
	if f.V6 {
		return 128
	}
	return 32
}

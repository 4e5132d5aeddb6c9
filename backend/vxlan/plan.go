package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// planInput is what plan needs besides the config.
type planInput struct {
	ext    backend.External
	dev    int                 // the VXLAN device's index
	direct map[netip.Addr]bool // PublicIPs reachable directly on the external link (DirectRouting); nil: none
	ownMAC net.HardwareAddr    // this node's VTEP MAC; a peer publishing it is refused
	// macOwners maps a VTEP MAC to the key of the lease it was routed to at the last plan (desired.owners);
	// nil before the first.
	macOwners map[string]string
}

// desired is the complete kernel state Set wants.
type desired struct {
	addr   netip.Prefix // the device's address: own subnet's network address /32
	neighs []kernel.Neigh
	fdb    []kernel.FDB
	routes []kernel.Route
	owners map[string]string // VTEP MAC → key of the lease routed to it, for the next plan's macOwners
}

// plan computes the complete desired state for cfg. Per vxlan peer with valid BackendData: a neighbour
// (peer subnet's network address → VtepMAC) and an FDB entry (VtepMAC → PublicIP) on the device and an
// onlink route of the subnet via its network address on the device; or, for a peer in in.direct, a route of
// the subnet via its PublicIP on the external interface and nothing else. Every other lease is skipped
// with a warning (backend.CheckPeer), and so is a lease whose VtepMAC is this node's or another routed
// lease's: the FDB holds one remote per MAC, so a copier would take the traffic of the node it copies. Of
// the leases sharing a MAC the one that held it at the last plan keeps it, else the key created first.
// cfg.Own.Subnet must be valid.
func plan(cfg *backend.Config, in planInput) (desired, []backend.Skip) {
	d := desired{addr: netip.PrefixFrom(cfg.Own.Subnet.Masked().Addr(), 32), owners: map[string]string{}}
	type checked struct {
		reason string
		mac    net.HardwareAddr
	}
	peers := make([]checked, len(cfg.Peers))
	claims := map[string]int{} // MAC → index of the peer that gets it
	for i, p := range cfg.Peers {
		c := &peers[i]
		if p.Attrs.BackendType != Type {
			c.reason = fmt.Sprintf("backend type %q, not %q", p.Attrs.BackendType, Type)
		} else {
			c.reason = backend.CheckPeer(p, cfg.Own.Subnet, in.ext, cfg.Network.Network)
		}
		if c.reason == "" {
			var err error
			if _, c.mac, err = parseLeaseData(p.Attrs.BackendData); err != nil {
				c.reason = err.Error()
			}
		}
		if c.reason != "" || in.direct[p.Attrs.PublicIP] {
			continue // a direct route does not use the MAC
		}
		mac := c.mac.String()
		if in.ownMAC != nil && mac == in.ownMAC.String() {
			c.reason = fmt.Sprintf("%s%s is this node's", macConflictPrefix, mac)
			continue
		}
		j, ok := claims[mac]
		if !ok || firstClaim(p, cfg.Peers[j], in.macOwners[mac]) {
			claims[mac] = i
		}
	}
	for mac, i := range claims {
		d.owners[mac] = cfg.Peers[i].Key()
	}
	var skipped []backend.Skip
	for i, p := range cfg.Peers {
		c := peers[i]
		if c.reason == "" && !in.direct[p.Attrs.PublicIP] {
			if owner := d.owners[c.mac.String()]; owner != p.Key() {
				c.reason = fmt.Sprintf("%s%s is lease %s's", macConflictPrefix, c.mac, owner)
			}
		}
		if c.reason != "" {
			skipped = append(skipped, backend.Skip{Key: p.Key(), Reason: c.reason})
			continue
		}
		sub := p.Subnet.Masked()
		if in.direct[p.Attrs.PublicIP] {
			d.routes = append(d.routes, kernel.Route{Dst: sub, Gw: p.Attrs.PublicIP, LinkIndex: in.ext.Index})
			continue
		}
		d.neighs = append(d.neighs, kernel.Neigh{LinkIndex: in.dev, IP: sub.Addr(), MAC: c.mac})
		d.fdb = append(d.fdb, kernel.FDB{LinkIndex: in.dev, MAC: c.mac, Dst: p.Attrs.PublicIP})
		d.routes = append(d.routes, kernel.Route{Dst: sub, Gw: sub.Addr(), LinkIndex: in.dev, OnLink: true})
	}
	return d, skipped
}

// macConflictPrefix starts the reason of a lease refused for its VtepMAC.
const macConflictPrefix = "its VtepMAC "

// firstClaim reports whether lease a has a better claim to a VTEP MAC than b: a held it at the last plan
// (owner is a's key), or neither did and a's key was created first (then the smaller key, for determinism).
func firstClaim(a, b subnet.Lease, owner string) bool {
	switch owner {
	case a.Key():
		return true
	case b.Key():
		return false
	}
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	return a.Key() < b.Key()
}

// incompatible says why an existing device cannot be reused as want ("" if it can). MTU, MAC and the up
// state can be changed in place and do not count.
func incompatible(have, want kernel.VXLAN) string {
	var why []string
	diff := func(what string, h, w any) {
		if h != w {
			why = append(why, fmt.Sprintf("%s %v, want %v", what, h, w))
		}
	}
	diff("vni", have.VNI, want.VNI)
	diff("local", have.Local, want.Local)
	diff("port", have.Port, want.Port)
	diff("underlay link", have.VtepIndex, want.VtepIndex)
	diff("learning", have.Learning, want.Learning)
	diff("gbp", have.GBP, want.GBP)
	if have.FlowBased {
		why = append(why, "flow-based (external)")
	}
	if have.HasGroup {
		why = append(why, "has a multicast group or default remote")
	}
	return strings.Join(why, "; ")
}

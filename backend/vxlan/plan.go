package vxlan

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// planInput is what plan needs besides the config.
type planInput struct {
	fam    backend.Family // the family of the subnets, addresses and backend data used
	ext    backend.External
	dev    int                 // the VXLAN device's index
	direct map[netip.Addr]bool // PublicIPs reachable directly on the external link (DirectRouting); nil: none
	ownMAC net.HardwareAddr    // this node's VTEP MAC; a peer publishing it is refused
	// nexthops: peer routes through the device go through nexthop objects (IPv4 only; Route.Nexthop).
	nexthops bool
	// macOwners maps a VTEP MAC to the key of the lease it was routed to at the last plan (desired.owners);
	// nil before the first.
	macOwners map[string]string
}

// desired is the complete kernel state Set wants.
type desired struct {
	dev    int          // the device's index the state is for
	addr   netip.Prefix // the device's address: own subnet's network address /32
	neighs []kernel.Neigh
	fdb    []kernel.FDB
	routes []kernel.Route
	owners map[string]string // VTEP MAC → key of the lease routed to it, for the next plan's macOwners

	// The same state by lease key, for changes of single leases (Update): what each routed lease installs,
	// the MAC each owns, and the MACs more than one lease claims.
	byKey     map[string]peerEntries
	macOf     map[string]string // lease key → the VTEP MAC it owns
	contested map[string]bool
	stale     bool // byKey changed since neighs, fdb and routes were made from it (flatten)
}

// peerEntries is what one routed peer lease installs.
type peerEntries struct {
	neigh *kernel.Neigh // nil for a direct route
	fdb   *kernel.FDB   // nil for a direct route
	route kernel.Route
}

// flatten rebuilds neighs, fdb and routes from byKey, after Updates changed it.
func (d *desired) flatten() {
	d.stale = false
	d.neighs, d.fdb, d.routes = d.neighs[:0], d.fdb[:0], d.routes[:0]
	for _, e := range d.byKey {
		if e.neigh != nil {
			d.neighs = append(d.neighs, *e.neigh)
			d.fdb = append(d.fdb, *e.fdb)
		}
		d.routes = append(d.routes, e.route)
	}
	// Deterministic, for tests and logs: by address.
	slices.SortFunc(d.neighs, func(a, b kernel.Neigh) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(d.fdb, func(a, b kernel.FDB) int {
		if c := bytes.Compare(a.MAC, b.MAC); c != 0 {
			return c
		}
		return a.Dst.Compare(b.Dst)
	})
	slices.SortFunc(d.routes, func(a, b kernel.Route) int {
		if c := a.Dst.Addr().Compare(b.Dst.Addr()); c != 0 {
			return c
		}
		return a.Dst.Bits() - b.Dst.Bits()
	})
}

// relink moves the state to the device with index dev (the device was recreated): every entry on the old
// device is put on the new one.
func (d *desired) relink(dev int) {
	old := d.dev
	d.dev = dev
	for k, e := range d.byKey {
		if e.neigh != nil && e.neigh.LinkIndex == old {
			n := *e.neigh
			n.LinkIndex = dev
			e.neigh = &n
		}
		if e.fdb != nil && e.fdb.LinkIndex == old {
			f := *e.fdb
			f.LinkIndex = dev
			e.fdb = &f
		}
		if e.route.LinkIndex == old {
			e.route.LinkIndex = dev
		}
		d.byKey[k] = e
	}
	d.stale = true
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
	fam := in.fam
	d := desired{dev: in.dev, addr: netip.PrefixFrom(fam.Subnet(cfg.Own).Masked().Addr(), fam.Bits()), owners: map[string]string{},
		byKey: map[string]peerEntries{}, macOf: map[string]string{}, contested: map[string]bool{}}
	type checked struct {
		reason string
		kind   backend.SkipKind
		mac    net.HardwareAddr
	}
	peers := make([]checked, len(cfg.Peers))
	claims := map[string]int{} // MAC → index of the peer that gets it
	for i, p := range cfg.Peers {
		c := &peers[i]
		if p.Attrs.BackendType != Type {
			c.kind, c.reason = backend.SkipBackendType, fmt.Sprintf("backend type %q, not %q", p.Attrs.BackendType, Type)
		} else {
			c.kind, c.reason = fam.CheckPeer(p, fam.Subnet(cfg.Own), in.ext, fam.Network(&cfg.Network))
		}
		if c.reason == "" {
			var err error
			if _, c.mac, err = parseLeaseData(fam.Data(p.Attrs)); err != nil {
				c.kind, c.reason = backend.SkipBadBackendData, err.Error()
			}
		}
		if c.reason != "" || in.direct[fam.PublicIP(p.Attrs)] {
			continue // a direct route does not use the MAC
		}
		mac := c.mac.String()
		if in.ownMAC != nil && mac == in.ownMAC.String() {
			c.kind, c.reason = backend.SkipDuplicateVtepMAC, fmt.Sprintf("%s%s is this node's", macConflictPrefix, mac)
			continue
		}
		j, ok := claims[mac]
		if ok {
			d.contested[mac] = true
		}
		if !ok || firstClaim(p, cfg.Peers[j], in.macOwners[mac]) {
			claims[mac] = i
		}
	}
	for mac, i := range claims {
		d.owners[mac] = cfg.Peers[i].Key()
		d.macOf[cfg.Peers[i].Key()] = mac
	}
	var skipped []backend.Skip
	for i, p := range cfg.Peers {
		c := peers[i]
		if c.reason == "" && !in.direct[fam.PublicIP(p.Attrs)] {
			if owner := d.owners[c.mac.String()]; owner != p.Key() {
				c.kind, c.reason = backend.SkipDuplicateVtepMAC, fmt.Sprintf("%s%s is lease %s's", macConflictPrefix, c.mac, owner)
			}
		}
		if c.reason != "" {
			skipped = append(skipped, backend.Skip{Key: p.Key(), Kind: c.kind, Reason: c.reason})
			continue
		}
		sub, pub := fam.Subnet(p).Masked(), fam.PublicIP(p.Attrs)
		if in.direct[pub] {
			d.byKey[p.Key()] = peerEntries{route: kernel.Route{Dst: sub, Gw: pub, LinkIndex: in.ext.Index}}
			continue
		}
		// Permanent, as installed: the state applied last is compared with the next plan (update).
		d.byKey[p.Key()] = peerEntries{
			neigh: &kernel.Neigh{LinkIndex: in.dev, IP: sub.Addr(), MAC: c.mac, Permanent: true},
			fdb:   &kernel.FDB{LinkIndex: in.dev, MAC: c.mac, Dst: pub, Permanent: true},
			route: kernel.Route{Dst: sub, Gw: sub.Addr(), LinkIndex: in.dev, OnLink: true, Nexthop: in.nexthops && !fam.V6},
		}
	}
	d.flatten()
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
	return backend.CreatedBefore(a, b)
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

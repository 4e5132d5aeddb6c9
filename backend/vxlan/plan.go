package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// planInput is what plan needs besides the config.
type planInput struct {
	ext    backend.External
	dev    int                 // the VXLAN device's index
	direct map[netip.Addr]bool // PublicIPs reachable directly on the external link (DirectRouting); nil: none
}

// desired is the complete kernel state Set wants.
type desired struct {
	addr   netip.Prefix // the device's address: own subnet's network address /32
	neighs []kernel.Neigh
	fdb    []kernel.FDB
	routes []kernel.Route
}

// plan computes the complete desired state for cfg. Per vxlan peer with valid BackendData: a neighbour
// (peer subnet's network address → VtepMAC) and an FDB entry (VtepMAC → PublicIP) on the device and an
// onlink route of the subnet via its network address on the device; or, for a peer in in.direct, a route of
// the subnet via its PublicIP on the external interface and nothing else. Every other lease is skipped
// with a warning (backend.CheckPeer). cfg.Own.Subnet must be valid.
func plan(cfg *backend.Config, in planInput) (desired, []backend.Skip) {
	d := desired{addr: netip.PrefixFrom(cfg.Own.Subnet.Masked().Addr(), 32)}
	var skipped []backend.Skip
	for _, p := range cfg.Peers {
		var reason string
		if p.Attrs.BackendType != Type {
			reason = fmt.Sprintf("backend type %q, not %q", p.Attrs.BackendType, Type)
		} else {
			reason = backend.CheckPeer(p, cfg.Own.Subnet, in.ext, cfg.Network.Network)
		}
		var mac net.HardwareAddr
		if reason == "" {
			var err error
			if _, mac, err = parseLeaseData(p.Attrs.BackendData); err != nil {
				reason = err.Error()
			}
		}
		if reason != "" {
			skipped = append(skipped, backend.Skip{Key: p.Key(), Reason: reason})
			continue
		}
		sub := p.Subnet.Masked()
		if in.direct[p.Attrs.PublicIP] {
			d.routes = append(d.routes, kernel.Route{Dst: sub, Gw: p.Attrs.PublicIP, LinkIndex: in.ext.Index})
			continue
		}
		d.neighs = append(d.neighs, kernel.Neigh{LinkIndex: in.dev, IP: sub.Addr(), MAC: mac})
		d.fdb = append(d.fdb, kernel.FDB{LinkIndex: in.dev, MAC: mac, Dst: p.Attrs.PublicIP})
		d.routes = append(d.routes, kernel.Route{Dst: sub, Gw: sub.Addr(), LinkIndex: in.dev, OnLink: true})
	}
	return d, skipped
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

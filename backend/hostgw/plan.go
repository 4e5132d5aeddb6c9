package hostgw

import (
	"fmt"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// skip is a peer lease that plan leaves out, and why.
type skip struct {
	key    string // the lease's key name
	reason string
	warn   bool // worth a warning (a broken or hostile lease), not just a debug line
}

// plan computes the complete set of routes for cfg: each host-gw peer's IPv4 subnet via its PublicIP on
// the external interface. Peers of another backend type are skipped quietly; a lease that would route into
// the underlay, to this node, or outside the network is skipped with a warning. The routes are in peer
// order; DiffRoutes sorts them.
func plan(cfg *backend.Config, ext backend.External) ([]kernel.Route, []skip) {
	var routes []kernel.Route
	var skipped []skip
	network := cfg.Network.Network
	for _, p := range cfg.Peers {
		key := p.Key()
		reason, warn := "", true
		switch {
		case p.Attrs.BackendType != "" && p.Attrs.BackendType != Type:
			reason, warn = fmt.Sprintf("backend type %q, not %q", p.Attrs.BackendType, Type), false
		case !p.Subnet.IsValid() || !p.Subnet.Addr().Is4():
			reason = "no IPv4 subnet"
		case !p.Attrs.PublicIP.Is4():
			reason = "no IPv4 PublicIP"
		case p.Subnet.Masked() == cfg.Own.Subnet.Masked():
			reason = "it is this node's own subnet"
		case p.Attrs.PublicIP == ext.Addr || p.Attrs.PublicIP == ext.PublicIP:
			reason = fmt.Sprintf("its PublicIP %s is this node's", p.Attrs.PublicIP)
		case network.IsValid() && !(network.Bits() <= p.Subnet.Bits() && network.Contains(p.Subnet.Addr())):
			reason = fmt.Sprintf("subnet %s is outside the network %s", p.Subnet, network)
		}
		if reason != "" {
			skipped = append(skipped, skip{key: key, reason: reason, warn: warn})
			continue
		}
		routes = append(routes, kernel.Route{Dst: p.Subnet.Masked(), Gw: p.Attrs.PublicIP, LinkIndex: ext.Index})
	}
	return routes, skipped
}

package hostgw

import (
	"fmt"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// plan computes the complete set of routes of family fam for cfg, by lease key: each host-gw peer's subnet
// of fam via its public address of fam on the external interface. Peers of another backend type are skipped quietly; a lease that would
// route into the underlay, to this node, or outside the network is skipped with a warning
// (backend.CheckPeer).
func plan(cfg *backend.Config, fam backend.Family, ext backend.External) (map[string]kernel.Route, []backend.Skip) {
	routes := map[string]kernel.Route{}
	var skipped []backend.Skip
	for _, p := range cfg.Peers {
		if typ := p.Attrs.BackendType; typ != "" && typ != Type {
			skipped = append(skipped, backend.Skip{Key: p.Key(), Kind: backend.SkipBackendType, Reason: fmt.Sprintf("backend type %q, not %q", typ, Type), Quiet: true})
			continue
		}
		if kind, reason := fam.CheckPeer(p, fam.Subnet(cfg.Own), ext, fam.Network(&cfg.Network)); reason != "" {
			skipped = append(skipped, backend.Skip{Key: p.Key(), Kind: kind, Reason: reason})
			continue
		}
		routes[p.Key()] = kernel.Route{Dst: fam.Subnet(p).Masked(), Gw: fam.PublicIP(p.Attrs), LinkIndex: ext.Index}
	}
	return routes, skipped
}

package hostgw

import "github.com/weft-net/weft/backend/kernel"

// apply makes our routes exactly routes.
func apply(h *kernel.Handle, routes []kernel.Route) error {
	return h.SyncRoutes(false, routes, nil)
}

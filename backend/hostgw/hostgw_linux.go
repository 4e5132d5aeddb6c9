package hostgw

import "github.com/weft-net/weft/backend/kernel"

// apply makes our routes within scope exactly routes.
func apply(h *kernel.Handle, routes []kernel.Route, scope func(kernel.Route) bool) error {
	return h.SyncRoutes(false, routes, scope)
}

package hostgw

import "github.com/weft-net/weft/backend/kernel"

// apply makes our routes within scope exactly routes.
func apply(h *kernel.Handle, routes []kernel.Route, scope func(kernel.Route) bool) error {
	return h.SyncRoutes(false, routes, scope)
}

// update applies the difference between the routes installed last and routes, without listing the table.
func update(h *kernel.Handle, had, routes []kernel.Route) error {
	return h.UpdateRoutes(had, routes)
}

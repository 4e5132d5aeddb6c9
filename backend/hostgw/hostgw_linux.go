package hostgw

import (
	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// up opens a netlink handle in the calling thread's namespace, checks the external interface is there and
// enables IPv4 forwarding.
func up(ext backend.External) (*kernel.Handle, error) {
	h, err := kernel.NewHandle()
	if err != nil {
		return nil, err
	}
	if _, err := h.LinkName(ext.Index); err != nil {
		h.Close()
		return nil, err
	}
	if err := kernel.WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		h.Close()
		return nil, err
	}
	return h, nil
}

// apply makes our routes exactly routes.
func apply(h *kernel.Handle, routes []kernel.Route) error {
	return h.SyncRoutes(false, routes, nil)
}

func closeHandle(h *kernel.Handle) { h.Close() }

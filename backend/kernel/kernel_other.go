//go:build !linux

package kernel

// The whole kernel API off Linux, once: every call returns errors.ErrUnsupported (netlink's
// netlink_unspecified.go is the model), so the backends need no per-OS shims of their own.

import (
	"errors"
	"net"
	"net/netip"
)

// Handle is unavailable off Linux.
type Handle struct{}

// Namespace is unavailable off Linux.
type Namespace struct{}

var errUnsupported = errors.ErrUnsupported

func NewHandle() (*Handle, error)                                    { return nil, errUnsupported }
func NewForwardingHandle(link int) (*Handle, error)                  { return nil, errUnsupported }
func (h *Handle) Close()                                             {}
func (h *Handle) Nexthops() bool                                     { return false }
func (h *Handle) ownsNexthop(id uint32) bool                         { return false }
func (h *Handle) OurRoutes(v6 bool) ([]Route, error)                 { return nil, errUnsupported }
func (h *Handle) ReplaceRoute(r Route) error                         { return errUnsupported }
func (h *Handle) DeleteRoute(r Route) error                          { return errUnsupported }
func (h *Handle) SyncRoutes(bool, []Route, func(Route) bool) error   { return errUnsupported }
func (h *Handle) UpdateRoutes(had, want []Route) error               { return errUnsupported }
func (h *Handle) LinkName(index int) (string, error)                 { return "", errUnsupported }
func (h *Handle) LinkStateByName(name string) (LinkState, error)     { return LinkState{}, errUnsupported }
func (h *Handle) VXLANByName(name string) (*VXLAN, error)            { return nil, errUnsupported }
func (h *Handle) AddVXLAN(v VXLAN) (*VXLAN, error)                   { return nil, errUnsupported }
func (h *Handle) DeleteLink(name string) error                       { return errUnsupported }
func (h *Handle) SetLinkUp(index int) error                          { return errUnsupported }
func (h *Handle) SetLinkMTU(index, mtu int) error                    { return errUnsupported }
func (h *Handle) SetLinkMAC(index int, mac net.HardwareAddr) error   { return errUnsupported }
func (h *Handle) SetLinkAddrs(index int, want ...netip.Prefix) error { return errUnsupported }
func (h *Handle) RouteTo(dst netip.Addr) (Route, error)              { return Route{}, errUnsupported }
func (h *Handle) Neighs(linkIndex int) ([]Neigh, error)              { return nil, errUnsupported }
func (h *Handle) ReplaceNeigh(n Neigh) error                         { return errUnsupported }
func (h *Handle) DeleteNeigh(n Neigh) error                          { return errUnsupported }
func (h *Handle) FDBs(linkIndex int) ([]FDB, error)                  { return nil, errUnsupported }
func (h *Handle) ReplaceFDB(f FDB) error                             { return errUnsupported }
func (h *Handle) DeleteFDB(f FDB) error                              { return errUnsupported }

func WriteSysctl(name, value string) error       { return errUnsupported }
func CurrentNamespace() (*Namespace, error)      { return nil, errUnsupported }
func (n *Namespace) Do(f func() error) error     { return errUnsupported }
func (n *Namespace) Close() error                { return nil }
func LookupRoute(dst netip.Addr) (Lookup, error) { return Lookup{}, errUnsupported }
func DefaultRoutes4() ([]Lookup, error)          { return nil, errUnsupported }
func DefaultRoutes6() ([]Lookup, error)          { return nil, errUnsupported }
func EnableIPv6Forwarding() error                { return errUnsupported }
func SubscribeRoutes(size int, done <-chan struct{}) (<-chan RouteEvent, error) {
	return nil, errUnsupported
}

type eventSocket struct{}

func openEvents() (*eventSocket, error)     { return nil, errUnsupported }
func (e *eventSocket) close()               {}
func (e *eventSocket) read(fn func(Event))  {}
func (h *Handle) setGone(func(Event, bool)) {}
func (h *Handle) linkUp(index int) bool     { return false }

// UnderlayWatch is Linux only.
type UnderlayWatch struct{}

func WatchUnderlay() (*UnderlayWatch, error)      { return nil, errUnsupported }
func (w *UnderlayWatch) Changes() <-chan struct{} { return nil }
func (w *UnderlayWatch) Close()                   {}

// Package hostgw is the "host-gw" backend: every peer's subnet is routed via the peer's PublicIP on the
// external interface, so packets cross the underlay unencapsulated. It needs the nodes to share an L2
// segment and the published PublicIP to be the interface's own address (no NAT).
//
// Up opens a netlink handle in the network namespace of the calling thread and enables IPv4 forwarding
// there; Set and Close act on that namespace through the handle, from any thread. Set owns the main-table
// routes tagged with kernel.RouteProtocol whose destination lies in the network (kernel.Owned), so a second
// weftd for another network on the node keeps its routes. Close leaves the routes in place.
//
// IPv6, as flannel: each peer's IPv6 subnet is routed via its PublicIPv6, which must be on the external
// interface's segment as for IPv4; a dual-stack network runs both (backend.Pair), an IPv6-only one the IPv6
// routes alone.
package hostgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// Type is the backend's type name in the network config and in leases.
const Type = subnet.BackendHostGW

// ErrNAT is wrapped by New's error when the published PublicIP is not the external interface's address.
var ErrNAT = errors.New("host-gw needs the public IP to be the external interface's address (no NAT)")

var (
	errNotUp  = errors.New("host-gw backend: Set before Up")
	errClosed = errors.New("host-gw backend: closed")
)

// New returns the host-gw backend for d: the routes of each address family the network enables (d.Network;
// nil: IPv4). It refuses a published address that differs from the interface's (d.External.PublicIP from
// Addr, PublicIPv6 from Addr6), since peers must reach this node's subnet via the address they route to.
func New(d backend.Deps) (backend.Backend, error) {
	if d.Log == nil {
		return nil, errors.New("host-gw backend: Deps.Log is required")
	}
	if n := d.Network; n != nil && n.EnableIPv6 {
		v6, err := newFamily(d, backend.IPv6)
		if err != nil || !n.EnableIPv4 {
			return v6, err
		}
		v4, err := newFamily(d, backend.IPv4)
		if err != nil {
			return nil, err
		}
		return backend.Pair(v4, v6), nil
	}
	return newFamily(d, backend.IPv4)
}

func newFamily(d backend.Deps, fam backend.Family) (*hostGW, error) {
	ext := d.External
	addr, pub := fam.Addr(ext), fam.Public(ext)
	if !fam.Is(addr) {
		return nil, fmt.Errorf("host-gw backend: external interface %s: address %s is not %s", ext.Name, addr, fam)
	}
	if ext.Index <= 0 {
		return nil, fmt.Errorf("host-gw backend: external interface %s: no index", ext.Name)
	}
	if pub.IsValid() && pub != addr {
		return nil, fmt.Errorf("host-gw backend: public IP %s differs from the address %s of interface %s: %w",
			pub, addr, ext.Name, ErrNAT)
	}
	log := d.Log
	if d.Network != nil && d.Network.EnableIPv4 && d.Network.EnableIPv6 {
		log = log.With("family", fam.String())
	}
	return &hostGW{log: log, fam: fam, ext: ext}, nil
}

type hostGW struct {
	log *slog.Logger
	fam backend.Family // the address family of the routes
	ext backend.External

	mu     sync.Mutex
	h      *kernel.Handle // set by Up; nil after Close
	closed bool
	skips  backend.SkipLog // which skipped peers were warned about
	// applied are the routes installed by the last successful Set and the Updates since, by lease key; nil
	// before it and after an error, when the next Set compares with the kernel.
	applied map[string]kernel.Route
	last    *backend.Config // Network and Own of the state applied last (Peers unused)
}

func (b *hostGW) Up(ctx context.Context) (backend.Local, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return backend.Local{}, errClosed
	}
	if b.h == nil {
		h, err := kernel.NewForwardingHandle(b.ext.Index)
		if err != nil {
			return backend.Local{}, err
		}
		if b.fam.V6 {
			if err := kernel.EnableIPv6Forwarding(); err != nil {
				h.Close()
				return backend.Local{}, err
			}
		}
		b.h = h
	}
	b.log.Info("host-gw backend up", "iface", b.ext.Name, "addr", b.fam.Addr(b.ext), "mtu", b.ext.MTU)
	return backend.Local{BackendType: Type, MTU: b.ext.MTU}, nil
}

func (b *hostGW) Set(cfg *backend.Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errClosed
	case b.h == nil:
		return errNotUp
	case cfg == nil:
		return errors.New("host-gw backend: Set with a nil config")
	}
	routes, skipped := plan(cfg, b.fam, b.ext)
	b.skips.Log(b.log, skipped)
	var err error
	if cfg.Resync || b.applied == nil {
		err = b.h.SyncRoutes(b.fam.V6, slices.Collect(maps.Values(routes)), kernel.Owned(b.fam.Network(&cfg.Network)))
	} else {
		err = b.h.UpdateRoutes(slices.Collect(maps.Values(b.applied)), slices.Collect(maps.Values(routes)))
	}
	if err != nil {
		b.applied = nil
		return fmt.Errorf("host-gw backend: %w", err)
	}
	b.applied = routes
	last := *cfg
	last.Peers = nil
	b.last = &last
	return nil
}

// Update applies a change of single peer leases to the state of the last Set (backend.Updater).
func (b *hostGW) Update(ch *backend.Change) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.closed:
		return errClosed
	case b.h == nil:
		return errNotUp
	case b.applied == nil || b.last == nil:
		return fmt.Errorf("host-gw backend: no state to update: %w", backend.ErrNeedSet)
	}
	cfg := *b.last
	cfg.Peers = ch.Put
	next, skipped := plan(&cfg, b.fam, b.ext)
	keys := slices.Clone(ch.Deleted)
	var had, want []kernel.Route
	for _, k := range ch.Deleted {
		if r, ok := b.applied[k]; ok {
			had = append(had, r)
			delete(b.applied, k)
		}
	}
	for _, p := range ch.Put {
		k := p.Key()
		keys = append(keys, k)
		if r, ok := b.applied[k]; ok {
			had = append(had, r)
			delete(b.applied, k)
		}
		if r, ok := next[k]; ok {
			want = append(want, r)
			b.applied[k] = r
		}
	}
	b.skips.Change(b.log, keys, skipped)
	if err := b.h.UpdateRoutes(had, want); err != nil {
		b.applied = nil
		return fmt.Errorf("host-gw backend: %w", err)
	}
	return nil
}

func (b *hostGW) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.closed = true
	if b.h != nil {
		b.h.Close()
		b.h = nil
	}
	return nil
}

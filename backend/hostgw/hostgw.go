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

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// Type is the backend's type name in the network config and in leases.
const Type = subnet.BackendHostGW

// ErrNAT is wrapped by New's error when the published PublicIP is not the external interface's address.
var ErrNAT = errors.New("host-gw needs the public IP to be the external interface's address (no NAT)")

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
	b := &hostGW{log: log, fam: fam, ext: ext}
	b.k = kernel.NewKeeper("host-gw backend", log, b.repairLocked, b.wantsLocked)
	return b, nil
}

type hostGW struct {
	log *slog.Logger
	fam backend.Family // the address family of the routes
	ext backend.External

	k *kernel.Keeper // the handle and the lock over the fields below

	skips backend.SkipLog // which skipped peers were warned about
	// applied are the routes installed by the last successful Set and the Updates since, by lease key; nil
	// before it and after an error, when the next Set compares with the kernel.
	applied map[string]kernel.Route
	last    *backend.Config // Network and Own of the state applied last (Peers unused)
}

func (b *hostGW) Up(ctx context.Context) (backend.Local, error) {
	err := b.k.Up(b.ext.Index, func(*kernel.Handle) error {
		if b.fam.V6 {
			return kernel.EnableIPv6Forwarding()
		}
		return nil
	})
	if err != nil {
		return backend.Local{}, err
	}
	b.log.Info("host-gw backend up", "iface", b.ext.Name, "addr", b.fam.Addr(b.ext), "mtu", b.ext.MTU)
	return backend.Local{BackendType: Type, MTU: b.ext.MTU}, nil
}

func (b *hostGW) Set(cfg *backend.Config) error {
	if cfg == nil {
		return errors.New("host-gw backend: Set with a nil config")
	}
	return b.k.Do(func(h *kernel.Handle) error { return b.setLocked(h, cfg) })
}

func (b *hostGW) setLocked(h *kernel.Handle, cfg *backend.Config) error {
	routes, skipped := plan(cfg, b.fam, b.ext)
	b.skips.Log(b.log, skipped)
	owned := kernel.Owned(b.fam.Network(&cfg.Network))
	b.k.Scope(owned)
	var err error
	full := cfg.Resync || b.applied == nil
	if full {
		err = h.SyncRoutes(b.fam.V6, slices.Collect(maps.Values(routes)), owned)
	} else {
		err = h.UpdateRoutes(slices.Collect(maps.Values(b.applied)), slices.Collect(maps.Values(routes)))
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

// wantsLocked says whether a route deleted behind the backend's back is one it installed.
func (b *hostGW) wantsLocked(e kernel.Event) bool {
	for _, r := range b.applied {
		if e.Kind == kernel.RouteGone && r.Dst == e.Route.Dst {
			return true
		}
	}
	return false
}

// repairLocked makes the kernel hold the routes applied last again, after drift (kernel.Keeper).
func (b *hostGW) repairLocked(h *kernel.Handle) error {
	if b.applied == nil || b.last == nil {
		return nil
	}
	if err := h.SyncRoutes(b.fam.V6, slices.Collect(maps.Values(b.applied)), kernel.Owned(b.fam.Network(&b.last.Network))); err != nil {
		b.applied = nil
		return fmt.Errorf("host-gw backend: %w", err)
	}
	return nil
}

// Update applies a change of single peer leases to the state of the last Set (backend.Updater).
func (b *hostGW) Update(ch *backend.Change) error {
	return b.k.Do(func(h *kernel.Handle) error { return b.updateLocked(h, ch) })
}

func (b *hostGW) updateLocked(h *kernel.Handle, ch *backend.Change) error {
	if b.applied == nil || b.last == nil {
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
	if err := h.UpdateRoutes(had, want); err != nil {
		b.applied = nil
		return fmt.Errorf("host-gw backend: %w", err)
	}
	return nil
}

func (b *hostGW) Close() error { return b.k.Close() }

// Stats returns the backend's counters for /metrics: drift_repairs_total counts the repairs of routes
// deleted behind the backend's back (kernel.Keeper).
func (b *hostGW) Stats() map[string]uint64 {
	m := map[string]uint64{"drift_repairs_total": b.k.Repairs()}
	b.skips.AddStats(m)
	return m
}

// Following reports whether drift is repaired from kernel events (backend.Follower).
func (b *hostGW) Following() bool { return b.k.Following() }

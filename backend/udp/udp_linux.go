package udp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// Up creates and brings up the TUN device, opens the sockets and starts the packet loops, all in the calling
// thread's network namespace, and turns on IPv4 forwarding there (and IPv6 forwarding in a dual-stack
// network).
func (b *Backend) Up(ctx context.Context) (_ backend.Local, err error) {
	if err := ctx.Err(); err != nil {
		return backend.Local{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateUp:
		return backend.Local{}, errors.New("udp backend: Up called twice")
	case stateClosed:
		return backend.Local{}, ErrClosed
	}
	var (
		h  *kernel.Handle
		ns *kernel.Namespace
	)
	defer func() {
		if err != nil {
			if h != nil {
				h.Close()
			}
			if ns != nil {
				ns.Close()
			}
		}
	}()
	if h, err = kernel.NewHandle(); err != nil {
		return backend.Local{}, err
	}
	if ns, err = kernel.CurrentNamespace(); err != nil {
		return backend.Local{}, err
	}
	if err = kernel.WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return backend.Local{}, err
	}
	if b.ipv6 {
		if err = kernel.EnableIPv6Forwarding(); err != nil {
			return backend.Local{}, err
		}
	}
	dp, err := b.openDatapath(ctx, h)
	if err != nil {
		return backend.Local{}, err
	}
	b.h, b.ns, b.dp, b.state = h, ns, dp, stateUp
	b.refreshActive(dp)
	b.log.Info("udp backend up", "device", TUNName, "mtu", b.mtu, "listen", dp.socks[0].conn.LocalAddr().String(),
		"queues", len(dp.devs), "offloads", dp.off.String())
	return backend.Local{BackendType: "udp", MTU: b.mtu}, nil
}

// Set assigns the TUN its address (our subnet's network address /32), routes the whole overlay network into
// it, publishes a new peer table built from cfg.Peers and narrows the sockets' filter to the peers. It also
// repairs the device: a TUN deleted under us is recreated, one set down is set up, a changed MTU restored.
// The table is swapped first, so traffic to a new peer flows as soon as possible; kernel errors are
// returned after that (partial progress kept).
func (b *Backend) Set(cfg *backend.Config) error {
	own, network := cfg.Own.Subnet, cfg.Network.Network
	own6, network6 := cfg.Own.IPv6Subnet, cfg.Network.IPv6Network
	switch {
	case b.outer6 && (!own6.IsValid() || !own6.Addr().Is6() || !network6.IsValid()):
		return fmt.Errorf("udp backend: IPv6-only network %q: own lease %s has no IPv6 subnet", network6, cfg.Own.Key())
	case b.outer6:
	case !own.IsValid() || !own.Addr().Is4():
		return fmt.Errorf("udp backend: own lease subnet %q is not IPv4", own)
	case !network.IsValid() || !network.Addr().Is4():
		return fmt.Errorf("udp backend: network %q is not IPv4", network)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateNew:
		return errors.New("udp backend: Set before Up")
	case stateClosed:
		return ErrClosed
	}

	var t *table
	var skipped []backend.Skip
	switch {
	case b.outer6:
		t, skipped = buildTable6(network6, own6, b.ext, cfg.Peers, b.port)
	default:
		t, skipped = buildTable(network.Masked(), own, b.ext, cfg.Peers, b.port)
		if b.ipv6 {
			skipped = append(skipped, t.addIPv6(network6, own6, cfg.Peers)...)
		}
	}
	b.table.Store(t)
	b.skipLog.Log(b.log, skipped)
	b.log.Debug("peer table swapped", "own", own.Masked(), "own6", own6.Masked(), "peers", len(t.byOuter)+len(t.byOuter6),
		"subnets", t.subnets+t.six.subnets)

	st, err := b.h.LinkStateByName(TUNName)
	if errors.Is(err, kernel.ErrNoLink) && b.dp != nil {
		b.gone(b.dp, err) // deleted, and no packet has told the loops yet
	}
	if b.dp == nil || b.dp.lost.Load() {
		if err := b.repairLocked(); err != nil {
			return err
		}
		st, err = b.h.LinkStateByName(TUNName)
	}
	if err != nil {
		return err
	}
	if err := b.setFilterLocked(t); err != nil {
		return err
	}
	if st.MTU != b.mtu {
		b.log.Warn("TUN MTU changed outside weftd; restoring it", "device", TUNName, "mtu", st.MTU, "want", b.mtu)
		if err := b.h.SetLinkMTU(st.Index, b.mtu); err != nil {
			return err
		}
	}
	if !st.Up {
		b.log.Warn("TUN set down outside weftd; setting it up", "device", TUNName)
		if err := b.h.SetLinkUp(st.Index); err != nil {
			return err
		}
	}
	if !b.outer6 {
		if err := b.h.SetLinkAddrs(st.Index, netip.PrefixFrom(own.Masked().Addr(), 32)); err != nil {
			return err
		}
		// The backend owns the routes of ours in its network or through flannel0 (another weftd's, for
		// another network, are left alone); a stale one among them is removed.
		want := []kernel.Route{{Dst: network.Masked(), LinkIndex: st.Index}}
		if err := b.h.SyncRoutes(false, want, kernel.Owned(network.Masked(), st.Index)); err != nil || !b.ipv6 {
			return err
		}
	}
	if !own6.IsValid() || !network6.IsValid() {
		return fmt.Errorf("udp backend: own lease %s has no IPv6 subnet in the dual-stack network %s", cfg.Own.Key(), network6)
	}
	if err := b.h.SetLinkAddrs(st.Index, netip.PrefixFrom(own6.Masked().Addr(), 128)); err != nil {
		return err
	}
	want6 := []kernel.Route{{Dst: network6.Masked(), LinkIndex: st.Index}}
	return b.h.SyncRoutes(true, want6, kernel.Owned(network6.Masked(), st.Index))
}

// repairLocked replaces a lost data path with a new one, in the namespace Up ran in.
func (b *Backend) repairLocked() error {
	if b.dp != nil {
		b.dp.close()
		b.dp = nil
		b.filter, b.filter6 = nil, nil
		b.active.Store(0)
	}
	var dp *datapath
	err := b.ns.Do(func() (err error) {
		dp, err = b.openDatapath(context.Background(), b.h)
		return err
	})
	if err != nil {
		b.broken = fmt.Errorf("udp backend: TUN %q lost and cannot be recreated: %w", TUNName, err)
		return b.broken
	}
	b.broken = nil
	b.dp = dp
	b.refreshActive(dp)
	b.ctl.inc(tunRecreated)
	b.log.Warn("TUN device recreated", "device", TUNName, "queues", len(dp.devs), "offloads", dp.off.String())
	return nil
}

// setFilterLocked narrows every socket's filter to the peers of t, when they changed.
func (b *Backend) setFilterLocked(t *table) error {
	if b.outer6 {
		return b.setFilter6Locked(t)
	}
	peers := make([]uint32, 0, len(t.byOuter))
	for a := range t.byOuter {
		peers = append(peers, a)
	}
	slices.Sort(peers)
	if b.filter != nil && slices.Equal(peers, b.filter) {
		return nil
	}
	for _, s := range b.dp.socks {
		if err := s.control(func(fd int) error { return attachFilter(fd, peers) }); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	b.filter = peers
	return nil
}

// setFilter6Locked is setFilterLocked over an IPv6 underlay.
func (b *Backend) setFilter6Locked(t *table) error {
	peers := slices.SortedFunc(maps.Keys(t.byOuter6), netip.Addr.Compare)
	if b.filter6 != nil && slices.Equal(peers, b.filter6) {
		return nil
	}
	for _, s := range b.dp.socks {
		if err := s.control(func(fd int) error { return attachFilter6(fd, peers) }); err != nil {
			return fmt.Errorf("udp backend: %w", err)
		}
	}
	b.filter6 = peers
	if b.filter6 == nil {
		b.filter6 = []netip.Addr{}
	}
	return nil
}

// Healthy returns an error while the data path cannot work: the TUN was lost and recreating it failed (Set
// retries on every reconcile). The agent's /healthz reports it, so a supervisor can restart weftd.
func (b *Backend) Healthy() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.broken
}

// socketDrops sums the kernel's drop counts of the current sockets.
func (b *Backend) socketDrops() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n uint64
	if b.dp != nil {
		for _, s := range b.dp.socks {
			n += s.drops()
		}
	}
	return n
}

// Close stops the packet loops by closing the TUN and the sockets, waits for them, and closes the netlink
// handle. The TUN device disappears with its fds (and its route with it): for udp no traffic can flow without
// the agent anyway.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateClosed {
		return nil
	}
	wasUp := b.state == stateUp
	b.state = stateClosed
	close(b.done)
	if !wasUp {
		return nil
	}
	var err error
	if b.dp != nil {
		err = b.dp.close()
	}
	b.h.Close()
	b.ns.Close()
	b.log.Debug("udp backend closed")
	if err != nil {
		return fmt.Errorf("close udp backend: %w", err)
	}
	return nil
}

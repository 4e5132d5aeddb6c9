package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// fullRetry is how often Hold tries again in a full network: only an operator can free a subnet, and a
// shorter backoff would only log more.
const fullRetry = 10 * time.Second

// maxAcquireAttempts bounds how often one acquisition re-lists after losing a race for a subnet.
const maxAcquireAttempts = 20

// errNoPublicIP is returned by Hold when the request lacks the public address of a family the network
// config enables.
var errNoPublicIP = errors.New("no public address for an address family the network config enables")

// held is a lease this store holds.
type held struct {
	lease   subnet.Lease
	key     string
	rev     int64    // etcd revision of our last write of key
	session *renewal // keeps the etcd lease alive; nil for a reservation
}

func (h *held) leaseID() clientv3.LeaseID {
	if h.session == nil {
		return clientv3.NoLease
	}
	return h.session.Lease()
}

// done is closed when the keepalive ends; nil (never ready) for a reservation.
func (h *held) done() <-chan struct{} {
	if h.session == nil {
		return nil
	}
	return h.session.Done()
}

// Hold acquires a lease for req (compat.md §4) and keeps it until ctx ends, calling fn with the lease after
// every (re)acquisition and when an operator turns it into a reservation (held true), and with the lost
// lease (held false) before acquiring again.
//
// In an IPv6-only network (EnableIPv4 false) leases are keyed "0.0.0.0-0&<v6>-<len6>", as flannel writes
// them, PublicIP is written as 0.0.0.0, and a node's own lease is found by PublicIPv6 instead of PublicIP.
//
// Acquisition order: (1) an existing lease whose PublicIP is req.Attrs.PublicIP and that fits the config is
// re-written with req.Attrs (a reservation stays one; an ordinary lease gets a fresh etcd lease of ours),
// unless another node (another Attrs.NodeID) holds it under a live etcd lease;
// (2) req.Prev (and req.PrevIPv6), if it fits and no key holds it; (3) a random subnet among the first 100
// free ones. Claims are transactions guarded by the key's revision or absence; a lost race re-lists.
//
// While held, an etcd keepalive renews the etcd lease. If the keepalive ends, or the key is deleted or
// re-written by another holder (another PublicIP, or another etcd lease: a twin), Hold logs a warning and
// acquires again, preferring the same subnet unless a twin holds it. If
// etcd is unreachable, the config is missing or invalid, or the network is full (logged as an error: an
// operator must free a subnet), it logs and retries with backoff.
//
// Hold returns nil when ctx ends, leaving the key and its etcd lease in place (the lease then expires after
// its TTL unless the node comes back). It returns an error only when retrying cannot help: an invalid req
// (no public address of an enabled family), a stored config that differs from req.Config
// (subnet.ErrConfigChanged), or ErrClosed. fn runs on Hold's goroutine; nil means no callback.
func (s *Store) Hold(ctx context.Context, req subnet.AcquireRequest, fn subnet.HoldFunc) error {
	if !req.Attrs.PublicIP.IsValid() {
		req.Attrs.PublicIP = netip.IPv4Unspecified() // IPv6 only: as flannel writes it, and as it reads back
	}
	if !req.Attrs.PublicIP.Is4() {
		return fmt.Errorf("hold lease: PublicIP %s: must be an IPv4 address", req.Attrs.PublicIP)
	}
	if a := req.Attrs.PublicIPv6; a.IsValid() && (!a.Is6() || a.Is4In6()) {
		return fmt.Errorf("hold lease: PublicIPv6 %s: must be an IPv6 address", a)
	}
	value, err := json.Marshal(req.Attrs)
	if err != nil {
		return fmt.Errorf("hold lease: encode lease value: %w", err)
	}
	if fn == nil {
		fn = func(subnet.Lease, bool) {}
	}
	log := s.log.With("public_ip", req.Attrs.PublicIP)
	if req.Attrs.PublicIPv6.IsValid() {
		log = log.With("public_ipv6", req.Attrs.PublicIPv6)
	}
	prev, prev6 := req.Prev.Masked(), req.PrevIPv6.Masked()
	var bo backoff
	for {
		h, err := s.acquire(ctx, log, req.Config, req.Attrs, value, prev, prev6)
		if ctx.Err() != nil {
			if h != nil && h.session != nil {
				h.session.Orphan()
			}
			return nil
		}
		if err != nil {
			if errors.Is(err, errNoPublicIP) || errors.Is(err, subnet.ErrConfigChanged) {
				return err
			}
			if s.closed() {
				return fmt.Errorf("hold lease: %w", ErrClosed)
			}
			d := bo.next()
			var full *subnet.NetworkFullError
			switch {
			case errors.Is(err, subnet.ErrNoConfig):
				log.Warn("network config missing; waiting for an operator to create it", "key", s.configKey(), "retry_in", d)
			case errors.As(err, &full):
				d = fullRetry
				log.Error("cannot acquire a lease; retrying", "err", err, "retry_in", d)
			default:
				log.Warn("acquire lease failed; retrying", "err", err, "retry_in", d)
			}
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		log.Info("lease acquired", "key", h.key, "reservation", h.lease.Reservation, "etcd_lease", fmt.Sprintf("%x", int64(h.leaseID())))
		acquired := time.Now()
		fn(h.lease, true)
		reason := s.keep(ctx, log, h, fn)
		if ctx.Err() != nil {
			return nil
		}
		if s.closed() {
			return fmt.Errorf("hold lease %s: %w", h.key, ErrClosed)
		}
		log.Warn("lease lost; acquiring again, preferring the same subnet", "key", h.key, "reason", reason)
		fn(h.lease, false)
		prev, prev6 = h.lease.Subnet, h.lease.IPv6Subnet
		if time.Since(acquired) < 10*time.Second {
			// Lost soon after taking it: do not spin if something keeps deleting it.
			if !sleep(ctx, bo.next()) {
				return nil
			}
		} else {
			bo.reset()
		}
	}
}

// leaseGrant grants an etcd lease on first use and keeps it alive until taken by a held lease or dropped.
type leaseGrant struct {
	s       *Store
	session *renewal
}

func (g *leaseGrant) id(ctx context.Context) (clientv3.LeaseID, error) {
	if g.session != nil {
		select {
		case <-g.session.Done():
			g.drop(ctx)
		default:
			return g.session.Lease(), nil
		}
	}
	rctx, cancel := g.s.reqCtx(ctx)
	sent := time.Now()
	resp, err := g.s.cli.Grant(rctx, g.s.ttl)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("grant etcd lease (TTL %d s): %w", g.s.ttl, err)
	}
	g.session = g.s.renew(resp.ID, sent, time.Duration(resp.TTL)*time.Second)
	return resp.ID, nil
}

// take hands the session to the caller.
func (g *leaseGrant) take() *renewal {
	s := g.session
	g.session = nil
	return s
}

// drop stops the keepalive and revokes the lease, if any.
func (g *leaseGrant) drop(ctx context.Context) {
	if g.session != nil {
		g.s.dropSession(ctx, g.session)
		g.session = nil
	}
}

// dropSession stops sess's keepalive and revokes its lease: for a lease no key of ours is attached to.
func (s *Store) dropSession(ctx context.Context, sess *renewal) {
	sess.Orphan()
	s.revoke(ctx, sess.Lease())
}

// revoke revokes an etcd lease, best effort (it expires anyway).
func (s *Store) revoke(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(rctx, id); err != nil {
		s.log.Debug("revoke unused etcd lease", "etcd_lease", fmt.Sprintf("%x", int64(id)), "err", err)
	}
}

// revokeIfUnused revokes etcd lease id if no key is attached to it any more: the lease of our previous run,
// after we re-wrote its key with a lease of ours.
func (s *Store) revokeIfUnused(ctx context.Context, id clientv3.LeaseID) {
	rctx, cancel := s.reqCtx(ctx)
	resp, err := s.cli.TimeToLive(rctx, id, clientv3.WithAttachedKeys())
	cancel()
	if err != nil || resp.TTL < 0 || len(resp.Keys) > 0 {
		return
	}
	s.revoke(ctx, id)
}

// acquire claims a lease once (compat.md §4), retrying lost races.
func (s *Store) acquire(ctx context.Context, log *slog.Logger, want *subnet.Config, attrs subnet.Attrs, value []byte, prev, prev6 netip.Prefix) (*held, error) {
	cfg, err := s.Config(ctx)
	if err != nil {
		return nil, err
	}
	if want != nil {
		if d := want.Diff(cfg); d != "" {
			return nil, fmt.Errorf("acquire lease: etcd key %s: %w: %s", s.configKey(), subnet.ErrConfigChanged, d)
		}
	}
	switch {
	case cfg.EnableIPv4 && attrs.PublicIP.IsUnspecified():
		return nil, fmt.Errorf("hold lease: the network config enables IPv4 (Network %s) and PublicIP is unset: %w", cfg.Network, errNoPublicIP)
	case !cfg.EnableIPv4 && !attrs.PublicIPv6.IsValid():
		// In dual stack a lease without PublicIPv6 is only unreachable over IPv6; IPv6 only, it names the node.
		return nil, fmt.Errorf("hold lease: the network config is IPv6-only (IPv6Network %s) and PublicIPv6 is unset: %w", cfg.IPv6Network, errNoPublicIP)
	}
	g := &leaseGrant{s: s}
	defer g.drop(ctx) // a lease granted but not taken
	for attempt := range maxAcquireAttempts {
		if attempt > 0 && !sleep(ctx, rand.N(time.Duration(attempt)*20*time.Millisecond)) {
			return nil, ctx.Err()
		}
		entries, _, err := s.list(ctx)
		if err != nil {
			return nil, err
		}
		// (1) Our own lease from before.
		if own := findOwn(entries, cfg, attrs, prev, prev6); own != nil {
			var opts []clientv3.OpOption
			id := clientv3.NoLease
			if !own.lease.Reservation {
				if id, err = g.id(ctx); err != nil {
					return nil, err
				}
				opts = append(opts, clientv3.WithLease(id))
			}
			rctx, cancel := s.reqCtx(ctx)
			resp, err := s.cli.Txn(rctx).
				If(clientv3.Compare(clientv3.ModRevision(own.key), "=", own.modRev)).
				Then(clientv3.OpPut(own.key, string(value), opts...)).Commit()
			cancel()
			if err != nil {
				return nil, fmt.Errorf("re-write etcd key %s: %w", own.key, err)
			}
			if !resp.Succeeded {
				log.Debug("lease key changed while re-using it; retrying", "key", own.key)
				continue
			}
			if own.etcdLease != clientv3.NoLease && own.etcdLease != id {
				s.revokeIfUnused(ctx, own.etcdLease)
			}
			h := &held{key: own.key, rev: resp.Header.Revision, lease: subnet.Lease{
				Subnet: own.lease.Subnet, IPv6Subnet: own.lease.IPv6Subnet, Attrs: attrs,
				Reservation: own.lease.Reservation, Revision: resp.Header.Revision,
			}}
			if !h.lease.Reservation {
				h.session = g.take()
				h.lease.Expires = time.Now().Add(time.Duration(s.ttl) * time.Second)
			}
			log.Debug("re-using this public IP's lease", "key", own.key)
			return h, nil
		}
		// (2) The previous subnet, or (3) a free one.
		l, err := choose(cfg, entries, prev, prev6)
		if err != nil {
			return nil, err
		}
		id, err := g.id(ctx)
		if err != nil {
			return nil, err
		}
		key := s.leaseKey(l)
		rctx, cancel := s.reqCtx(ctx)
		resp, err := s.cli.Txn(rctx).If(s.unclaimed(l)...).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(id))).Commit()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("create etcd key %s: %w", key, err)
		}
		if !resp.Succeeded {
			log.Debug("lost the race for a subnet; retrying", "key", key)
			continue
		}
		if l.IPv6Subnet.IsValid() {
			// The transaction cannot rule out a racing claim of the same IPv6 subnet under another IPv4 subnet:
			// check afterwards, and give way if the other key is older.
			lost, err := s.lostIPv6Race(ctx, key, l.IPv6Subnet, resp.Header.Revision)
			if err != nil {
				return nil, err
			}
			if lost {
				log.Debug("lost the race for an IPv6 subnet; retrying", "key", key)
				continue
			}
		}
		l.Attrs = attrs
		l.Revision = resp.Header.Revision
		l.Expires = time.Now().Add(time.Duration(s.ttl) * time.Second)
		return &held{key: key, rev: resp.Header.Revision, lease: l, session: g.take()}, nil
	}
	return nil, fmt.Errorf("acquire lease: lost the race for a free subnet %d times in a row", maxAcquireAttempts)
}

// lostIPv6Race reports whether another key, created before ours (at rev), holds IPv6 subnet v6; if so it
// deletes our key.
func (s *Store) lostIPv6Race(ctx context.Context, key string, v6 netip.Prefix, rev int64) (bool, error) {
	entries, _, err := s.list(ctx)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.key != key && e.lease.IPv6Subnet == v6 && e.createRev < rev {
			rctx, cancel := s.reqCtx(ctx)
			_, err := s.cli.Txn(rctx).
				If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
				Then(clientv3.OpDelete(key)).Commit()
			cancel()
			if err != nil {
				return false, fmt.Errorf("give up etcd key %s: %w", key, err)
			}
			return true, nil
		}
	}
	return false, nil
}

// findOwn returns the readable lease of attrs' PublicIP (PublicIPv6 in an IPv6-only network) that fits cfg:
// a reservation first, then the previous subnet, then the first by key. Nil if none. A key held under a live etcd lease by another node (a NodeID
// that differs from attrs.NodeID, both set) is not ours, even with our PublicIP: two nodes behind one NAT
// address each keep their own. A key without a NodeID (flanneld's, or an older weftd's) is taken by PublicIP.
func findOwn(entries []entry, cfg *subnet.Config, attrs subnet.Attrs, prev, prev6 netip.Prefix) *entry {
	ours := func(a subnet.Attrs) bool { return a.PublicIP == attrs.PublicIP }
	isPrev := func(l subnet.Lease) bool { return l.Subnet == prev }
	if !cfg.EnableIPv4 {
		ours = func(a subnet.Attrs) bool { return a.PublicIPv6 == attrs.PublicIPv6 }
		isPrev = func(l subnet.Lease) bool { return l.IPv6Subnet == prev6 }
	}
	var best *entry
	rank := func(e *entry) int {
		switch {
		case e.lease.Reservation:
			return 2
		case isPrev(e.lease):
			return 1
		}
		return 0
	}
	for i := range entries {
		e := &entries[i]
		if e.err != nil || !ours(e.lease.Attrs) || !cfg.Fits(e.lease) || otherNode(e, attrs.NodeID) {
			continue
		}
		if best == nil || rank(e) > rank(best) {
			best = e
		}
	}
	return best
}

// otherNode reports whether e is held, under a live etcd lease, by a node other than nodeID.
func otherNode(e *entry, nodeID string) bool {
	other := e.lease.Attrs.NodeID
	return e.etcdLease != clientv3.NoLease && nodeID != "" && other != "" && other != nodeID
}

// choose picks the subnets for a new lease: prev (and prev6) if free (overlapping no key's subnet) and
// fitting, else random free ones.
// Keys with unreadable values, and keys whose name starts with a readable IPv4 subnet and "&", still take
// their subnets.
func choose(cfg *subnet.Config, entries []entry, prev, prev6 netip.Prefix) (subnet.Lease, error) {
	taken := takenLeases(entries)
	taken4, taken6 := map[netip.Prefix]bool{}, map[netip.Prefix]bool{}
	for _, l := range taken {
		taken4[l.Subnet] = true
		taken6[l.IPv6Subnet] = true
	}
	// free reports whether p overlaps no key's subnet, of any length, as for a fresh pick.
	free := func(p netip.Prefix, taken map[netip.Prefix]bool) bool {
		return len(subnet.FreeSubnets(p.Bits(), p.Addr(), p.Addr(), taken, 1)) == 1
	}
	pick := func(v6 bool) (netip.Prefix, error) {
		p, ok := subnet.PickFree(cfg, taken, v6)
		if !ok {
			if v6 {
				return p, &subnet.NetworkFullError{Network: cfg.IPv6Network, SubnetLen: cfg.IPv6SubnetLen, Leases: len(taken)}
			}
			return p, &subnet.NetworkFullError{Network: cfg.Network, SubnetLen: cfg.SubnetLen, Leases: len(taken)}
		}
		return p, nil
	}
	if !cfg.EnableIPv4 {
		// IPv6 only: the key names no IPv4 subnet.
		if prev6.IsValid() && free(prev6, taken6) && cfg.Fits(subnet.Lease{IPv6Subnet: prev6}) {
			return subnet.Lease{IPv6Subnet: prev6}, nil
		}
		p, err := pick(true)
		return subnet.Lease{IPv6Subnet: p}, err
	}
	if prev.IsValid() && free(prev, taken4) {
		l := subnet.Lease{Subnet: prev}
		if cfg.EnableIPv6 {
			l.IPv6Subnet = prev6
			if !prev6.IsValid() || !free(prev6, taken6) || !cfg.Fits(l) {
				p, err := pick(true)
				if err != nil {
					return subnet.Lease{}, err
				}
				l.IPv6Subnet = p
			}
		}
		if cfg.Fits(l) {
			return l, nil
		}
	}
	var l subnet.Lease
	var err error
	if l.Subnet, err = pick(false); err != nil {
		return subnet.Lease{}, err
	}
	if cfg.EnableIPv6 {
		if l.IPv6Subnet, err = pick(true); err != nil {
			return subnet.Lease{}, err
		}
	}
	return l, nil
}

// keep watches the held key and the keepalive until the lease is lost or ctx ends. It returns why the lease
// was lost, or "" when ctx ended. Either way h's keepalive is stopped when it returns.
func (s *Store) keep(ctx context.Context, log *slog.Logger, h *held, fn subnet.HoldFunc) string {
	// clientv3's Watch returns only once etcd has confirmed the watch, which takes as long as etcd is
	// unreachable. It runs on its own goroutine, so that the keepalive ending meanwhile is seen at once;
	// stopWatch ends it.
	var wg sync.WaitGroup
	defer wg.Wait()
	stopWatch := func() {}
	defer func() { stopWatch() }()
	var wch clientv3.WatchChan
	var watching <-chan clientv3.WatchChan // delivers wch once the watch is set up; nil otherwise
	watch := func() {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx)) // see leaseWatch.run
		stopWatch = cancel
		started := make(chan clientv3.WatchChan, 1)
		watching = started
		rev := h.rev + 1
		wg.Go(func() { started <- s.cli.Watch(wctx, h.key, clientv3.WithRev(rev)) })
	}
	watch()
	var reread <-chan time.Time
	var bo backoff
	for {
		select {
		case wch = <-watching:
			watching = nil
		case <-ctx.Done():
			if h.session != nil {
				h.session.Orphan() // no revoke: the lease stays until its TTL runs out
			}
			return ""
		case <-h.done():
			if ctx.Err() != nil {
				continue
			}
			h.session.Orphan()
			return fmt.Sprintf("keepalive of etcd lease %x ended: it expired, was revoked, or etcd was unreachable for its TTL", int64(h.leaseID()))
		case wr, ok := <-wch:
			if !ok || wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
				if ctx.Err() != nil {
					continue
				}
				if s.closed() {
					if h.session != nil {
						h.session.Orphan()
					}
					return "store closed"
				}
				log.Debug("watch of own lease key interrupted; re-reading it", "key", h.key, "err", wr.Err(), "compact_revision", wr.CompactRevision)
				stopWatch()
				wch = nil
				reread = time.After(0)
				continue
			}
			for _, ev := range wr.Events {
				reason := "lease key deleted (or expired)"
				if ev.Type == clientv3.EventTypePut {
					reason = s.ownKeyWritten(ctx, log, h, ev.Kv, fn)
				}
				if reason != "" {
					s.release(ctx, h)
					return reason
				}
			}
		case <-reread:
			reread = nil
			rctx, cancel := s.reqCtx(ctx)
			resp, err := s.cli.Get(rctx, h.key)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					d := bo.next()
					log.Warn("read own lease key failed; retrying", "key", h.key, "err", err, "retry_in", d)
					reread = time.After(d)
				}
				continue
			}
			bo.reset()
			reason := "lease key deleted (or expired)"
			if len(resp.Kvs) > 0 {
				reason = s.ownKeyWritten(ctx, log, h, resp.Kvs[0], fn)
			}
			if reason != "" {
				s.release(ctx, h)
				return reason
			}
			h.rev = resp.Header.Revision
			watch()
		}
	}
}

// release stops h's keepalive and revokes its etcd lease, once the key no longer uses it.
func (s *Store) release(ctx context.Context, h *held) {
	if h.session != nil {
		s.dropSession(ctx, h.session)
	}
}

// ownKeyWritten checks a write of the held key. It returns why the lease is lost, or "" if it is still ours.
func (s *Store) ownKeyWritten(ctx context.Context, log *slog.Logger, h *held, kv *mvccpb.KeyValue, fn subnet.HoldFunc) string {
	e := s.decode(kv)
	switch {
	case e.err != nil:
		return fmt.Sprintf("lease key re-written with an unreadable value: %v", e.err)
	case e.lease.Attrs.PublicIP != h.lease.Attrs.PublicIP:
		return fmt.Sprintf("lease key taken over by public IP %s", e.lease.Attrs.PublicIP)
	case e.lease.Attrs.PublicIPv6 != h.lease.Attrs.PublicIPv6:
		return fmt.Sprintf("lease key taken over by public IPv6 %s", e.lease.Attrs.PublicIPv6)
	case e.etcdLease == h.leaseID():
		// Our own write, or a harmless update.
	case e.etcdLease == clientv3.NoLease:
		// An operator reserved our lease: keep it, without an etcd lease of ours.
		log.Info("lease converted to a reservation", "key", h.key)
		s.release(ctx, h)
		h.session = nil
		h.lease.Reservation = true
		h.lease.Expires = time.Time{}
		h.lease.Revision = e.modRev
		fn(h.lease, true)
	default:
		// Somebody else wrote our key under their etcd lease: a twin with our PublicIP. Both would use one
		// subnet; give it up at once rather than when our keepalive next fails (hours with a long TTL).
		return fmt.Sprintf("lease key re-written under etcd lease %x by node %q with public IP %s",
			int64(e.etcdLease), e.lease.Attrs.NodeID, e.lease.Attrs.PublicIP)
	}
	h.lease.Revision = e.modRev
	return ""
}

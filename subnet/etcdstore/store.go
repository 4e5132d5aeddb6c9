// Package etcdstore is the subnet lease store on etcd v3, compatible with flannel's keys and values
// (docs compat.md §1-4): the network config at "<prefix>/config" and one key per lease at
// "<prefix>/subnets/<A.B.C.D>-<LEN>[&<v6>-<LEN6>]" whose value is the lease's Attrs as JSON.
//
// A lease key carries an etcd lease (TTL Config.LeaseTTL) that its holder renews (renewal: one etcd
// keepalive request every third of the TTL);
// a key without an etcd lease is a reservation and never expires. Keys that cannot be parsed, by name or
// value, are skipped with a warning and never overwritten.
//
// Store implements subnet.Store (Config, Hold, Watch) for the agent, and offers the operations the ops
// subcommands need (SetConfig, RawConfig, Leases, Reserve, Unreserve). Its methods are safe for concurrent
// use. Hold and Watch run on the caller's goroutine; the only goroutines the store starts are the etcd
// client's and the renewal of a held lease's etcd lease, which end with Hold's context or Close.
package etcdstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"

	"github.com/weft-net/weft/subnet"
)

// Errors of the ops methods, for errors.Is.
var (
	// ErrNotFound means no lease key exists for the subnet.
	ErrNotFound = errors.New("no lease for subnet")
	// ErrNotReservation means the subnet's key is an ordinary lease (it has an etcd lease attached).
	ErrNotReservation = errors.New("lease is not a reservation")
	// ErrConflict means the subnet is held by another node, or its key changed while we updated it.
	ErrConflict = errors.New("lease conflict")
	// ErrClosed is returned by WaitConfig, Hold and Watch when the store is closed while they run.
	ErrClosed = errors.New("etcd store closed")
)

// Store is the lease store on etcd. Create it with New; Close it when done.
type Store struct {
	cli        *clientv3.Client
	log        *slog.Logger
	endpoints  []string
	prefix     string
	ttl        int64 // etcd lease TTL in seconds
	reqTimeout time.Duration
	closeOnce  sync.Once

	mu     sync.Mutex       // guards warned
	warned map[string]int64 // unreadable key -> ModRevision already warned about

	// testHookBeforeWatch, if set, runs in Watch between listing and starting the watch.
	testHookBeforeWatch func()
}

var _ subnet.Store = (*Store)(nil)

// New creates a store and its etcd client. It does not wait for etcd to be reachable, except to
// authenticate when cfg.Username is set (bounded by cfg.DialTimeout). log gets the component attribute
// "etcdstore"; nil discards.
func New(cfg Config, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "etcdstore")
	eps, err := cfg.endpoints()
	if err != nil {
		return nil, err
	}
	ccfg := clientv3.Config{
		Endpoints:            eps,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          orDefault(cfg.DialTimeout, DefaultDialTimeout),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Logger:               newZapLogger(log.With("etcd_client", true)),
		// gRPC's default reconnect backoff grows to 2 minutes; an agent should notice a returning etcd
		// within seconds.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	}
	if cfg.dial != nil {
		ccfg.DialOptions = append(ccfg.DialOptions, grpc.WithContextDialer(cfg.dial))
	}
	if cfg.usesTLS() {
		if ccfg.TLS, err = cfg.tlsConfig(); err != nil {
			return nil, err
		}
	} // else: plain http, ccfg.TLS stays nil.
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w: %w", strings.Join(eps, ","), ErrConnect, explain(context.Background(), eps, err))
	}
	return &Store{
		cli:        cli,
		log:        log,
		endpoints:  eps,
		prefix:     cfg.prefix(),
		ttl:        cfg.leaseTTLSeconds(),
		reqTimeout: orDefault(cfg.RequestTimeout, DefaultRequestTimeout),
		warned:     map[string]int64{},
	}, nil
}

// Close closes the etcd client. Held leases stay in etcd until their TTL runs out. Close is idempotent.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() { err = s.cli.Close() })
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func (s *Store) configKey() string              { return s.prefix + "/config" }
func (s *Store) subnetsPrefix() string          { return s.prefix + "/subnets/" }
func (s *Store) leaseKey(l subnet.Lease) string { return s.subnetsPrefix() + l.Key() }

// closed reports whether Close was called.
func (s *Store) closed() bool { return s.cli.Ctx().Err() != nil }

// reqCtx bounds one etcd request.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.reqTimeout)
}

// Config reads and validates the network config. A missing key gives an error wrapping subnet.ErrNoConfig.
func (s *Store) Config(ctx context.Context) (*subnet.Config, error) {
	raw, err := s.RawConfig(ctx)
	if err != nil {
		return nil, err
	}
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("etcd key %s: %w", s.configKey(), err)
	}
	return cfg, nil
}

// WaitConfig implements subnet.Store: Config until it succeeds (subnet.PollConfig), reporting each failure,
// with an unreachable etcd explained (see Explain).
func (s *Store) WaitConfig(ctx context.Context, report func(error)) (*subnet.Config, error) {
	cfg, err := subnet.PollConfig(ctx, s.cli.Ctx().Done(), func(ctx context.Context) (*subnet.Config, error) {
		cfg, err := s.Config(ctx)
		return cfg, s.Explain(ctx, err)
	}, report)
	if err != nil && ctx.Err() == nil && s.closed() {
		return nil, fmt.Errorf("read etcd key %s: %w", s.configKey(), ErrClosed)
	}
	return cfg, err
}

// RawConfig returns the network config's JSON as stored. A missing key gives an error wrapping
// subnet.ErrNoConfig.
func (s *Store) RawConfig(ctx context.Context) ([]byte, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	key := s.configKey()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read etcd key %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcd key %s: %w", key, subnet.ErrNoConfig)
	}
	return resp.Kvs[0].Value, nil
}

// SetConfig validates raw with subnet.ParseConfig and stores it, as given, as the network config.
func (s *Store) SetConfig(ctx context.Context, raw []byte) error {
	key := s.configKey()
	if _, err := subnet.ParseConfig(raw); err != nil {
		return fmt.Errorf("set etcd key %s: %w", key, err)
	}
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	if _, err := s.cli.Put(ctx, key, string(raw)); err != nil {
		return fmt.Errorf("set etcd key %s: %w", key, err)
	}
	return nil
}

// entry is one key under "<prefix>/subnets/".
type entry struct {
	key   string
	value []byte
	// lease has Subnet and IPv6Subnet whenever the key name parses, even if the value does not; the rest
	// only when err is nil.
	lease subnet.Lease
	// claim4 is the IPv4 subnet named before any "&" in the key name, even if the rest does not parse:
	// acquisition treats it as taken (the claim transaction guards the same names).
	claim4    netip.Prefix
	etcdLease clientv3.LeaseID
	modRev    int64
	createRev int64
	err       error // why the key name or value is unreadable
}

func (s *Store) decode(kv *mvccpb.KeyValue) entry {
	e := entry{key: string(kv.Key), value: kv.Value, etcdLease: clientv3.LeaseID(kv.Lease), modRev: kv.ModRevision, createRev: kv.CreateRevision}
	name := strings.TrimPrefix(e.key, s.subnetsPrefix())
	name4, _, _ := strings.Cut(name, "&")
	e.claim4, _, _ = subnet.ParseKeyName(name4)
	v4, v6, err := subnet.ParseKeyName(name)
	if err != nil {
		e.err = fmt.Errorf("etcd key %s: %w", e.key, err)
		return e
	}
	e.lease.Subnet, e.lease.IPv6Subnet = v4, v6
	var a subnet.Attrs
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		e.err = fmt.Errorf("etcd key %s: lease value %q: %w", e.key, truncate(kv.Value), err)
		return e
	}
	e.lease.Attrs = a
	e.lease.Reservation = kv.Lease == 0
	e.lease.Revision = kv.ModRevision
	e.lease.Created = kv.CreateRevision
	return e
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// warnUnreadable logs a skipped key once per ModRevision.
func (s *Store) warnUnreadable(e entry) {
	s.mu.Lock()
	seen := s.warned[e.key] == e.modRev
	s.warned[e.key] = e.modRev
	s.mu.Unlock()
	if !seen {
		s.log.Warn("skipping unreadable lease key; it is left as it is", "key", e.key, "err", e.err)
	}
}

// Unreadable returns how many lease keys in etcd cannot be read now (a bad key name or value), as the last
// listing and the watch since saw them: the keys warned about, skipped and left as they are.
func (s *Store) Unreadable() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.warned)
}

// forgetUnreadable drops key from the warned set (it was deleted or became readable), so the set holds only
// keys that are unreadable now and does not grow with every garbage key ever seen.
func (s *Store) forgetUnreadable(key string) {
	s.mu.Lock()
	delete(s.warned, key)
	s.mu.Unlock()
}

// list reads every lease key. Unreadable keys are included (with err set) and logged.
func (s *Store) list(ctx context.Context) ([]entry, int64, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.subnetsPrefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list etcd keys %s: %w", s.subnetsPrefix(), err)
	}
	out := make([]entry, 0, len(resp.Kvs))
	unreadable := map[string]bool{}
	for _, kv := range resp.Kvs {
		e := s.decode(kv)
		if e.err != nil {
			s.warnUnreadable(e)
			unreadable[e.key] = true
		}
		out = append(out, e)
	}
	s.mu.Lock()
	for k := range s.warned {
		if !unreadable[k] {
			delete(s.warned, k)
		}
	}
	s.mu.Unlock()
	return out, resp.Header.Revision, nil
}

// Leases returns every readable lease, sorted by subnet, with Expires set from the remaining TTL of its etcd
// lease (zero for reservations).
func (s *Store) Leases(ctx context.Context) ([]subnet.Lease, error) {
	entries, _, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	ttls := map[clientv3.LeaseID]time.Time{}
	var out []subnet.Lease
	for _, e := range entries {
		if e.err != nil {
			continue
		}
		l := e.lease
		if e.etcdLease != clientv3.NoLease {
			exp, ok := ttls[e.etcdLease]
			if !ok {
				rctx, cancel := s.reqCtx(ctx)
				resp, err := s.cli.TimeToLive(rctx, e.etcdLease)
				cancel()
				if err != nil {
					return nil, fmt.Errorf("etcd key %s: TTL of etcd lease %x: %w", e.key, int64(e.etcdLease), err)
				}
				exp = time.Now().Add(time.Duration(max(resp.TTL, 0)) * time.Second)
				ttls[e.etcdLease] = exp
			}
			l.Expires = exp
		}
		out = append(out, l)
	}
	slices.SortFunc(out, subnet.CompareLeases)
	return out, nil
}

// findSubnet returns the entry whose key names IPv4 subnet p (see entry.claim4), or for an IPv6 p the
// entry whose key names IPv6 subnet p; nil if none.
func findSubnet(entries []entry, p netip.Prefix) *entry {
	for i := range entries {
		if entries[i].claim4 == p || (p.Addr().Is6() && entries[i].lease.IPv6Subnet == p) {
			return &entries[i]
		}
	}
	return nil
}

// takenLeases returns the subnets that keys take, readable or not, as leases for subnet.PickFree: the IPv4
// subnet each key name claims and the IPv6 subnet of each fully readable name.
func takenLeases(entries []entry) []subnet.Lease {
	var out []subnet.Lease
	for _, e := range entries {
		if e.claim4.IsValid() || e.lease.IPv6Subnet.IsValid() {
			out = append(out, subnet.Lease{Subnet: e.claim4, IPv6Subnet: e.lease.IPv6Subnet})
		}
	}
	return out
}

// unclaimed returns transaction conditions that hold while no key names l's IPv4 subnet ("<v4>" or
// "<v4>&...") and l's own key does not exist: the guard of a claim.
func (s *Store) unclaimed(l subnet.Lease) []clientv3.Cmp {
	if !l.Subnet.IsValid() {
		// IPv6 only: every such key starts "0.0.0.0-0&"; the key itself is the guard, and a claim of the same
		// IPv6 subnet under another key name is caught after the fact (lostIPv6Race).
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.leaseKey(l)), "=", 0)}
	}
	v4Key := s.subnetsPrefix() + subnet.KeyName(l.Subnet, netip.Prefix{})
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(s.leaseKey(l)), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(v4Key), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(v4Key+"&"), "=", 0).WithRange(v4Key + "'"), // "'" is the byte after "&"
	}
}

// Reserve makes subnet p a reservation (a key without an etcd lease, which never expires) for the node with
// publicIP. An existing lease of p held by publicIP is converted in place, keeping its value; one held by
// another node is an ErrConflict. If p is free it must fit the network config; in a dual-stack network a free
// IPv6 subnet is reserved along with it. The value of a new reservation holds only PublicIP, as flannel's
// documentation suggests; the node fills in its backend data when it takes the lease.
//
// In an IPv6-only network p is an IPv6 subnet and publicIP the node's PublicIPv6 (see reserve6).
func (s *Store) Reserve(ctx context.Context, p netip.Prefix, publicIP netip.Addr) error {
	if p.IsValid() && p.Addr().Is6() {
		return s.reserve6(ctx, p, publicIP)
	}
	if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
		return fmt.Errorf("reserve %s: want a masked IPv4 subnet", p)
	}
	if !publicIP.Is4() {
		return fmt.Errorf("reserve %s: public IP %s: must be an IPv4 address", p, publicIP)
	}
	entries, _, err := s.list(ctx)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", p, err)
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	if e := findSubnet(entries, p); e != nil {
		return s.reserveExisting(rctx, e, p, publicIP, e.lease.Attrs.PublicIP)
	}
	cfg, err := s.Config(ctx)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", p, err)
	}
	l := subnet.Lease{Subnet: p, Attrs: subnet.Attrs{PublicIP: publicIP}}
	if cfg.EnableIPv6 {
		taken := takenLeases(entries)
		v6, ok := subnet.PickFree(cfg, taken, true)
		if !ok {
			return fmt.Errorf("reserve %s: %w", p, &subnet.NetworkFullError{Network: cfg.IPv6Network, SubnetLen: cfg.IPv6SubnetLen, Leases: len(taken)})
		}
		l.IPv6Subnet = v6
	}
	if !cfg.Fits(l) {
		return fmt.Errorf("reserve %s: outside the network config's allocatable range %s-%s /%d", p, cfg.SubnetMin, cfg.SubnetMax, cfg.SubnetLen)
	}
	return s.createReservation(rctx, p, l)
}

// createReservation creates the key of lease l (for subnet p) without an etcd lease, if no key claims it.
func (s *Store) createReservation(ctx context.Context, p netip.Prefix, l subnet.Lease) error {
	value, err := json.Marshal(l.Attrs)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", p, err)
	}
	key := s.leaseKey(l)
	resp, err := s.cli.Txn(ctx).If(s.unclaimed(l)...).Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return fmt.Errorf("reserve %s: create etcd key %s: %w", p, key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("reserve %s: a key for it was created meanwhile: %w", p, ErrConflict)
	}
	log := s.log.With("key", key, "public_ip", l.Attrs.PublicIP)
	if l.Attrs.PublicIPv6.IsValid() {
		log = log.With("public_ipv6", l.Attrs.PublicIPv6)
	}
	log.Info("reservation created")
	return nil
}

// reserveExisting converts e, the key of subnet p, into a reservation (keeping its value) for the node
// with publicIP; holder is the address of that family in e's lease. Another holder is an ErrConflict, a
// reservation already is left as it is.
func (s *Store) reserveExisting(ctx context.Context, e *entry, p netip.Prefix, publicIP, holder netip.Addr) error {
	switch {
	case e.err != nil:
		return fmt.Errorf("reserve %s: key is unreadable, not changing it: %w", p, e.err)
	case holder != publicIP:
		return fmt.Errorf("reserve %s for %s: etcd key %s is held by %s: %w", p, publicIP, e.key, holder, ErrConflict)
	case e.lease.Reservation:
		return nil
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
		Then(clientv3.OpPut(e.key, string(e.value))).Commit()
	if err != nil {
		return fmt.Errorf("reserve %s: update etcd key %s: %w", p, e.key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("reserve %s: etcd key %s changed meanwhile: %w", p, e.key, ErrConflict)
	}
	s.log.Info("lease converted to a reservation", "key", e.key, "public_ip", publicIP)
	return nil
}

// reserve6 is Reserve in an IPv6-only network: IPv6 subnet p for the node with PublicIPv6 publicIP. The key
// is "0.0.0.0-0&<p>" and the value holds PublicIP 0.0.0.0 and PublicIPv6, as flannel writes an IPv6-only
// lease; an existing lease of p held by publicIP is converted in place.
func (s *Store) reserve6(ctx context.Context, p netip.Prefix, publicIP netip.Addr) error {
	if p.Masked() != p {
		return fmt.Errorf("reserve %s: want a masked IPv6 subnet", p)
	}
	if !publicIP.Is6() || publicIP.Is4In6() {
		return fmt.Errorf("reserve %s: public IP %s: must be the node's IPv6 address", p, publicIP)
	}
	cfg, err := s.Config(ctx)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", p, err)
	}
	if cfg.EnableIPv4 {
		return fmt.Errorf("reserve %s: the network has IPv4 (Network %s): reserve the node's IPv4 subnet; its IPv6 subnet comes with it", p, cfg.Network)
	}
	entries, _, err := s.list(ctx)
	if err != nil {
		return fmt.Errorf("reserve %s: %w", p, err)
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	if e := findSubnet(entries, p); e != nil {
		return s.reserveExisting(rctx, e, p, publicIP, e.lease.Attrs.PublicIPv6)
	}
	l := subnet.Lease{IPv6Subnet: p, Attrs: subnet.Attrs{PublicIP: netip.IPv4Unspecified(), PublicIPv6: publicIP}}
	if !cfg.Fits(l) {
		return fmt.Errorf("reserve %s: outside the network config's allocatable range %s-%s /%d", p, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, cfg.IPv6SubnetLen)
	}
	return s.createReservation(rctx, p, l)
}

// Unreserve deletes the reservation of subnet p (even one with an unreadable value). It refuses an ordinary
// lease (ErrNotReservation) and a missing key (ErrNotFound). A node holding the reservation takes the same subnet again as an ordinary lease.
func (s *Store) Unreserve(ctx context.Context, p netip.Prefix) error {
	return s.deleteSubnetKey(ctx, "unreserve", p, func(e *entry) error {
		if e.etcdLease != clientv3.NoLease {
			return fmt.Errorf("etcd key %s has etcd lease %x: %w", e.key, int64(e.etcdLease), ErrNotReservation)
		}
		return nil
	})
}

// DeleteLease deletes the key holding subnet p (IPv4, or IPv6 for a dual-stack or IPv6-only lease), lease or reservation, even one with an unreadable value.
// A node still running re-acquires a subnet (preferring the same one); stop its agent first to evict it. A
// missing key is ErrNotFound.
func (s *Store) DeleteLease(ctx context.Context, p netip.Prefix) error {
	return s.deleteSubnetKey(ctx, "delete lease", p, nil)
}

// deleteSubnetKey deletes the key holding IPv4 subnet p if allow (nil: always) accepts it, guarded by the
// revision it was read at. op names the operation in errors and the log.
func (s *Store) deleteSubnetKey(ctx context.Context, op string, p netip.Prefix, allow func(*entry) error) error {
	entries, _, err := s.list(ctx)
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, p, err)
	}
	e := findSubnet(entries, p)
	if e == nil {
		return fmt.Errorf("%s %s: %w", op, p, ErrNotFound)
	}
	if allow != nil {
		if err := allow(e); err != nil {
			return fmt.Errorf("%s %s: %w", op, p, err)
		}
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
		Then(clientv3.OpDelete(e.key)).Commit()
	if err != nil {
		return fmt.Errorf("%s %s: delete etcd key %s: %w", op, p, e.key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%s %s: etcd key %s changed meanwhile: %w", op, p, e.key, ErrConflict)
	}
	s.log.Info("etcd key deleted", "op", op, "key", e.key)
	return nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore"
	"github.com/weft-net/weft/subnet/kubestore"
)

// run is the agent: it returns nil when ctx ends (SIGTERM), leaving the lease, the env file and the kernel
// state in place, and an error for a problem that a restart with the same configuration cannot fix, or for
// a change that a restart applies (errRestart: the network config or the external interface changed).
func run(ctx context.Context, cfg Config, log *slog.Logger) error {
	log.Info("starting weftd", "version", version, "config", cfg)
	unlock, err := subnet.LockEnvFile(cfg.SubnetFile)
	if err != nil {
		return nilIfDone(ctx, err)
	}
	defer unlock()
	a := &agent{cfg: cfg, log: log, kick: make(chan struct{}, 1), health: newHealth()}
	a.health.ready = a.ready

	// The health server comes first, so a liveness probe sees weftd alive while it waits for its store, its
	// config or its lease (/readyz says 503 until then).
	var wg sync.WaitGroup
	defer wg.Wait()
	hctx, stopHealth := context.WithCancel(ctx)
	defer stopHealth()
	if cfg.HealthzPort != 0 {
		srv, err := a.health.listen(cfg.healthzAddr())
		if err != nil {
			return err
		}
		wg.Go(func() { a.health.serve(hctx, srv, log) })
	}

	store, err := openStore(ctx, cfg, log)
	if err != nil {
		return nilIfDone(ctx, err)
	}
	defer store.Close()
	a.health.metrics.setStore(store)

	netCfg, err := waitConfig(ctx, store, cfg.configWhere(), log)
	if err != nil {
		return nilIfDone(ctx, err)
	}
	if netCfg.DefaultedBackend {
		log.Info("network config has no Backend.Type; using the default", "backend", netCfg.BackendType)
	}
	sel := cfg.ifaceSelector()
	sel.NoIPv4, sel.IPv6 = !netCfg.EnableIPv4, netCfg.EnableIPv6
	var prevData json.RawMessage // what this node published before, for a backend to keep its identity
	if ks, ok := store.(*kubestore.Store); ok {
		info, err := ks.NodeInfo(ctx)
		if err != nil {
			log.Warn("cannot read this node's Node; going on without its node-public-ip and previous backend data", "err", err)
		}
		if info.PublicIP.IsValid() && !sel.PublicIP.IsValid() {
			log.Info("using the node's node-public-ip annotation as --public-ip", "public-ip", info.PublicIP)
			sel.PublicIP = info.PublicIP
		}
		if info.PublicIPv6.IsValid() && !sel.PublicIPv6.IsValid() {
			log.Info("using the node's node-public-ipv6 annotation as --public-ipv6", "public-ipv6", info.PublicIPv6)
			sel.PublicIPv6 = info.PublicIPv6
		}
		if info.BackendType == netCfg.BackendType {
			prevData = info.BackendData
		}
	}
	ext, err := backend.SelectExternal(sel)
	if err != nil {
		return fmt.Errorf("select external interface: %w", err)
	}
	log.Info("using external interface", "iface", ext.Name, "addr", ext.Addr, "public-ip", ext.PublicIP, "addr6", ext.Addr6, "public-ipv6", ext.PublicIPv6, "mtu", ext.MTU)

	a.net = netCfg
	if a.be, a.local, err = startBackend(ctx, netCfg, ext, cfg, prevData, a.poke, log); err != nil {
		return err
	}
	defer func() {
		if err := a.be.Close(); err != nil {
			log.Error("close backend", "err", err)
		}
	}()
	a.health.metrics.setBackend(netCfg.BackendType, a.be)
	a.health.setStatus(a.status)
	if c, ok := a.be.(backend.Checker); ok {
		a.health.setAlive(c.Healthy)
	}
	if a.rules, err = newRuleManager(cfg, netCfg, func(ok bool) { a.health.rulesPending.Store(!ok) }, log); err != nil {
		return err
	}
	defer a.rules.Close() // the rules stay in place (compat §8)

	nodeID := cfg.NodeID
	if nodeID == "" {
		nodeID = defaultNodeID(os.ReadFile, os.Hostname)
	}
	log.Info("node identity", "node-id", nodeID)
	req := subnet.AcquireRequest{Config: netCfg, Attrs: subnet.Attrs{
		PublicIP: ext.PublicIP, BackendType: a.local.BackendType, BackendData: a.local.BackendData, NodeID: nodeID,
		PublicIPv6: ext.PublicIPv6, BackendV6Data: a.local.BackendV6Data,
	}}
	if prev, err := subnet.ReadEnvFile(cfg.SubnetFile); err == nil {
		req.Prev, req.PrevIPv6 = prev.Subnet.Masked(), prev.IPv6Subnet.Masked()
		log.Info("found previous env file", "path", cfg.SubnetFile, "subnet", req.Prev)
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("ignoring unreadable previous env file", "err", err)
	}

	// A change that weftd does not apply live (the network config, the external interface) stops it with
	// errRestart as the cause, so that its supervisor starts it again with the change.
	outer := ctx
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	a.stop = stop
	var agentWG sync.WaitGroup
	agentWG.Go(func() { a.holdLease(ctx, store, req) })
	agentWG.Go(func() { a.watchLeases(ctx, store) })
	agentWG.Go(func() { a.reconcileLoop(ctx) })
	agentWG.Go(func() { a.watchConfig(ctx, store) })
	agentWG.Go(func() { a.watchUnderlay(ctx, sel, ext) })
	agentWG.Go(func() { a.watchLeaseTTL(ctx, store) })
	a.startProber(ctx, &agentWG)
	agentWG.Wait()
	if cause := context.Cause(ctx); outer.Err() == nil && errors.Is(cause, errRestart) {
		if errors.Is(cause, subnet.ErrConfigChanged) {
			a.removePeers()
		}
		log.Error("stopping so that weftd starts again with the change", "err", cause)
		return cause
	}
	log.Info("stopped; lease, env file and kernel state left in place")
	return nil
}

// errRestart is the cause of a stop for a change that a restart applies; run returns it (exit status 1).
var errRestart = errors.New("restart needed")

// watchConfig compares the stored network config with the one weftd runs with, every reconcile interval.
// A change of what shapes leases or the data path (subnet.Config.Diff) is not applied live: weftd stops
// (errRestart), so that it starts again with the new config rather than mix the old and the new.
func (a *agent) watchConfig(ctx context.Context, store subnet.Store) {
	t := time.NewTicker(a.cfg.Reconcile)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, err := store.Config(ctx)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Debug("read network config", "err", err)
			}
			continue
		}
		if d := a.net.Diff(c); d != "" {
			src := a.cfg.configWhere()
			a.stop(fmt.Errorf("%w: %s %s: %w: %s", errRestart, src.what, src.where, subnet.ErrConfigChanged, d))
			return
		}
	}
}

// watchUnderlay selects the external interface again when the kernel's links, addresses or routes change
// (kernel.WatchUnderlay; without it every underlayCheck), and every reconcile interval. While it cannot be
// selected (its address is gone, say) weftd is not ready; if it comes back different (another address,
// index or MTU), weftd stops (errRestart) so that it starts again publishing and using the new one.
func (a *agent) watchUnderlay(ctx context.Context, sel backend.IfaceSelector, ext backend.External) {
	every := a.cfg.Reconcile
	var changes <-chan struct{}
	if w, err := kernel.WatchUnderlay(); err != nil {
		a.log.Debug("kernel events for the external interface unavailable; checking it every few seconds", "err", err)
		every = min(every, underlayCheck)
	} else {
		defer w.Close()
		changes = w.Changes()
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changes:
		}
		now, err := backend.SelectExternal(sel)
		a.mu.Lock()
		was := a.underlayLost
		a.underlayLost = err != nil
		a.mu.Unlock()
		switch {
		case err != nil:
			if !was {
				a.log.Error("external interface lost; not ready until it is back", "iface", ext.Name, "addr", ext.Addr, "err", err)
			}
		case now != ext:
			a.stop(fmt.Errorf("%w: external interface changed from %s #%d %s %s (public %s %s, mtu %d) to %s #%d %s %s (public %s %s, mtu %d)",
				errRestart, ext.Name, ext.Index, ext.Addr, ext.Addr6, ext.PublicIP, ext.PublicIPv6, ext.MTU,
				now.Name, now.Index, now.Addr, now.Addr6, now.PublicIP, now.PublicIPv6, now.MTU))
			return
		case was:
			a.log.Info("external interface back", "iface", ext.Name, "addr", ext.Addr)
		}
	}
}

// underlayCheck is how often watchUnderlay looks at the external interface without kernel events.
const underlayCheck = 5 * time.Second

// removePeers removes the data path to the peers of the network weftd ran with, before it stops for a
// changed config: the next run programs the new network's, and no route of the old one is left behind.
func (a *agent) removePeers() {
	a.mu.Lock()
	own := a.own
	a.mu.Unlock()
	if own == nil {
		return
	}
	if err := a.be.Set(&backend.Config{Network: *a.net, Own: *own, Resync: true}); err != nil {
		a.log.Warn("remove the old network's peers", "err", err)
	}
}

// agentStore is the lease store as run uses it: the subnet.Store contract, and Close when weftd stops.
type agentStore interface {
	subnet.Store
	Close() error
}

// openStore creates the lease store; the store's Connect waits and retries while it cannot (etcd: naming the
// endpoint and the cause; kube: the API server or the kubeconfig). weftd stays up, alive and not ready, until
// ctx ends.
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (agentStore, error) {
	if !cfg.Kube.SubnetMgr {
		ec := cfg.Etcd
		ec.LeaseTTL = cfg.LeaseTTL
		s, err := etcdstore.Connect(ctx, ec, log)
		if err != nil {
			return nil, err
		}
		return s, nil
	}
	k := cfg.Kube
	s, err := kubestore.Connect(ctx, kubestore.Config{
		APIURL: k.APIURL, Kubeconfig: k.Kubeconfig,
		NodeName: k.NodeName, PodName: k.PodName, PodNamespace: k.PodNamespace,
		AnnotationPrefix: k.AnnotationPrefix, NetConfPath: k.NetConfPath,
		SetNodeNetworkUnavailable: k.SetNodeNetworkUnavailable,
	}, log)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// configWhere names where the network config lives, for the hints logged while it is missing.
func (c *Config) configWhere() configSource {
	if c.Kube.SubnetMgr {
		return configSource{what: "file", where: c.Kube.NetConfPath, hint: "mount net-conf.json there (the kube-flannel-cfg ConfigMap)"}
	}
	return configSource{what: "key", where: c.Etcd.Prefix + "/config", hint: "write it with `weftd config set --network CIDR --backend TYPE`"}
}

// configSource says where the network config is read from.
type configSource struct{ what, where, hint string }

func nilIfDone(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// waitConfig waits for a valid network config: the store retries (subnet.Store.WaitConfig); each failed read
// it reports is logged here, with the hint of where the config comes from. An invalid config is waited on
// too (an operator may fix it), with the validation error logged.
func waitConfig(ctx context.Context, store subnet.Store, src configSource, log *slog.Logger) (*subnet.Config, error) {
	return store.WaitConfig(ctx, func(err error) {
		if errors.Is(err, subnet.ErrNoConfig) {
			log.Warn("network config missing; waiting for it ("+src.hint+")", src.what, src.where)
			return
		}
		log.Error("cannot use the network config; waiting for it to be fixed", src.what, src.where, "err", err)
	})
}

func (c *Config) ifaceSelector() backend.IfaceSelector {
	return backend.IfaceSelector{Ifaces: c.Ifaces, IfaceRegexes: c.IfaceRegexes, CanReach: c.CanReach, PublicIP: c.PublicIP, PublicIPv6: c.PublicIPv6}
}

// startBackend constructs the configured backend and brings it up. prev is the BackendData this node
// published before (kube mode), kick asks for a reconcile.
func startBackend(ctx context.Context, n *subnet.Config, ext backend.External, cfg Config, prev json.RawMessage, kick func(), log *slog.Logger) (backend.Backend, backend.Local, error) {
	factory, ok := backends[n.BackendType]
	if !ok {
		return nil, backend.Local{}, fmt.Errorf("backend type %q is not supported by this weftd", n.BackendType)
	}
	blog := log.With("backend", n.BackendType)
	be, err := factory(backend.Deps{Log: blog, External: ext, Network: n, Offload: cfg.UDPOffload, Queues: cfg.UDPQueues, PlainRoutes: !cfg.Nexthops, Kick: kick, PrevData: prev})
	if err != nil {
		return nil, backend.Local{}, fmt.Errorf("backend %s: %w", n.BackendType, err)
	}
	local, err := be.Up(ctx)
	if err != nil {
		be.Close()
		return nil, backend.Local{}, fmt.Errorf("backend %s: up: %w", n.BackendType, err)
	}
	blog.Info("backend up", "mtu", local.MTU, "data", string(local.BackendData))
	return be, local, nil
}

// agent is the running state of weftd.
type agent struct {
	cfg    Config
	log    *slog.Logger
	net    *subnet.Config
	be     backend.Backend
	local  backend.Local
	health *health
	rules  *ruleManager            // nil: no packet filter rules wanted
	kick   chan struct{}           // capacity 1: "the desired state changed"
	stop   context.CancelCauseFunc // stops run with a cause (errRestart); nil in tests without run

	envMu sync.Mutex // serialises writeEnv, so an older content never overwrites a newer one

	mu           sync.Mutex // guards the fields below
	own          *subnet.Lease
	leases       map[string]subnet.Lease // every lease, own included, by key, as the watch reports them
	haveWatch    bool                    // a first complete listing has arrived
	changed      map[string]bool         // keys of leases changed since the data path last took them in
	needSet      bool                    // the complete state must be handed to the backend (Set), not a change
	needGen      uint64                  // counts the times needSet was set, so a Set clears only what it took in
	takenGen     uint64                  // needGen when desired last ran
	misfits      map[string]bool         // keys of leases that do not fit the network config (see desired)
	holders      map[netip.Prefix]int    // how many leases name each subnet, of either family (see hold)
	dupSubnets   int                     // how many subnets in holders more than one lease names
	wantEnv      *subnet.Env             // what the env file must hold for the current lease; nil before the first
	env          []byte                  // content of the env file last written; nil until wantEnv is written
	lost         bool                    // the own lease was lost and is being re-acquired
	underlayLost bool                    // the external interface cannot be selected now
	holdFailed   bool                    // Hold ended with an error retrying cannot fix (see holdLease)
	watchFailed  bool                    // the lease watch ended with an error (see watchLeases)
	synced       bool                    // the last Set succeeded
}

// ready reports whether the node is fully serving: it holds its lease, the env file names it, and the data
// path is in sync with the last desired state. (Packet filter rules are checked by health itself.)
func (a *agent) ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.env != nil && !a.lost && !a.holdFailed && !a.watchFailed && a.synced && !a.underlayLost
}

func (a *agent) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// holdLease acquires and keeps this node's lease: the store's Hold retries what can be retried and reports
// each acquisition and loss to onLease. Hold returns early only for what retrying cannot fix: a changed
// network config stops weftd so that it starts again with it; anything else (an IPv6-only config, say)
// leaves weftd running but not ready until it is restarted (a config change does that, see watchConfig).
func (a *agent) holdLease(ctx context.Context, store subnet.Store, req subnet.AcquireRequest) {
	err := store.Hold(ctx, req, a.onLease)
	if ctx.Err() != nil || err == nil {
		return
	}
	if errors.Is(err, subnet.ErrConfigChanged) && a.stop != nil {
		a.stop(fmt.Errorf("%w: %w", errRestart, err))
		return
	}
	a.log.Error("cannot hold a subnet lease; not ready until weftd restarts", "err", err)
	a.mu.Lock()
	a.holdFailed = true
	a.mu.Unlock()
}

func (a *agent) onLease(l subnet.Lease, held bool) {
	if !held {
		// Keep forwarding with the kernel state as it is, but say we are degraded until re-acquired.
		a.mu.Lock()
		a.lost = true
		a.mu.Unlock()
		a.health.metrics.leaseLostNow()
		return
	}
	a.health.metrics.leaseHeld(l)
	a.log.Info("holding subnet lease", "subnet", l.Subnet, "ipv6-subnet", l.IPv6Subnet, "reservation", l.Reservation)
	env := subnet.Env{MTU: a.local.MTU, IPMasq: a.cfg.IPMasq}
	if a.net.EnableIPv4 {
		env.Network, env.Subnet = a.net.Network, subnet.FirstAddr(l.Subnet)
	}
	if a.net.EnableIPv6 && l.IPv6Subnet.IsValid() {
		env.IPv6Network, env.IPv6Subnet = a.net.IPv6Network, subnet.FirstAddr(l.IPv6Subnet)
	}
	a.mu.Lock()
	a.own, a.lost, a.holdFailed = &l, false, false
	a.wantEnv = &env
	a.needSet = true
	a.needGen++
	a.mu.Unlock()
	a.rules.SetSubnets(l.Subnet, l.IPv6Subnet)
	a.writeEnv()
	a.poke()
}

// writeEnv writes the env file if it does not hold wantEnv yet. After a failure the agent is not ready (env
// is nil) until a later call, from onLease or the reconcile loop, succeeds.
func (a *agent) writeEnv() {
	a.envMu.Lock()
	defer a.envMu.Unlock()
	a.mu.Lock()
	want := a.wantEnv
	changed := want != nil && string(a.env) != string(want.Marshal())
	a.mu.Unlock()
	if !changed {
		return
	}
	if err := subnet.WriteEnvFile(a.cfg.SubnetFile, *want); err != nil {
		a.mu.Lock()
		a.env = nil
		a.mu.Unlock()
		a.log.Error("write env file; retrying", "err", err, "retry", a.cfg.Reconcile)
		return
	}
	a.mu.Lock()
	a.env = want.Marshal()
	a.mu.Unlock()
	a.log.Info("wrote env file", "path", a.cfg.SubnetFile, "subnet", want.Subnet, "ipv6-subnet", want.IPv6Subnet, "mtu", want.MTU)
	if sent, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		a.log.Warn("sd_notify READY=1", "err", err)
	} else if sent {
		a.log.Debug("notified systemd: READY=1")
	}
}

// watchLeases keeps the lease set current, from the store's changes where it reports them
// (subnet.ChangeWatcher), else from its complete listings. The store resumes the watch after failures
// itself; a watch that ends early (the store closed) leaves weftd not ready.
func (a *agent) watchLeases(ctx context.Context, store subnet.Store) {
	var err error
	if cw, ok := store.(subnet.ChangeWatcher); ok {
		err = cw.WatchChanges(ctx, a.onChanges)
	} else {
		err = store.Watch(ctx, func(all []subnet.Lease) { a.onChanges(subnet.Changes{Full: true, Put: all}) })
	}
	if ctx.Err() != nil || err == nil {
		return
	}
	a.log.Error("lease watch ended; peers are no longer followed; not ready until weftd restarts", "err", err)
	a.mu.Lock()
	a.watchFailed = true
	a.mu.Unlock()
}

// onChanges takes in a batch of lease changes from the watch.
func (a *agent) onChanges(c subnet.Changes) {
	a.mu.Lock()
	if c.Full || a.leases == nil {
		a.leases, a.misfits, a.changed = map[string]subnet.Lease{}, map[string]bool{}, map[string]bool{}
		a.holders, a.dupSubnets = map[netip.Prefix]int{}, 0
		a.needSet = true
		a.needGen++
	}
	for _, l := range c.Put {
		k := l.Key()
		if old, ok := a.leases[k]; ok {
			a.holdLocked(old, -1)
		}
		a.holdLocked(l, 1)
		a.leases[k], a.changed[k] = l, true
		if a.net.Fits(l) {
			delete(a.misfits, k)
		} else {
			a.misfits[k] = true
		}
	}
	for _, l := range c.Deleted {
		k := l.Key()
		if old, ok := a.leases[k]; ok {
			a.holdLocked(old, -1)
		}
		delete(a.leases, k)
		delete(a.misfits, k)
		a.changed[k] = true
	}
	a.haveWatch = true
	a.health.metrics.lat.received(time.Now(), latencyEvents(c))
	a.mu.Unlock()
	a.poke()
}

// holdLocked counts lease l as naming its subnets (d 1) or no longer (d −1) in holders and dupSubnets. In
// dual stack a key names both subnets, so two keys can name the same subnet of one family (a hostile or
// broken write); while any does, the data path takes the complete state (see change).
func (a *agent) holdLocked(l subnet.Lease, d int) {
	for _, p := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
		if !p.IsValid() {
			continue
		}
		n := a.holders[p] + d
		switch {
		case n == 2 && d > 0:
			a.dupSubnets++
		case n == 1 && d < 0:
			a.dupSubnets--
		}
		if n <= 0 {
			delete(a.holders, p)
		} else {
			a.holders[p] = n
		}
	}
}

// desired returns the complete desired state, or nil while the own lease or the first watch listing is
// still missing (applying an empty peer set then would tear down working routes after a restart). It takes
// in every change: changed is cleared.
func (a *agent) desired() *backend.Config {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.own == nil || !a.haveWatch {
		return nil
	}
	cfg := &backend.Config{Network: *a.net, Own: *a.own, Peers: make([]subnet.Lease, 0, len(a.leases))}
	ownKey := a.own.Key()
	for k, l := range a.leases {
		if k != ownKey && !sameSubnet(l, *a.own) {
			cfg.Peers = append(cfg.Peers, l)
		}
	}
	clear(a.changed)
	a.health.metrics.lat.take()
	a.takenGen = a.needGen
	return cfg
}

// sameSubnet reports whether lease l claims a subnet of own's, of either family (a stale key of the own
// subnet, never a peer).
func sameSubnet(l, own subnet.Lease) bool {
	return (own.Subnet.IsValid() && l.Subnet == own.Subnet) || (own.IPv6Subnet.IsValid() && l.IPv6Subnet == own.IPv6Subnet)
}

// change returns the lease changes since the data path last took them in, for backend.Updater, and clears
// them; ok is false when only the complete state will do: before a first Set, after the own lease changed or
// the watch listed again, or while a lease that does not fit the config exists (it may overlap others,
// which DropOverlapping weighs across all leases; leases that fit overlap each other only by naming the
// same subnet) or two leases name the same subnet. A change of a lease with the own lease's key or subnet
// also takes the complete state.
func (a *agent) change() (ch *backend.Change, peers int, ok bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.own == nil || !a.haveWatch || a.needSet || len(a.misfits) > 0 || a.dupSubnets > 0 {
		return nil, 0, false
	}
	ownKey := a.own.Key()
	ch = &backend.Change{}
	for k := range a.changed {
		l, present := a.leases[k]
		switch {
		case k == ownKey || (present && sameSubnet(l, *a.own)):
			return nil, 0, false
		case present:
			ch.Put = append(ch.Put, l)
		default:
			ch.Deleted = append(ch.Deleted, k)
		}
	}
	clear(a.changed)
	a.health.metrics.lat.take()
	peers = len(a.leases)
	if _, ok := a.leases[ownKey]; ok {
		peers--
	}
	return ch, peers, true
}

// agentSkipKinds are the reasons for which the agent leaves a peer lease out (DropOverlapping), each a
// weft_peers_skipped_total reason.
var agentSkipKinds = []backend.SkipKind{backend.SkipOverlap, backend.SkipDuplicateSubnet}

// followedResyncs is how many reconcile intervals pass between comparisons with the kernel's tables for a
// backend that repairs drift from kernel events (backend.Follower): 10 (5 minutes by default).
const followedResyncs = 10

// resyncDue says whether a reconcile tick compares the kernel state with the kernel's tables (Config.Resync):
// every tick, or every followedResyncs ticks for a backend that follows kernel events.
func (a *agent) resyncDue(last time.Time) bool {
	if f, ok := a.be.(backend.Follower); ok && f.Following() {
		return time.Since(last) >= followedResyncs*a.cfg.Reconcile-a.cfg.Reconcile/2
	}
	return true
}

// releaseDelay is how long after a complete Set the reconcile loop hands unused memory back to the system
// (debug.FreeOSMemory, a garbage collection); another complete Set meanwhile starts it again.
const releaseDelay = 2 * time.Second

// reconcileLoop is the only caller of the backend's Set: on every change and every reconcile interval.
func (a *agent) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(a.cfg.Reconcile)
	defer t.Stop()
	lastPeers := -1
	var overlapLog backend.SkipLog // peer leases dropped for overlapping another, warned about once
	lastResync := time.Now()
	var release <-chan time.Time // set by a complete Set: hand memory back to the system when it fires
	for {
		resync := false // a lease change is applied as a change; the tick compares with the kernel
		select {
		case <-ctx.Done():
			return
		case <-a.kick:
		case <-t.C:
			resync = a.resyncDue(lastResync)
		case <-release:
			release = nil
			debug.FreeOSMemory()
			continue
		}
		if resync {
			lastResync = time.Now()
		}
		a.writeEnv() // retries a failed write
		if upd, ok := a.be.(backend.Updater); ok && !resync {
			if ch, peers, ok := a.change(); ok {
				if len(ch.Put)+len(ch.Deleted) == 0 {
					continue
				}
				start := time.Now()
				err := upd.Update(ch)
				a.health.metrics.reconciled(opUpdate, start, err, peers)
				if err == nil {
					a.mu.Lock()
					a.synced = true
					a.mu.Unlock()
					a.log.Debug("data path updated", "put", len(ch.Put), "deleted", len(ch.Deleted), "peers", peers)
					a.health.peers.Store(int64(peers))
					continue
				}
				if !errors.Is(err, backend.ErrNeedSet) {
					a.log.Error("update kernel state; applying the complete state", "err", err)
				}
			}
		}
		want := a.desired()
		if want == nil {
			continue
		}
		var dropped []backend.Skip
		want.Resync = resync
		want.Peers, dropped = backend.DropOverlapping(&want.Network, want.Own, want.Peers)
		overlapLog.Log(a.log, dropped)
		for _, k := range agentSkipKinds {
			a.health.metrics.skippedPeers(string(k), slices.DeleteFunc(slices.Clone(dropped), func(s backend.Skip) bool { return s.Kind != k }))
		}
		op, start := opSet, time.Now()
		if resync {
			op = opResync
		}
		err := a.be.Set(want)
		a.health.metrics.reconciled(op, start, err, len(want.Peers))
		a.mu.Lock()
		a.synced = err == nil
		if err != nil {
			a.needSet = true
		} else if a.needGen == a.takenGen {
			a.needSet = false
		}
		a.mu.Unlock()
		if err != nil {
			a.log.Error("reconcile kernel state", "err", err)
			continue
		}
		// A complete Set plans every peer, and a comparison with the kernel's tables reads every route,
		// neighbour and FDB entry (12,000 at 4,000 peers): once no other complete Set follows for a moment
		// (one often does at start, when the watch shows the own lease), hand the memory they used back to
		// the system rather than keeping the heap at its peak until the runtime's scavenger returns it.
		release = time.After(releaseDelay)
		if len(want.Peers) != lastPeers {
			level := slog.LevelDebug // one line per lease change is not what an operator needs
			if lastPeers < 0 {
				level = slog.LevelInfo
			}
			a.log.Log(ctx, level, "data path in sync", "own", want.Own.Subnet, "peers", len(want.Peers))
			lastPeers = len(want.Peers)
		}
		a.health.peers.Store(int64(len(want.Peers)))
	}
}

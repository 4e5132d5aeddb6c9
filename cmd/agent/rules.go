package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"sync"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// chainSyncer makes one iptables chain equal to its plan; *kernel.IPTables implements it.
type chainSyncer interface {
	SyncChain(c kernel.Chain) (changed bool, err error)
	generation
}

// nftSyncer makes one nftables chain equal to its plan; *kernel.NFTables implements it.
type nftSyncer interface {
	SyncChain(c kernel.NFTChain) (changed bool, err error)
	generation
}

// generation reads a number that changes whenever the packet filter's rules may have changed, without
// listing them (kernel.IPTables.Generation).
type generation interface {
	Generation() (uint64, error)
}

// ruleEngine applies the plans of compat.md §8 for one address family.
type ruleEngine interface {
	SyncForward(network netip.Prefix) (changed bool, err error)
	SyncMasq(network, own netip.Prefix) (changed bool, err error)
	generation
}

// iptEngine keeps flanneld's iptables (or ip6tables) chains FLANNEL-FWD and FLANNEL-POSTRTG.
type iptEngine struct {
	ipt         chainSyncer
	randomFully bool // MASQUERADE --random-fully
}

func (e iptEngine) SyncForward(network netip.Prefix) (bool, error) {
	return e.ipt.SyncChain(kernel.ForwardRules(network))
}

func (e iptEngine) SyncMasq(network, own netip.Prefix) (bool, error) {
	return e.ipt.SyncChain(kernel.MasqRules(network, own, e.randomFully))
}

func (e iptEngine) Generation() (uint64, error) { return e.ipt.Generation() }

// nftEngine keeps the chains forward and postrtg of flanneld's nftables table of one family.
type nftEngine struct {
	nft         nftSyncer
	fullyRandom bool // masquerade fully-random
}

func (e nftEngine) SyncForward(network netip.Prefix) (bool, error) {
	return e.nft.SyncChain(kernel.NFTForwardRules(network))
}

func (e nftEngine) SyncMasq(network, own netip.Prefix) (bool, error) {
	return e.nft.SyncChain(kernel.NFTMasqRules(network, own, e.fullyRandom))
}

func (e nftEngine) Generation() (uint64, error) { return e.nft.Generation() }

// ruleFamily is one address family's overlay network and the engine that keeps its rules.
type ruleFamily struct {
	v6      bool
	network netip.Prefix
	engine  ruleEngine
	name    string // the engine as logged: "iptables", "ip6tables", "nftables ip", "nftables ip6"
}

// ruleManager keeps the packet filter rules of compat.md §8 in place, for every address family of the
// network: the forward rules (--iptables-forward-rules) and the masquerade rules (--ip-masq). A pass syncs
// every wanted chain of every family; with --ip-masq it waits for the own subnets (the first lease,
// normally milliseconds after start), without it the forward rules are applied at once. It applies them
// when a subnet changes (replacing the old subnet's rules) and checks them every resync interval,
// restoring what was changed or deleted behind its back. A check lists the rules (an iptables or nft run)
// only when the packet filter's generation moved since the last pass, or every fullCheckEvery-th time;
// without a generation (it cannot be read) every check lists them. Rules stay in place when it stops (compat §8); a
// chain that is not wanted (its flag off) is never touched, whatever it holds.
//
// It reports through ready whether every wanted chain is in place for the current subnets: false from the
// start and after a subnet change until the next pass succeeds, and after a failed pass.
type ruleManager struct {
	log       *slog.Logger
	fams      []ruleFamily
	masq, fwd bool
	resync    time.Duration
	kick      chan struct{} // capacity 1
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu      sync.Mutex // guards the fields below; ready is called with it held, so reports are in order
	subnets ownSubnets
	gen     uint64 // incremented on every subnet change
	ready   func(bool)
}

// ownSubnets are this node's subnets of each family (zero: none).
type ownSubnets struct{ v4, v6 netip.Prefix }

func (o ownSubnets) of(v6 bool) netip.Prefix {
	if v6 {
		return o.v6
	}
	return o.v4
}

// ruleOptions configure a ruleManager. Ready is required; the others' zero values mean "off".
type ruleOptions struct {
	Families []ruleFamily  // one per address family of the network
	Masq     bool          // --ip-masq: keep the masquerade chains
	Forward  bool          // --iptables-forward-rules: keep the forward chains
	Resync   time.Duration // --iptables-resync; must be positive
	Ready    func(bool)    // readiness of the rules, see ruleManager
}

// newRuleManager starts the rule manager for weftd's configuration, or returns nil when no rules are
// wanted. The engine is nftables when the network config says EnableNFTables or when the host lacks the
// iptables command of a family the network has, else iptables.
func newRuleManager(cfg Config, n *subnet.Config, ready func(bool), log *slog.Logger) (*ruleManager, error) {
	if !cfg.IPMasq && !cfg.FwdRules {
		return nil, nil
	}
	useNFT, why := chooseEngine(n, exec.LookPath)
	log = log.With("component", "packet-filter")
	log.Info("packet filter engine", "nftables", useNFT, "why", why)
	var fams []ruleFamily
	for _, f := range []struct {
		on      bool
		v6      bool
		network netip.Prefix
	}{{n.EnableIPv4, false, n.Network}, {n.EnableIPv6, true, n.IPv6Network}} {
		if !f.on {
			continue
		}
		fam := ruleFamily{v6: f.v6, network: f.network.Masked()}
		if useNFT {
			nft, err := kernel.NewNFTables(f.v6)
			if err != nil {
				return nil, fmt.Errorf("packet filter rules (--ip-masq=%t, --iptables-forward-rules=%t) with nftables (%s): %w", cfg.IPMasq, cfg.FwdRules, why, err)
			}
			fam.engine, fam.name = nftEngine{nft: nft, fullyRandom: nft.HasFullyRandom()}, "nftables ip"
			if f.v6 {
				fam.name += "6"
			}
		} else {
			ipt, err := kernel.NewIPTables(f.v6)
			if err != nil {
				return nil, fmt.Errorf("packet filter rules (--ip-masq=%t, --iptables-forward-rules=%t): %w", cfg.IPMasq, cfg.FwdRules, err)
			}
			fam.engine, fam.name = iptEngine{ipt: ipt, randomFully: ipt.HasRandomFully()}, "iptables"
			if f.v6 {
				fam.name = "ip6tables"
			}
		}
		fams = append(fams, fam)
	}
	return startRules(ruleOptions{Families: fams, Masq: cfg.IPMasq, Forward: cfg.FwdRules, Resync: cfg.IPTResync, Ready: ready}, log), nil
}

// chooseEngine decides between iptables (false) and nftables (true) for network n, and says why.
// lookPath is exec.LookPath.
func chooseEngine(n *subnet.Config, lookPath func(string) (string, error)) (nft bool, why string) {
	if n.EnableNFTables {
		return true, "EnableNFTables in the network config"
	}
	for _, c := range []struct {
		on   bool
		name string
	}{{n.EnableIPv4, "iptables"}, {n.EnableIPv6, "ip6tables"}} {
		if _, err := lookPath(c.name); c.on && err != nil {
			return true, "no " + c.name + " command"
		}
	}
	return false, "iptables command found and EnableNFTables not set"
}

// startRules starts a manager applying o. It reports not-ready before it returns.
func startRules(o ruleOptions, log *slog.Logger) *ruleManager {
	m := &ruleManager{
		log: log, fams: o.Families, masq: o.Masq, fwd: o.Forward,
		resync: o.Resync, kick: make(chan struct{}, 1), stop: make(chan struct{}), ready: o.Ready,
	}
	m.ready(false)
	m.kick <- struct{}{}
	m.wg.Go(m.loop)
	return m
}

// SetSubnets sets the own subnets, IPv4 and IPv6 (zero when the lease has none; the masquerade rules
// depend on them), and triggers a pass. It is a no-op on a nil manager (no rules wanted).
func (m *ruleManager) SetSubnets(v4, v6 netip.Prefix) {
	if m == nil {
		return
	}
	sn := ownSubnets{v4: v4.Masked(), v6: v6.Masked()}
	m.mu.Lock()
	if sn != m.subnets {
		m.subnets = sn
		m.gen++
		if m.masq {
			m.ready(false)
		}
	}
	m.mu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Close stops the manager and waits for it; the rules stay in place. Idempotent; a no-op on nil.
func (m *ruleManager) Close() {
	if m == nil {
		return
	}
	m.closeOnce.Do(func() { close(m.stop) })
	m.wg.Wait()
}

func (m *ruleManager) loop() {
	m.log.Debug("rule manager started", "masq", m.masq, "forward", m.fwd, "resync", m.resync)
	defer m.log.Debug("rule manager stopped")
	t := time.NewTicker(m.resync)
	defer t.Stop()
	var applied ownSubnets // subnets of the last successful pass
	inPlace := false       // the last pass succeeded
	var passGens []uint64  // the generations read before the last successful pass; nil: unknown
	skipped := 0           // checks skipped since the last pass
	for {
		tick := false
		select {
		case <-m.stop:
			return
		case <-m.kick:
		case <-t.C:
			tick = true
		}
		m.mu.Lock()
		sn, gen := m.subnets, m.gen
		m.mu.Unlock()
		if !m.masq {
			sn = ownSubnets{} // only the masquerade rules depend on the subnets
		} else if !m.haveSubnets(sn) {
			continue // nothing to do before the first lease; stay not ready
		}
		gens := m.generations()
		if tick && inPlace && sn == applied && gens != nil && slices.Equal(gens, passGens) && skipped < fullCheckEvery-1 {
			skipped++
			continue // nothing changed in the packet filter since the last pass
		}
		skipped = 0
		changed, err := m.pass(sn)
		m.mu.Lock()
		if gen == m.gen {
			m.ready(err == nil)
		}
		m.mu.Unlock()
		switch {
		case err != nil:
			m.log.Error("packet filter rules", "err", err)
		case !inPlace || sn != applied:
			for _, f := range m.fams {
				m.log.Info("packet filter rules in place", "engine", f.name, "network", f.network, "subnet", sn.of(f.v6),
					"masq", m.masq, "forward", m.fwd, "changed", changed)
			}
		case changed:
			m.log.Warn("packet filter rules were changed behind our back; restored", "subnet", sn.v4, "ipv6-subnet", sn.v6)
		}
		inPlace = err == nil
		passGens = nil
		if inPlace {
			applied, passGens = sn, gens
		}
	}
}

// fullCheckEvery is how often, in resync intervals, the rules are listed even though the packet filter's
// generation did not move: iptables-legacy's generation misses a rule replaced by one of the same size.
const fullCheckEvery = 12

// generations reads each family's packet filter generation; nil if one cannot be read.
func (m *ruleManager) generations() []uint64 {
	gens := make([]uint64, len(m.fams))
	for i, f := range m.fams {
		g, err := f.engine.Generation()
		if err != nil {
			m.log.Debug("packet filter generation unavailable; listing the rules", "engine", f.name, "err", err)
			return nil
		}
		gens[i] = g
	}
	return gens
}

// haveSubnets reports whether sn has a subnet for every family with rules.
func (m *ruleManager) haveSubnets(sn ownSubnets) bool {
	for _, f := range m.fams {
		if !sn.of(f.v6).IsValid() {
			return false
		}
	}
	return true
}

// pass syncs every wanted chain of every family: forward first (it does not depend on the lease), then
// masquerade; IPv4, then IPv6.
func (m *ruleManager) pass(sn ownSubnets) (changed bool, err error) {
	for _, f := range m.fams {
		if m.fwd {
			ch, err := f.engine.SyncForward(f.network)
			changed = changed || ch
			if err != nil {
				return changed, fmt.Errorf("%s: %w", f.name, err)
			}
		}
		if m.masq {
			ch, err := f.engine.SyncMasq(f.network, sn.of(f.v6))
			changed = changed || ch
			if err != nil {
				return changed, fmt.Errorf("%s: %w", f.name, err)
			}
		}
	}
	return changed, nil
}

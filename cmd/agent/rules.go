package main

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// chainSyncer makes one packet filter chain equal to its plan; *kernel.IPTables implements it.
type chainSyncer interface {
	SyncChain(c kernel.Chain) (changed bool, err error)
}

// ruleManager keeps the packet filter rules of compat.md §8 in place: the forward chain (--iptables-forward-
// rules) and the masquerade chain (--ip-masq). A pass syncs every wanted chain; with --ip-masq it waits for
// the own subnet (the first lease, normally milliseconds after start), without it the forward chain is
// applied at once. It applies
// them when the subnet changes (replacing the old subnet's rules) and checks them every resync interval,
// restoring what was changed or deleted behind its back. Rules stay in place when it stops (compat §8); a
// chain that is not wanted (its flag off) is never touched, whatever it holds.
//
// It reports through ready whether every wanted chain is in place for the current subnet: false from the
// start and after a subnet change until the next pass succeeds, and after a failed pass.
type ruleManager struct {
	log         *slog.Logger
	ipt         chainSyncer
	network     netip.Prefix
	masq, fwd   bool
	randomFully bool
	resync      time.Duration
	kick        chan struct{} // capacity 1
	stop        chan struct{}
	closeOnce   sync.Once
	wg          sync.WaitGroup

	mu     sync.Mutex // guards the fields below; ready is called with it held, so reports are in order
	subnet netip.Prefix
	gen    uint64 // incremented on every subnet change
	ready  func(bool)
}

// ruleOptions configure a ruleManager. Ready is required; the others' zero values mean "off".
type ruleOptions struct {
	Network     netip.Prefix  // the overlay network (IPv4)
	Masq        bool          // --ip-masq: keep the nat chain FLANNEL-POSTRTG
	Forward     bool          // --iptables-forward-rules: keep the filter chain FLANNEL-FWD
	RandomFully bool          // MASQUERADE --random-fully
	Resync      time.Duration // --iptables-resync; must be positive
	Ready       func(bool)    // readiness of the rules, see ruleManager
}

// newRuleManager starts the rule manager for weftd's configuration, or returns nil when no rules are
// wanted. The rules are IPv4 only: an IPv6-only network gets none (logged).
func newRuleManager(cfg Config, n *subnet.Config, ready func(bool), log *slog.Logger) (*ruleManager, error) {
	if !cfg.IPMasq && !cfg.FwdRules {
		return nil, nil
	}
	if !n.EnableIPv4 {
		log.Warn("packet filter rules are IPv4 only; the network has no IPv4 part, so none are installed",
			"ip-masq", cfg.IPMasq, "iptables-forward-rules", cfg.FwdRules)
		return nil, nil
	}
	ipt, err := kernel.NewIPTables(false)
	if err != nil {
		return nil, fmt.Errorf("packet filter rules (--ip-masq=%t, --iptables-forward-rules=%t): %w", cfg.IPMasq, cfg.FwdRules, err)
	}
	return startRules(ruleOptions{
		Network: n.Network, Masq: cfg.IPMasq, Forward: cfg.FwdRules, RandomFully: ipt.HasRandomFully(),
		Resync: cfg.IPTResync, Ready: ready,
	}, ipt, log.With("component", "iptables")), nil
}

// startRules starts a manager applying o through ipt. It reports not-ready before it returns.
func startRules(o ruleOptions, ipt chainSyncer, log *slog.Logger) *ruleManager {
	m := &ruleManager{
		log: log, ipt: ipt, network: o.Network.Masked(), masq: o.Masq, fwd: o.Forward, randomFully: o.RandomFully,
		resync: o.Resync, kick: make(chan struct{}, 1), stop: make(chan struct{}), ready: o.Ready,
	}
	m.ready(false)
	m.kick <- struct{}{}
	m.wg.Go(m.loop)
	return m
}

// SetSubnet sets the own subnet (the masquerade rules depend on it) and triggers a pass. It is a no-op on
// a nil manager (no rules wanted).
func (m *ruleManager) SetSubnet(p netip.Prefix) {
	if m == nil {
		return
	}
	p = p.Masked()
	m.mu.Lock()
	if p != m.subnet {
		m.subnet = p
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
	var applied netip.Prefix // subnet of the last successful pass
	inPlace := false         // the last pass succeeded
	for {
		select {
		case <-m.stop:
			return
		case <-m.kick:
		case <-t.C:
		}
		m.mu.Lock()
		sn, gen := m.subnet, m.gen
		m.mu.Unlock()
		if !m.masq {
			sn = netip.Prefix{} // only the masquerade rules depend on the subnet
		} else if !sn.IsValid() {
			continue // nothing to do before the first lease; stay not ready
		}
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
			m.log.Info("packet filter rules in place", "network", m.network, "subnet", sn, "masq", m.masq,
				"forward", m.fwd, "random-fully", m.randomFully && m.masq, "changed", changed)
		case changed:
			m.log.Warn("packet filter rules were changed behind our back; restored", "subnet", sn)
		}
		inPlace = err == nil
		if inPlace {
			applied = sn
		}
	}
}

// pass syncs every wanted chain: forward first (it does not depend on the lease), then masquerade.
func (m *ruleManager) pass(sn netip.Prefix) (changed bool, err error) {
	var chains []kernel.Chain
	if m.fwd {
		chains = append(chains, kernel.ForwardRules(m.network))
	}
	if m.masq {
		chains = append(chains, kernel.MasqRules(m.network, sn, m.randomFully))
	}
	for _, c := range chains {
		ch, err := m.ipt.SyncChain(c)
		changed = changed || ch
		if err != nil {
			return changed, err
		}
	}
	return changed, nil
}

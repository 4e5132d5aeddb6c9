package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
)

// fakeSyncer records the chains synced and fails while fail is set.
type fakeSyncer struct {
	mu     sync.Mutex
	synced []kernel.Chain
	fail   error
}

func (f *fakeSyncer) SyncChain(c kernel.Chain) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return false, f.fail
	}
	f.synced = append(f.synced, c)
	return true, nil
}

func (f *fakeSyncer) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

// last returns the last synced chain with the given name.
func (f *fakeSyncer) last(name string) (kernel.Chain, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	var c kernel.Chain
	for _, s := range f.synced {
		if s.Name == name {
			c, n = s, n+1
		}
	}
	return c, n
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

func TestRuleManager(t *testing.T) {
	network := netip.MustParsePrefix("10.5.0.0/16")
	sn1, sn2 := netip.MustParsePrefix("10.5.7.0/24"), netip.MustParsePrefix("10.5.9.0/24")
	f := &fakeSyncer{}
	var ready atomic.Bool
	ready.Store(true) // the manager must say false before it returns
	m := startRules(ruleOptions{Network: network, Masq: true, Forward: true, RandomFully: true, Resync: 20 * time.Millisecond,
		Ready: ready.Store}, f, slog.New(slog.NewTextHandler(t.Output(), nil)))
	defer m.Close()
	if ready.Load() {
		t.Fatal("ready before any rule is in place")
	}
	time.Sleep(50 * time.Millisecond)
	if _, n := f.last(kernel.MasqChainName); n != 0 || ready.Load() {
		t.Fatalf("without a subnet: %d masquerade syncs, ready %t; want none and not ready", n, ready.Load())
	}

	m.SetSubnet(netip.MustParsePrefix("10.5.7.1/24")) // as the env file has it: masked by the manager
	eventually(t, "ready with subnet 1", ready.Load)
	c, _ := f.last(kernel.MasqChainName)
	if want := kernel.MasqRules(network, sn1, true); !slices.Equal(c.Lines(), want.Lines()) {
		t.Errorf("masquerade chain synced:\n%q\nwant\n%q", c.Lines(), want.Lines())
	}
	if _, n := f.last(kernel.ForwardChainName); n == 0 {
		t.Error("forward chain never synced")
	}

	// Periodic resync keeps applying (restoring what changed behind our back).
	_, before := f.last(kernel.MasqChainName)
	eventually(t, "periodic resync", func() bool { _, n := f.last(kernel.MasqChainName); return n >= before+3 })

	// A failing pass makes it not ready; it recovers by itself.
	f.setFail(errors.New("iptables: boom"))
	eventually(t, "not ready after a failure", func() bool { return !ready.Load() })
	f.setFail(nil)
	eventually(t, "ready again", ready.Load)

	// A new subnet: not ready at once, then the new subnet's chain.
	f.setFail(errors.New("hold the pass"))
	m.SetSubnet(sn2)
	if ready.Load() {
		t.Error("still ready right after the subnet changed")
	}
	f.setFail(nil)
	eventually(t, "ready with subnet 2", ready.Load)
	c, _ = f.last(kernel.MasqChainName)
	if want := kernel.MasqRules(network, sn2, true); !slices.Equal(c.Lines(), want.Lines()) {
		t.Errorf("masquerade chain after the subnet change:\n%q\nwant\n%q", c.Lines(), want.Lines())
	}

	m.Close()
	m.Close() // idempotent
	_, n := f.last(kernel.MasqChainName)
	time.Sleep(60 * time.Millisecond)
	if _, n2 := f.last(kernel.MasqChainName); n2 != n {
		t.Errorf("synced %d more times after Close", n2-n)
	}
}

func TestRuleManagerForwardOnly(t *testing.T) {
	f := &fakeSyncer{}
	var ready atomic.Bool
	m := startRules(ruleOptions{Network: netip.MustParsePrefix("10.5.0.0/16"), Forward: true, Resync: time.Hour, Ready: ready.Store},
		f, slog.New(slog.DiscardHandler))
	defer m.Close()
	eventually(t, "ready without a lease", ready.Load)
	m.SetSubnet(netip.MustParsePrefix("10.5.7.0/24"))
	time.Sleep(20 * time.Millisecond)
	if _, n := f.last(kernel.MasqChainName); n != 0 {
		t.Errorf("masquerade chain synced %d times with --ip-masq=false", n)
	}
	if !ready.Load() {
		t.Error("a subnet change made a forward-only manager not ready")
	}
}

func TestRuleManagerNil(t *testing.T) {
	m, err := newRuleManager(Config{IPMasq: false, FwdRules: false}, nil, func(bool) { t.Error("ready called") }, slog.New(slog.DiscardHandler))
	if m != nil || err != nil {
		t.Fatalf("no rules wanted: manager %v, err %v; want nil, nil", m, err)
	}
	m.SetSubnet(netip.MustParsePrefix("10.5.7.0/24")) // no-ops on nil
	m.Close()
}

package main

import (
	"errors"
	"log/slog"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// fakeSyncer records the chains synced and fails while fail is set. With hasGen its generation is gen.
type fakeSyncer struct {
	mu     sync.Mutex
	synced []kernel.Chain
	fail   error
	hasGen bool
	gen    atomic.Uint64
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

func (f *fakeSyncer) Generation() (uint64, error) {
	if !f.hasGen {
		return 0, errors.ErrUnsupported // every check lists the rules
	}
	return f.gen.Load(), nil
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
	m := startRules(ruleOptions{Families: []ruleFamily{{network: network, engine: iptEngine{ipt: f, randomFully: true}, name: "iptables"}},
		Masq: true, Forward: true, Resync: 20 * time.Millisecond, Ready: ready.Store}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	defer m.Close()
	if ready.Load() {
		t.Fatal("ready before any rule is in place")
	}
	time.Sleep(50 * time.Millisecond)
	if _, n := f.last(kernel.MasqChainName); n != 0 || ready.Load() {
		t.Fatalf("without a subnet: %d masquerade syncs, ready %t; want none and not ready", n, ready.Load())
	}

	m.SetSubnets(netip.MustParsePrefix("10.5.7.1/24"), netip.Prefix{}) // as the env file has it: masked by the manager
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
	m.SetSubnets(sn2, netip.Prefix{})
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

// TestRuleManagerGeneration: with a packet filter generation, a periodic check lists the rules only when
// the generation moved, or every fullCheckEvery-th check; a subnet change always does.
func TestRuleManagerGeneration(t *testing.T) {
	f := &fakeSyncer{hasGen: true}
	var ready atomic.Bool
	const resync = 10 * time.Millisecond
	m := startRules(ruleOptions{Families: []ruleFamily{{network: netip.MustParsePrefix("10.5.0.0/16"), engine: iptEngine{ipt: f}, name: "iptables"}},
		Masq: true, Forward: true, Resync: resync, Ready: ready.Store}, slog.New(slog.DiscardHandler))
	defer m.Close()
	m.SetSubnets(netip.MustParsePrefix("10.5.7.0/24"), netip.Prefix{})
	eventually(t, "ready", ready.Load)
	passes := func() int { _, n := f.last(kernel.ForwardChainName); return n }

	n := passes()
	time.Sleep(fullCheckEvery / 2 * resync)
	if got := passes(); got > n+1 { // one full check may fall in the window
		t.Errorf("generation unchanged: %d passes in %d checks, want at most 1", got-n, fullCheckEvery/2)
	}
	n = passes()
	f.gen.Add(1)
	eventually(t, "a pass after the generation moved", func() bool { return passes() > n })

	n = passes()
	time.Sleep(3 * fullCheckEvery * resync)
	if got := passes() - n; got < 2 {
		t.Errorf("generation unchanged for %d checks: %d full checks, want 2 or more (one every %d)", 3*fullCheckEvery, got, fullCheckEvery)
	}

	m.SetSubnets(netip.MustParsePrefix("10.5.9.0/24"), netip.Prefix{})
	eventually(t, "a pass after a subnet change", func() bool {
		c, _ := f.last(kernel.MasqChainName)
		return slices.Equal(c.Lines(), kernel.MasqRules(netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.9.0/24"), false).Lines())
	})
}

func TestRuleManagerForwardOnly(t *testing.T) {
	f := &fakeSyncer{}
	var ready atomic.Bool
	m := startRules(ruleOptions{Families: []ruleFamily{{network: netip.MustParsePrefix("10.5.0.0/16"), engine: iptEngine{ipt: f}, name: "iptables"}},
		Forward: true, Resync: time.Hour, Ready: ready.Store}, slog.New(slog.DiscardHandler))
	defer m.Close()
	eventually(t, "ready without a lease", ready.Load)
	m.SetSubnets(netip.MustParsePrefix("10.5.7.0/24"), netip.Prefix{})
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
	m.SetSubnets(netip.MustParsePrefix("10.5.7.0/24"), netip.Prefix{}) // no-ops on nil
	m.Close()
}

// fakeNFT records the nftables chains synced, by family and name.
type fakeNFT struct {
	mu     sync.Mutex
	synced map[string]kernel.NFTChain
}

func (f *fakeNFT) SyncChain(c kernel.NFTChain) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.synced == nil {
		f.synced = map[string]kernel.NFTChain{}
	}
	f.synced[c.Family+" "+c.Name] = c
	return true, nil
}

func (f *fakeNFT) Generation() (uint64, error) { return 0, errors.ErrUnsupported }

func (f *fakeNFT) get(key string) (kernel.NFTChain, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.synced[key]
	return c, ok
}

// TestRuleManagerDualStack: with both families, the manager waits for both subnets, then keeps each
// family's chains with its own network and subnet.
func TestRuleManagerDualStack(t *testing.T) {
	p := netip.MustParsePrefix
	v4, v6 := &fakeNFT{}, &fakeNFT{}
	var ready atomic.Bool
	m := startRules(ruleOptions{Families: []ruleFamily{
		{network: p("10.5.0.0/16"), engine: nftEngine{nft: v4, fullyRandom: true}, name: "nftables ip"},
		{v6: true, network: p("fd00:5::/56"), engine: nftEngine{nft: v6}, name: "nftables ip6"},
	}, Masq: true, Forward: true, Resync: time.Hour, Ready: ready.Store}, slog.New(slog.NewTextHandler(t.Output(), nil)))
	defer m.Close()
	m.SetSubnets(p("10.5.7.1/24"), netip.Prefix{})
	time.Sleep(30 * time.Millisecond)
	if _, ok := v4.get("ip postrtg"); ok || ready.Load() {
		t.Fatalf("without an IPv6 subnet: masquerade synced %t, ready %t; want neither", ok, ready.Load())
	}
	m.SetSubnets(p("10.5.7.1/24"), p("fd00:5:0:7::1/64"))
	eventually(t, "ready with both subnets", ready.Load)
	for _, tc := range []struct {
		f    *fakeNFT
		key  string
		want kernel.NFTChain
	}{
		{v4, "ip postrtg", kernel.NFTMasqRules(p("10.5.0.0/16"), p("10.5.7.0/24"), true)},
		{v4, "ip forward", kernel.NFTForwardRules(p("10.5.0.0/16"))},
		{v6, "ip6 postrtg", kernel.NFTMasqRules(p("fd00:5::/56"), p("fd00:5:0:7::/64"), false)},
		{v6, "ip6 forward", kernel.NFTForwardRules(p("fd00:5::/56"))},
	} {
		if got, _ := tc.f.get(tc.key); got.Listing() != tc.want.Listing() {
			t.Errorf("%s synced:\n%s\nwant\n%s", tc.key, got.Listing(), tc.want.Listing())
		}
	}
}

func TestChooseEngine(t *testing.T) {
	v4 := &subnet.Config{EnableIPv4: true}
	dual := &subnet.Config{EnableIPv4: true, EnableIPv6: true}
	for _, tc := range []struct {
		name    string
		net     *subnet.Config
		have    []string // commands on PATH
		wantNFT bool
		why     string
	}{
		{"iptables found", v4, []string{"iptables", "nft"}, false, "iptables command found"},
		{"EnableNFTables", &subnet.Config{EnableIPv4: true, EnableNFTables: true}, []string{"iptables", "nft"}, true, "EnableNFTables"},
		{"no iptables", v4, []string{"nft"}, true, "no iptables command"},
		{"no commands at all", v4, nil, true, "no iptables command"},
		{"dual stack without ip6tables", dual, []string{"iptables"}, true, "no ip6tables command"},
		{"IPv4 only needs no ip6tables", v4, []string{"iptables"}, false, "iptables command found"},
		{"IPv6 only needs no iptables", &subnet.Config{EnableIPv6: true}, []string{"ip6tables"}, false, "iptables command found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lookPath := func(name string) (string, error) {
				if slices.Contains(tc.have, name) {
					return "/usr/sbin/" + name, nil
				}
				return "", exec.ErrNotFound
			}
			nft, why := chooseEngine(tc.net, lookPath)
			if nft != tc.wantNFT || !strings.Contains(why, tc.why) {
				t.Errorf("chooseEngine = %t, %q; want %t and a reason with %q", nft, why, tc.wantNFT, tc.why)
			}
		})
	}
}

package main

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// TestLeaseLossKeepsForwardingButNotReady checks the agent's reaction to Hold's events: a lost lease makes
// /readyz fail while the desired state (and so the kernel) keeps the old lease; re-acquisition restores
// readiness and rewrites the env file only if it changed.
func TestLeaseLossKeepsForwardingButNotReady(t *testing.T) {
	netCfg, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	envPath := filepath.Join(t.TempDir(), "run", "subnet.env")
	a := &agent{
		cfg: Config{SubnetFile: envPath}, log: slog.New(slog.NewTextHandler(io.Discard, nil)), net: netCfg,
		kick: make(chan struct{}, 1), health: newHealth(),
	}
	own := subnet.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11")}}
	peer := subnet.Lease{Subnet: netip.MustParsePrefix("10.5.8.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.12")}}

	a.onLease(own, true)
	if a.desired() != nil {
		t.Fatal("desired state before the first watch snapshot: want nil (an empty peer set must not be applied)")
	}
	a.onChanges(subnet.Changes{Full: true, Put: []subnet.Lease{own, peer}})
	a.mu.Lock()
	a.synced = true // as after a successful Set
	a.mu.Unlock()
	if !a.ready() {
		t.Fatal("not ready with the lease held, the env file written and the data path in sync")
	}

	env, err := subnet.ReadEnvFile(envPath)
	if err != nil || env.Subnet.String() != "10.5.7.1/24" || env.Network.String() != "10.5.0.0/16" {
		t.Fatalf("env file: %+v, %v", env, err)
	}

	a.onLease(own, false)
	if a.ready() {
		t.Error("ready after the lease was lost")
	}
	d := a.desired()
	if d == nil || d.Own.Subnet != own.Subnet || len(d.Peers) != 1 || d.Peers[0].Subnet != peer.Subnet {
		t.Errorf("desired state while the lease is lost: %+v; want the old lease and the peer kept", d)
	}

	a.onLease(own, true)
	a.mu.Lock()
	lost := a.lost
	a.mu.Unlock()
	if lost || !a.ready() {
		t.Errorf("after re-acquisition: lost %v, ready %v; want ready again", lost, a.ready())
	}
	m := a.health.metrics
	if got := []float64{testutil.ToFloat64(m.leaseAcquired), testutil.ToFloat64(m.leaseLost), testutil.ToFloat64(m.leaseReacquired)}; !slices.Equal(got, []float64{2, 1, 1}) {
		t.Errorf("lease acquisitions, losses, re-acquisitions = %v, want [2 1 1]", got)
	}
}

// TestEnvFileWriteRetried checks that a failed write of the env file is retried and that the agent is not
// ready meanwhile: at the first lease, and after a re-acquisition with another subnet (where the file on
// disk still names the old one).
func TestEnvFileWriteRetried(t *testing.T) {
	netCfg, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	envPath := filepath.Join(t.TempDir(), "subnet.env")
	a := &agent{
		cfg: Config{SubnetFile: envPath, Reconcile: 10 * time.Millisecond}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		net: netCfg, kick: make(chan struct{}, 1), health: newHealth(), be: &fakeBackend{},
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.reconcileLoop(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	// A directory where the env file goes makes the rename fail.
	block := func() {
		t.Helper()
		if err := os.MkdirAll(filepath.Join(envPath, "blocker"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unblock := func() {
		t.Helper()
		if err := os.RemoveAll(envPath); err != nil {
			t.Fatal(err)
		}
	}
	waitEnv := func(subnetWant string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			env, err := subnet.ReadEnvFile(envPath)
			if err == nil && env.Subnet.String() == subnetWant && a.ready() {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("env file %+v, %v, ready %v; want FLANNEL_SUBNET=%s written and ready", env, err, a.ready(), subnetWant)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	lease := func(p string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(p), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11")}}
	}

	block()
	a.mu.Lock()
	a.haveWatch = true
	a.mu.Unlock()
	a.onLease(lease("10.5.7.0/24"), true)
	time.Sleep(100 * time.Millisecond)
	if a.ready() {
		t.Error("ready although the env file could not be written")
	}
	unblock()
	waitEnv("10.5.7.1/24")

	// Re-acquired with another subnet while the file cannot be written: the file names the old subnet.
	a.onLease(lease("10.5.7.0/24"), false)
	unblock()
	block()
	a.onLease(lease("10.5.9.0/24"), true)
	time.Sleep(100 * time.Millisecond)
	if a.ready() {
		t.Error("ready although the env file still names the old subnet")
	}
	unblock()
	waitEnv("10.5.9.1/24")
}

// fakeBackend is a backend whose Set always succeeds.
type fakeBackend struct{}

func (fakeBackend) Up(context.Context) (backend.Local, error) { return backend.Local{}, nil }
func (fakeBackend) Set(*backend.Config) error                 { return nil }
func (fakeBackend) Close() error                              { return nil }

// TestStoreEndingLeavesAgentNotReady checks the agent's side of the retry contract (subnet.Store): the store
// retries by itself, so Hold or a lease watch that returns while weftd runs ended for good (here: the store
// is closed). The agent does not call them again; it stays up, ready no more, with the error logged.
func TestStoreEndingLeavesAgentNotReady(t *testing.T) {
	srv := etcdtest.Start(t)
	st, err := etcdstore.New(etcdstore.Config{Endpoints: srv.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	netCfg, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		run    func(*agent, context.Context)
		failed func(*agent) bool
	}{
		{"hold", func(a *agent, ctx context.Context) {
			a.holdLease(ctx, st, subnet.AcquireRequest{Config: netCfg, Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11")}})
		}, func(a *agent) bool { return a.holdFailed }},
		{"watch", func(a *agent, ctx context.Context) { a.watchLeases(ctx, st) }, func(a *agent) bool { return a.watchFailed }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			a := &agent{cfg: Config{SubnetFile: filepath.Join(t.TempDir(), "subnet.env")}, log: slog.New(slog.NewTextHandler(&logs, nil)),
				net: netCfg, kick: make(chan struct{}, 1), health: newHealth()}
			a.onLease(subnet.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11")}}, true)
			a.mu.Lock()
			a.synced = true
			a.mu.Unlock()
			if !a.ready() {
				t.Fatal("not ready before the store ended")
			}
			done := make(chan struct{})
			go func() { tc.run(a, t.Context()); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the agent's loop did not return after the store ended")
			}
			a.mu.Lock()
			failed := tc.failed(a)
			a.mu.Unlock()
			if !failed || a.ready() || !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "etcd store closed") {
				t.Errorf("after the store ended: failed %v, ready %v; want failed, not ready, and an error naming the closed store:\n%s", failed, a.ready(), logs.String())
			}
		})
	}
}

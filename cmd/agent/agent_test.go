package main

import (
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/weft-net/weft/subnet"
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
	a.mu.Lock()
	a.all, a.haveWatch = []subnet.Lease{own, peer}, true
	a.mu.Unlock()
	a.health.ready.Store(true)

	env, err := subnet.ReadEnvFile(envPath)
	if err != nil || env.Subnet.String() != "10.5.7.1/24" || env.Network.String() != "10.5.0.0/16" {
		t.Fatalf("env file: %+v, %v", env, err)
	}

	a.onLease(own, false)
	if a.health.ready.Load() {
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
	if lost {
		t.Error("still marked lost after re-acquisition")
	}
	if a.acquisitions.Load() != 2 {
		t.Errorf("acquisitions = %d, want 2", a.acquisitions.Load())
	}
}

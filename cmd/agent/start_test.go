package main

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet/etcdstore"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// syncBuffer is a bytes.Buffer safe for a logger on one goroutine and a test reading on another.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// enableAuth creates etcd's root user with password pw and turns authentication on.
func enableAuth(t *testing.T, srv *etcdtest.Server, pw string) {
	t.Helper()
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := cli.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserAdd(ctx, "root", pw); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestStartWaitsForEtcd checks that weftd started while etcd is down waits for it, with and without
// password authentication (which needs etcd at connect time), logging the endpoint, and goes on once etcd is
// back: here it reaches the next step, waiting for the missing network config.
func TestStartWaitsForEtcd(t *testing.T) {
	for _, tc := range []struct {
		name string
		auth bool
	}{{"no-auth", false}, {"password", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := etcdtest.Start(t)
			cfg := Config{
				Etcd:       etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "/weft/start"},
				SubnetFile: filepath.Join(t.TempDir(), "subnet.env"),
				LeaseTTL:   time.Minute,
				Reconcile:  time.Second,
			}
			if tc.auth {
				enableAuth(t, srv, "rootpw")
				cfg.Etcd.Username, cfg.Etcd.Password = "root", "rootpw"
			}
			srv.Stop()

			var logs syncBuffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- run(ctx, cfg, log) }()

			// Past the etcd client's dial timeout (5 s) and the request timeout (10 s), weftd must still be waiting.
			select {
			case err := <-done:
				t.Fatalf("run returned %v while etcd was down; want it to wait\n%s", err, logs.String())
			case <-time.After(12 * time.Second):
			}
			want := "cannot reach etcd at " + srv.Endpoints()[0] + ": connection refused"
			if !strings.Contains(logs.String(), want) {
				t.Errorf("the log does not say %q:\n%s", want, logs.String())
			}
			srv.Restart()
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(logs.String(), "network config missing") {
				if time.Now().After(deadline) {
					t.Fatalf("weftd did not go on after etcd came back:\n%s", logs.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run after cancel: %v, want nil", err)
			}
		})
	}
}

// TestOpsNameUnreachableEtcd checks that an operator command says which etcd endpoint it cannot reach and
// why, not only "context deadline exceeded".
func TestOpsNameUnreachableEtcd(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ep := srv.Endpoints()[0]
	srv.Stop() // nothing listens on its port now
	var stdout, stderr bytes.Buffer
	code := dispatch(t.Context(), []string{"leases", "--etcd-endpoints", ep}, func(string) string { return "" }, &stdout, &stderr)
	want := "cannot reach etcd at " + ep + ": connection refused"
	if code == 0 || !strings.Contains(stderr.String(), want) {
		t.Errorf("weftd leases with etcd down: exit %d, stderr %q; want non-zero and %q", code, stderr.String(), want)
	}
}

// TestOneAgentPerSubnetFile checks that a second weftd for the same subnet file refuses to start, naming the
// file and the holder, while the first runs; once the first stops, it may start.
func TestOneAgentPerSubnetFile(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	srv.Stop() // the first agent waits for etcd: it is running but gets no further
	cfg := Config{
		Etcd:       etcdstore.Config{Endpoints: srv.Endpoints(), Prefix: "/weft/lock"},
		SubnetFile: filepath.Join(t.TempDir(), "subnet.env"),
		LeaseTTL:   time.Minute,
		Reconcile:  time.Second,
	}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log) }()
	time.Sleep(500 * time.Millisecond)

	ctx2, cancel2 := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel2()
	err := run(ctx2, cfg, log)
	if err == nil || !strings.Contains(err.Error(), cfg.SubnetFile) || !strings.Contains(err.Error(), "another weftd") {
		t.Errorf("second weftd on %s: %v; want an error naming the file and another weftd", cfg.SubnetFile, err)
	}
	if ctx2.Err() != nil {
		t.Errorf("the second weftd waited instead of refusing at once")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("first weftd: %v", err)
	}
	ctx3, cancel3 := context.WithTimeout(t.Context(), time.Second)
	defer cancel3()
	if err := run(ctx3, cfg, log); err != nil {
		t.Errorf("weftd after the first stopped: %v, want it to start (and stop with its context)", err)
	}
}

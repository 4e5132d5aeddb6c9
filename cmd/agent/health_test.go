package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHealthServer serves on a loopback port: /healthz always answers, /readyz and weft_ready follow the
// agent's readiness and the rules, /metrics lists the counters (see also TestExposition), and serve returns
// once its context ends.
func TestHealthServer(t *testing.T) {
	h := newHealth()
	var ready atomic.Bool
	h.ready = ready.Load
	h.metrics.setBackend("udp", statsBackend{stats: map[string]uint64{"drop_unknown_peer": 3}})
	ln, err := h.listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.serve(ctx, ln, slog.New(slog.NewTextHandler(io.Discard, nil))); close(done) }()
	defer func() { cancel(); <-done }()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz = %d, want 200", code)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz before ready = %d, want 503", code)
	}
	// A backend that reports its data path broken (udp: TUN lost, not recreatable) fails /healthz.
	var broken atomic.Pointer[error]
	h.setAlive(func() error {
		if e := broken.Load(); e != nil {
			return *e
		}
		return nil
	})
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz with a working data path = %d, want 200", code)
	}
	e := errors.New("TUN lost")
	broken.Store(&e)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "TUN lost") {
		t.Errorf("/healthz with a broken data path = %d %q, want 503 naming the cause", code, body)
	}
	broken.Store(nil)
	ready.Store(true)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz when ready = %d, want 200", code)
	}
	h.rulesPending.Store(true)
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz with rules pending = %d, want 503", code)
	}
	h.rulesPending.Store(false)
	h.peers.Store(2)
	_, body := get("/metrics")
	for _, want := range []string{"weft_ready 1\n", "weft_peers 2\n", "weft_udp_drop_unknown_peer 3\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/healthz"); err == nil {
		t.Error("health server still answers after serve returned")
	}
}

// freePort returns a loopback TCP port that nothing listens on (it was free a moment ago).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

// TestHealthServedBeforeStore runs the agent with a store it cannot reach: the health server answers at
// once (/healthz 200, /readyz 503), weftd keeps waiting instead of exiting, and it stops cleanly when its
// context ends. With a username the etcd client authenticates when it is created, so opening the store
// itself fails and is retried.
func TestHealthServedBeforeStore(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"etcd-unreachable", nil},
		{"etcd-auth-fails", []string{"--etcd-username=weft", "--etcd-password=secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hport := freePort(t)
			args := append([]string{
				fmt.Sprintf("--etcd-endpoints=http://127.0.0.1:%d", freePort(t)),
				"--healthz-ip=127.0.0.1", fmt.Sprintf("--healthz-port=%d", hport),
				"--subnet-file=" + filepath.Join(t.TempDir(), "subnet.env"),
			}, tc.extra...)
			cfg, err := agentConfig(args, func(string) string { return "" }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- run(ctx, cfg, slog.New(slog.NewTextHandler(t.Output(), nil))) }()

			base := fmt.Sprintf("http://127.0.0.1:%d", hport)
			status := func(path string) int {
				resp, err := http.Get(base + path)
				if err != nil {
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			deadline := time.Now().Add(5 * time.Second)
			for status("/healthz") != 200 {
				if time.Now().After(deadline) {
					t.Fatal("/healthz did not answer 200 within 5s of start while the store is unreachable")
				}
				time.Sleep(20 * time.Millisecond)
			}
			// Past the etcd dial timeout (5 s), so a failed authentication has been retried at least once.
			for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
				if c := status("/healthz"); c != 200 {
					t.Fatalf("/healthz = %d while waiting for the store, want 200", c)
				}
				if c := status("/readyz"); c != 503 {
					t.Fatalf("/readyz = %d while waiting for the store, want 503", c)
				}
				select {
				case err := <-done:
					t.Fatalf("run returned while waiting for the store: %v", err)
				default:
				}
			}
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("run after its context ended: %v, want nil", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("run did not return within 15s of its context ending")
			}
			if status("/healthz") != 0 {
				t.Error("health server still answers after run returned")
			}
		})
	}
}

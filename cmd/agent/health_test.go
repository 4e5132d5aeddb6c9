package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHealthServer serves on a loopback port: /healthz always answers, /readyz and weft_ready follow the
// agent's readiness and the rules, /metrics lists the counters, and serve returns once its context ends.
func TestHealthServer(t *testing.T) {
	h := newHealth()
	var ready atomic.Bool
	h.ready = ready.Load
	h.stats = func() []metric { return []metric{{"weft_udp_drop_unknown_peer", 3}} }
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

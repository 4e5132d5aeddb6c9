package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// health serves /healthz (200 while running, 503 while the backend reports its data path broken), /readyz
// (200 once the env file is written, the data path is in sync and the packet filter rules are in place),
// /metrics (Prometheus, see metrics) and /status (JSON for `weftd status`).
type health struct {
	ready        func() bool                  // lease held, env file written, data path in sync; set before serving
	rulesPending atomic.Bool                  // packet filter rules wanted but not (yet) in place
	peers        atomic.Int64                 // peers in the last applied state
	alive        atomic.Pointer[func() error] // the backend's data path check (backend.Checker); nil: none
	metrics      *metrics
	status       atomic.Pointer[func() agentStatus] // set by run; nil: /status says starting
}

// setAlive makes /healthz fail while f reports the data path cannot work.
func (h *health) setAlive(f func() error) { h.alive.Store(&f) }

// setStatus makes /status answer with f's report (the health server may already be serving).
func (h *health) setStatus(f func() agentStatus) { h.status.Store(&f) }

// isReady is what /readyz and weft_ready report.
func (h *health) isReady() bool { return h.ready() && !h.rulesPending.Load() }

func newHealth() *health {
	h := &health{ready: func() bool { return false }}
	h.metrics = newMetrics(h)
	return h
}

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if f := h.alive.Load(); f != nil {
			if err := (*f)(); err != nil {
				http.Error(w, "data path broken: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !h.isReady() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("/metrics", h.metrics.handler())
	mux.HandleFunc("/status", h.serveStatus)
	return mux
}

func (h *health) listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health server on %s: %w", addr, err)
	}
	return ln, nil
}

// serve runs the health server until ctx ends, then shuts it down (waiting up to 2 s for open requests) and
// returns only when both Serve and the shutdown are done.
func (h *health) serve(ctx context.Context, ln net.Listener, log *slog.Logger) {
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	log.Debug("health server listening", "addr", ln.Addr())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }() // waited for below
	select {
	case err := <-errc:
		log.Error("health server", "err", err)
		return
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("health server shutdown", "err", err)
	}
	<-errc
}

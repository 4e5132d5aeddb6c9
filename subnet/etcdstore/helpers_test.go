package etcdstore

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

const (
	net16 = `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`
	// Room for exactly four /24 subnets: 10.6.0.0 to 10.6.3.0.
	net4 = `{"Network":"10.6.0.0/22","SubnetLen":24,"SubnetMin":"10.6.0.0","Backend":{"Type":"vxlan"}}`

	subnetsPrefix = subnet.DefaultPrefix + "/subnets/"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newStore returns a store of srv with a short request timeout, closed by t.Cleanup.
func newStore(t testing.TB, srv *etcdtest.Server, mods ...func(*Config)) *Store {
	t.Helper()
	cfg := Config{Endpoints: srv.Endpoints(), RequestTimeout: 5 * time.Second}
	if f := srv.TLS(); f != nil {
		cfg.CertFile, cfg.KeyFile, cfg.CAFile = f.ClientCertFile, f.ClientKeyFile, f.CAFile
	}
	for _, m := range mods {
		m(&cfg)
	}
	st, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func withTTL(d time.Duration) func(*Config) { return func(c *Config) { c.LeaseTTL = d } }

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func setConfig(t testing.TB, st *Store, raw string) {
	t.Helper()
	if err := st.SetConfig(testCtx(t, 10*time.Second), []byte(raw)); err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
}

func attrs(ip string) subnet.Attrs {
	return subnet.Attrs{PublicIP: netip.MustParseAddr(ip), BackendType: "vxlan", BackendData: []byte(`{"VNI":1}`)}
}

func leaseValue(ip string) string {
	return fmt.Sprintf(`{"PublicIP":%q,"PublicIPv6":null,"BackendType":"vxlan"}`, ip)
}

// holder runs Hold on its own goroutine.
type holder struct {
	leases chan subnet.Lease
	lost   chan subnet.Lease // leases Hold reported lost
	done   chan error
	cancel context.CancelFunc
}

// startHold runs st.Hold(req) until the test ends or stop is called.
func startHold(t testing.TB, st *Store, req subnet.AcquireRequest) *holder {
	return startHoldFn(t, st, req, nil)
}

// startHoldFn is startHold with a hook that Hold's callback runs first, on Hold's goroutine; nil: none.
func startHoldFn(t testing.TB, st *Store, req subnet.AcquireRequest, hook subnet.HoldFunc) *holder {
	ctx, cancel := context.WithCancel(context.Background())
	h := &holder{leases: make(chan subnet.Lease, 100), lost: make(chan subnet.Lease, 100), done: make(chan error, 1), cancel: cancel}
	go func() {
		h.done <- st.Hold(ctx, req, func(l subnet.Lease, held bool) {
			if hook != nil {
				hook(l, held)
			}
			if held {
				h.leases <- l
			} else {
				h.lost <- l
			}
		})
	}()
	t.Cleanup(func() { h.stop(t) })
	return h
}

// stop cancels Hold and waits for it to return; it returns Hold's error.
func (h *holder) stop(t testing.TB) error {
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Errorf("Hold did not return 10 s after its context ended")
		return nil
	}
}

// next waits for the next lease passed to fn.
func (h *holder) next(t testing.TB, timeout time.Duration) subnet.Lease {
	t.Helper()
	select {
	case l := <-h.leases:
		return l
	case err := <-h.done:
		t.Fatalf("Hold returned %v before delivering a lease", err)
	case <-time.After(timeout):
		t.Fatalf("no lease from Hold within %s", timeout)
	}
	return subnet.Lease{}
}

// rawGet reads one key directly.
func rawGet(t testing.TB, cli *clientv3.Client, key string) (value string, lease clientv3.LeaseID, modRev int64, ok bool) {
	t.Helper()
	resp, err := cli.Get(testCtx(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, 0, false
	}
	kv := resp.Kvs[0]
	return string(kv.Value), clientv3.LeaseID(kv.Lease), kv.ModRevision, true
}

func rawPut(t testing.TB, cli *clientv3.Client, key, value string, opts ...clientv3.OpOption) {
	t.Helper()
	if _, err := cli.Put(testCtx(t, 10*time.Second), key, value, opts...); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

func keyOf(l subnet.Lease) string { return subnetsPrefix + l.Key() }

// eventually polls cond every 100 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

package etcdstore

import (
	"testing"
	"time"

	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// TestRenewal checks the etcd lease renewal against a real etcd: it keeps a lease alive past its TTL, rides
// out etcd being away for most of the TTL right after the grant (the etcd client's own keepalive gave up
// after DialTimeout + 1 s), and reports the lease gone when it is revoked or cannot be renewed for its TTL.
func TestRenewal(t *testing.T) {
	t.Parallel()
	const ttl = 6 * time.Second
	grant := func(t *testing.T, st *Store, ttl time.Duration) *renewal {
		t.Helper()
		ctx := testCtx(t, 10*time.Second)
		sent := time.Now()
		g, err := st.cli.Grant(ctx, int64(ttl/time.Second))
		if err != nil {
			t.Fatal(err)
		}
		r := st.renew(g.ID, sent, time.Duration(g.TTL)*time.Second)
		t.Cleanup(r.Orphan)
		return r
	}
	alive := func(t *testing.T, st *Store, r *renewal) bool {
		t.Helper()
		resp, err := st.cli.TimeToLive(testCtx(t, 10*time.Second), r.Lease())
		if err != nil {
			t.Fatal(err)
		}
		return resp.TTL > 0
	}
	t.Run("outlives its TTL", func(t *testing.T) {
		t.Parallel()
		st := newStore(t, etcdtest.Start(t), withTTL(ttl))
		r := grant(t, st, ttl)
		time.Sleep(2 * ttl)
		select {
		case <-r.Done():
			t.Fatal("renewal reported the lease gone")
		default:
		}
		if !alive(t, st, r) {
			t.Fatalf("etcd lease %x expired after %s (TTL %s) while renewed", r.Lease(), 2*ttl, ttl)
		}
	})
	t.Run("etcd away right after the grant", func(t *testing.T) {
		t.Parallel()
		const ttl = 10 * time.Second // gRPC reconnects within 5 s of etcd's return
		srv := etcdtest.Start(t)
		st := newStore(t, srv, withTTL(ttl), func(c *Config) { c.DialTimeout = time.Second })
		r := grant(t, st, ttl)
		srv.Stop()
		time.Sleep(4 * time.Second) // past the first renewal (TTL/3) and DialTimeout + 1 s
		srv.Restart()
		// etcd's restart extends the lease once (a new leader); only renewals keep it alive past that.
		time.Sleep(ttl + 2*time.Second)
		select {
		case <-r.Done():
			t.Fatal("renewal reported a valid lease gone after etcd was away for 4 s of its 10 s TTL")
		default:
		}
		if !alive(t, st, r) {
			t.Fatalf("etcd lease %x expired: not renewed after etcd came back", r.Lease())
		}
	})
	t.Run("revoked", func(t *testing.T) {
		t.Parallel()
		st := newStore(t, etcdtest.Start(t), withTTL(ttl))
		r := grant(t, st, ttl)
		if _, err := st.cli.Revoke(testCtx(t, 10*time.Second), r.Lease()); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.Done():
		case <-time.After(ttl):
			t.Fatalf("revoked etcd lease %x not reported gone within its TTL", r.Lease())
		}
	})
	t.Run("etcd away for the TTL", func(t *testing.T) {
		t.Parallel()
		srv := etcdtest.Start(t)
		st := newStore(t, srv, withTTL(ttl))
		r := grant(t, st, ttl)
		srv.Stop()
		start := time.Now()
		select {
		case <-r.Done():
			if d := time.Since(start); d < ttl-time.Second {
				t.Fatalf("lease reported gone after %s, before its TTL %s ran out", d, ttl)
			}
		case <-time.After(ttl + 2*time.Second):
			t.Fatalf("etcd unreachable for the lease's TTL: not reported gone within %s", ttl+2*time.Second)
		}
	})
}

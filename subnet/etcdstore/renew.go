package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// renewal keeps one etcd lease alive: one KeepAliveOnce every third of its TTL (8 hours with flannel's
// 24-hour default), retried with backoff while etcd cannot be reached. clientv3's own KeepAlive would do
// the same work but wakes twice a second for as long as the client lives, whatever the TTL: the largest
// part of an idle weftd's CPU.
//
// The lease counts as gone (Done closes) when etcd says so (it expired or was revoked), or when no renewal
// has succeeded for its whole TTL, counted from the last request etcd answered: a conservative deadline,
// since etcd only ever extends a lease (a new leader restarts every TTL).
type renewal struct {
	id     clientv3.LeaseID
	done   chan struct{} // closed when the lease is gone
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// renew starts renewing lease id, granted (or last renewed) at from with ttl.
func (s *Store) renew(id clientv3.LeaseID, from time.Time, ttl time.Duration) *renewal {
	ctx, cancel := context.WithCancel(context.Background())
	r := &renewal{id: id, done: make(chan struct{}), cancel: cancel}
	r.wg.Go(func() { s.renewLoop(ctx, r, from.Add(ttl), ttl/3) })
	return r
}

func (s *Store) renewLoop(ctx context.Context, r *renewal, deadline time.Time, wait time.Duration) {
	log := s.log.With("etcd_lease", fmt.Sprintf("%x", int64(r.id)))
	var bo backoff
	t := time.NewTimer(wait)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := time.Now()
		rctx, rcancel := context.WithTimeout(ctx, min(s.reqTimeout, max(time.Until(deadline), time.Second)))
		resp, err := s.cli.KeepAliveOnce(rctx, r.id)
		rcancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			log.Debug("etcd lease gone", "err", err)
			close(r.done)
			return
		case err != nil:
			if !time.Now().Before(deadline) {
				log.Debug("etcd lease not renewed for its TTL", "err", err)
				close(r.done)
				return
			}
			wait = min(bo.next(), time.Until(deadline))
			log.Debug("renew etcd lease failed; retrying", "err", err, "retry_in", wait)
		default:
			bo.reset()
			ttl := time.Duration(resp.TTL) * time.Second
			deadline = sent.Add(ttl)
			wait = ttl / 3
		}
		t.Reset(wait)
	}
}

// Lease returns the etcd lease.
func (r *renewal) Lease() clientv3.LeaseID { return r.id }

// Done is closed when the lease is gone (not when orphaned).
func (r *renewal) Done() <-chan struct{} { return r.done }

// Orphan stops renewing and waits for the renewal to end; the lease expires after its TTL unless revoked.
// Idempotent.
func (r *renewal) Orphan() {
	r.cancel()
	r.wg.Wait()
}

package etcdstore

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// LeaseTTL returns the time left on l's etcd lease, as etcd reports it (keepalives renew it), or ok false
// for a key without an etcd lease (a reservation). It is an error if l's key does not exist.
func (s *Store) LeaseTTL(ctx context.Context, l subnet.Lease) (left time.Duration, ok bool, err error) {
	key := s.leaseKey(l)
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, key)
	if err != nil {
		return 0, false, fmt.Errorf("read etcd key %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, false, fmt.Errorf("etcd key %s: %w", key, ErrNotFound)
	}
	id := clientv3.LeaseID(resp.Kvs[0].Lease)
	if id == clientv3.NoLease {
		return 0, false, nil
	}
	ttl, err := s.cli.TimeToLive(rctx, id)
	if err != nil {
		return 0, false, fmt.Errorf("etcd key %s: TTL of etcd lease %x: %w", key, int64(id), err)
	}
	return time.Duration(max(ttl.TTL, 0)) * time.Second, true, nil
}

package etcdstore

import (
	"context"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DeleteLease deletes the key holding IPv4 subnet p, lease or reservation, even one with an unreadable value,
// guarded by the revision it was read at. A node still running re-acquires a subnet (preferring the same
// one); stop its agent first to evict it. A missing key is ErrNotFound.
func (s *Store) DeleteLease(ctx context.Context, p netip.Prefix) error {
	entries, _, err := s.list(ctx)
	if err != nil {
		return fmt.Errorf("delete lease %s: %w", p, err)
	}
	e := findSubnet(entries, p)
	if e == nil {
		return fmt.Errorf("delete lease %s: %w", p, ErrNotFound)
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.ModRevision(e.key), "=", e.modRev)).
		Then(clientv3.OpDelete(e.key)).Commit()
	if err != nil {
		return fmt.Errorf("delete lease %s: delete etcd key %s: %w", p, e.key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("delete lease %s: etcd key %s changed meanwhile: %w", p, e.key, ErrConflict)
	}
	s.log.Info("lease deleted", "key", e.key)
	return nil
}

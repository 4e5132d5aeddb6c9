package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// errCompacted means the watch fell behind a compaction; Watch re-lists at once.
var errCompacted = errors.New("watch revision compacted")

// Watch calls fn with the complete set of readable leases, sorted by subnet, once at start and after every
// batch of changes, until ctx ends; then it returns nil (or ErrClosed if the store is closed). fn runs on
// Watch's goroutine and gets a new slice each time; the first call waits until etcd answers.
//
// It lists the leases and watches from the revision after the list. The etcd client resumes the watch across
// brief disconnects by itself. After a compaction past the watched revision, or if the watch ends for another
// reason (etcd gone for long), Watch lists again (with backoff while etcd is unreachable), calls fn if the set
// differs from the last one delivered, and watches from the new revision: no change is missed.
func (s *Store) Watch(ctx context.Context, fn func([]subnet.Lease)) error {
	w := &leaseWatch{s: s, fn: fn}
	var bo backoff
	for {
		err := w.run(ctx, &bo)
		if ctx.Err() != nil {
			return nil
		}
		if s.closed() {
			return fmt.Errorf("watch leases: %w", ErrClosed)
		}
		if errors.Is(err, errCompacted) {
			s.log.Info("lease watch fell behind a compaction; listing again", "err", err)
			continue
		}
		d := bo.next()
		s.log.Warn("lease watch failed; listing again", "err", err, "retry_in", d)
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// leaseWatch is the state of one Watch call.
type leaseWatch struct {
	s         *Store
	fn        func([]subnet.Lease)
	cur       map[string]subnet.Lease // readable leases by key
	delivered map[string]subnet.Lease // what fn got last; nil before the first call
}

// run lists, delivers and watches until the watch fails or ctx ends.
func (w *leaseWatch) run(ctx context.Context, bo *backoff) error {
	s := w.s
	entries, rev, err := s.list(ctx)
	if err != nil {
		return err
	}
	bo.reset()
	w.cur = map[string]subnet.Lease{}
	for _, e := range entries {
		if e.err == nil {
			w.cur[e.key] = e.lease
		}
	}
	w.deliver()
	if s.testHookBeforeWatch != nil {
		s.testHookBeforeWatch()
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	prefix := s.subnetsPrefix()
	for wr := range s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("watch %s from revision %d: %w (compacted to %d)", prefix, rev+1, errCompacted, wr.CompactRevision)
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			if ev.Type == clientv3.EventTypeDelete {
				delete(w.cur, key)
				s.forgetUnreadable(key)
				continue
			}
			e := s.decode(ev.Kv)
			if e.err != nil {
				s.warnUnreadable(e)
				delete(w.cur, key)
				continue
			}
			s.forgetUnreadable(key)
			w.cur[key] = e.lease
		}
		if n := len(wr.Events); n > 0 {
			rev = wr.Events[n-1].Kv.ModRevision
		}
		w.deliver()
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watch %s: channel closed", strings.TrimSuffix(prefix, "/"))
}

// deliver calls fn with the current set if it differs from the last delivered one (always the first time).
func (w *leaseWatch) deliver() {
	if w.delivered != nil && maps.EqualFunc(w.cur, w.delivered, sameLease) {
		return
	}
	w.delivered = maps.Clone(w.cur)
	out := slices.Collect(maps.Values(w.cur))
	if out == nil {
		out = []subnet.Lease{}
	}
	slices.SortFunc(out, subnet.CompareLeases)
	w.fn(out)
}

// sameLease compares what a watcher can observe of a lease: a new write changes the revision.
func sameLease(a, b subnet.Lease) bool {
	return a.Revision == b.Revision && a.Reservation == b.Reservation
}

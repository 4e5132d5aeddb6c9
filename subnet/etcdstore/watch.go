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
//
// Each call costs time in the number of leases; WatchChanges reports changes alone.
func (s *Store) Watch(ctx context.Context, fn func([]subnet.Lease)) error {
	cur := map[string]subnet.Lease{}
	var delivered map[string]subnet.Lease // what fn got last; nil before the first call
	return s.WatchChanges(ctx, func(c subnet.Changes) {
		if c.Full {
			clear(cur)
		}
		for _, l := range c.Put {
			cur[l.Key()] = l
		}
		for _, l := range c.Deleted {
			delete(cur, l.Key())
		}
		if delivered != nil && maps.EqualFunc(cur, delivered, sameLease) {
			return
		}
		delivered = maps.Clone(cur)
		out := slices.Collect(maps.Values(cur))
		if out == nil {
			out = []subnet.Lease{}
		}
		slices.SortFunc(out, subnet.CompareLeases)
		fn(out)
	})
}

// WatchChanges implements subnet.ChangeWatcher with Watch's listing and resumption: a Full batch after each
// listing (sorted by subnet), then the changes of each etcd watch response. It returns as Watch does.
func (s *Store) WatchChanges(ctx context.Context, fn func(subnet.Changes)) error {
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

// leaseWatch is the state of one WatchChanges call.
type leaseWatch struct {
	s  *Store
	fn func(subnet.Changes)
}

// run lists, delivers and watches until the watch fails or ctx ends.
func (w *leaseWatch) run(ctx context.Context, bo *backoff) error {
	s := w.s
	// A member without a leader refuses the listing at once (the client then asks another) instead of
	// making it wait out the request timeout: the listing after a watch that ended for want of a leader
	// may go to that same member.
	entries, rev, err := s.list(clientv3.WithRequireLeader(ctx))
	if err != nil {
		return err
	}
	bo.reset()
	full := subnet.Changes{Full: true, Put: []subnet.Lease{}}
	for _, e := range entries {
		if e.err == nil {
			full.Put = append(full.Put, e.lease)
		}
	}
	slices.SortFunc(full.Put, subnet.CompareLeases)
	w.fn(full)
	if s.testHookBeforeWatch != nil {
		s.testHookBeforeWatch()
	}

	// Require a leader: a member cut off from quorum ends the watch (ErrNoLeader) instead of keeping it
	// open and silent, and the listing that follows goes to a member that can answer.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	prefix := s.subnetsPrefix()
	for wr := range s.cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted) {
			return fmt.Errorf("watch %s from revision %d: %w (compacted to %d)", prefix, rev+1, errCompacted, wr.CompactRevision)
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("watch %s: %w", prefix, err)
		}
		// The last event of a key in the batch wins.
		last := map[string]entry{}
		var order []string
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			e := s.decode(ev.Kv)
			switch {
			case ev.Type == clientv3.EventTypeDelete:
				s.forgetUnreadable(key)
				e.err = errDeleted
			case e.err != nil:
				s.warnUnreadable(e)
			default:
				s.forgetUnreadable(key)
			}
			if _, seen := last[key]; !seen {
				order = append(order, key)
			}
			last[key] = e
		}
		var c subnet.Changes
		for _, key := range order {
			e := last[key]
			switch {
			case e.err == nil:
				c.Put = append(c.Put, e.lease)
			case e.lease.Subnet.IsValid() || e.lease.IPv6Subnet.IsValid(): // gone, or unreadable now
				c.Deleted = append(c.Deleted, subnet.Lease{Subnet: e.lease.Subnet, IPv6Subnet: e.lease.IPv6Subnet})
			}
		}
		if n := len(wr.Events); n > 0 {
			rev = wr.Events[n-1].Kv.ModRevision
		}
		if len(c.Put)+len(c.Deleted) > 0 {
			w.fn(c)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("watch %s: channel closed", strings.TrimSuffix(prefix, "/"))
}

// errDeleted marks the entry of a deleted key in a watch batch.
var errDeleted = errors.New("deleted")

// sameLease compares what a watcher can observe of a lease: a new write changes the revision.
func sameLease(a, b subnet.Lease) bool {
	return a.Revision == b.Revision && a.Reservation == b.Reservation
}

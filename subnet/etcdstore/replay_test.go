package etcdstore

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// change is one lease change a test wrote: a put of key at revision rev, or its deletion.
type change struct {
	key string // the lease key's name under <prefix>/subnets/ (subnet.Lease.Key)
	rev int64  // a put's revision (the key's ModRevision); 0 for a delete
	del bool
}

func (c change) String() string {
	if c.del {
		return "delete " + c.key
	}
	return fmt.Sprintf("put %s@%d", c.key, c.rev)
}

// replay checks what WatchChanges delivers against the changes a test wrote: every change is delivered once
// and in order, nothing is delivered that was not written. A batch may coalesce consecutive changes (the
// last change of a key wins, keys in the order of their first change), and a Full batch, after a listing,
// must be the state after some prefix of the writes that includes every change delivered so far.
type replay struct {
	state   map[string]int64 // what the watcher holds: key -> revision
	written []change
	next    int // written[:next] are delivered
}

// newReplay starts from the watcher's first (Full) batch.
func newReplay(first subnet.Changes) (*replay, error) {
	if !first.Full {
		return nil, fmt.Errorf("first batch %s is not a full listing", describe(first))
	}
	r := &replay{state: map[string]int64{}}
	for _, l := range first.Put {
		r.state[l.Key()] = l.Revision
	}
	return r, nil
}

func (r *replay) write(c change) { r.written = append(r.written, c) }

// pending returns the changes written and not yet delivered.
func (r *replay) pending() []change { return r.written[r.next:] }

// apply checks batch b and takes it in.
func (r *replay) apply(b subnet.Changes) error {
	if b.Full {
		got := map[string]int64{}
		for _, l := range b.Put {
			got[l.Key()] = l.Revision
		}
		s := maps.Clone(r.state)
		for q := r.next; ; q++ {
			if maps.Equal(s, got) {
				r.state, r.next = s, q
				return nil
			}
			if q == len(r.written) {
				return fmt.Errorf("full listing %s is no state after the changes delivered so far (%d of %d; pending %v)",
					describe(b), r.next, len(r.written), r.pending())
			}
			applyChange(s, r.written[q])
		}
	}
	want := subnet.Changes{}
	s := maps.Clone(r.state)
	var last map[string]change
	var order []string
	for q := r.next; q < len(r.written); q++ {
		c := r.written[q]
		applyChange(s, c)
		if last == nil {
			last = map[string]change{}
		}
		if _, ok := last[c.key]; !ok {
			order = append(order, c.key)
		}
		last[c.key] = c
		want = subnet.Changes{}
		for _, k := range order {
			if c := last[k]; c.del {
				want.Deleted = append(want.Deleted, subnet.Lease{Subnet: mustKeySubnet(k)})
			} else {
				want.Put = append(want.Put, subnet.Lease{Subnet: mustKeySubnet(k), Revision: c.rev})
			}
		}
		if describe(want) == describe(b) {
			r.state, r.next = s, q+1
			return nil
		}
	}
	return fmt.Errorf("batch %s is not the next changes written (delivered %d of %d; pending %v)",
		describe(b), r.next, len(r.written), r.pending())
}

func applyChange(s map[string]int64, c change) {
	if c.del {
		delete(s, c.key)
	} else {
		s[c.key] = c.rev
	}
}

// describe writes a batch as text for comparisons and messages: "full" or "changes", then the puts with
// their revisions and the deletes, each in the batch's order.
func describe(b subnet.Changes) string {
	var sb strings.Builder
	if b.Full {
		sb.WriteString("full[")
	} else {
		sb.WriteString("changes[")
	}
	for _, l := range b.Put {
		fmt.Fprintf(&sb, " put %s@%d", l.Key(), l.Revision)
	}
	for _, l := range b.Deleted {
		fmt.Fprintf(&sb, " delete %s", l.Key())
	}
	sb.WriteString(" ]")
	return sb.String()
}

func mustKeySubnet(key string) netip.Prefix {
	v4, _, err := subnet.ParseKeyName(key)
	if err != nil {
		panic(err)
	}
	return v4
}

// leaseWriter writes lease changes through its own store (to the members a test chooses) and records them
// in a replay. A write that fails is retried; one that failed and yet took effect (a timeout after the
// commit) is recognised by its value, which is unique, so the record matches what etcd holds.
type leaseWriter struct {
	t  testing.TB
	st *Store
	r  *replay
}

// put writes the lease of sub (a key without an etcd lease, as another node's for the watcher).
func (w *leaseWriter) put(sub string) {
	w.t.Helper()
	key := subnetsPrefix + strings.Replace(sub, "/", "-", 1)
	// Unique among the replay's writes, whichever writer made them.
	value := fmt.Sprintf(`{"PublicIP":"192.0.2.100","PublicIPv6":null,"BackendType":"vxlan","WeftNodeID":"write-%d"}`, len(w.r.written)+1)
	w.do("put "+key, func(ctx context.Context) (int64, error) {
		resp, err := w.st.cli.Put(ctx, key, value)
		if err != nil {
			return 0, err
		}
		return resp.Header.Revision, nil
	}, func(kv *clientv3.GetResponse) (int64, bool) {
		if len(kv.Kvs) == 1 && string(kv.Kvs[0].Value) == value {
			return kv.Kvs[0].ModRevision, true
		}
		return 0, false
	}, func(rev int64) change { return change{key: strings.TrimPrefix(key, subnetsPrefix), rev: rev} })
}

// del deletes the lease of sub, which must exist.
func (w *leaseWriter) del(sub string) {
	w.t.Helper()
	key := subnetsPrefix + strings.Replace(sub, "/", "-", 1)
	w.do("delete "+key, func(ctx context.Context) (int64, error) {
		resp, err := w.st.cli.Delete(ctx, key)
		if err != nil {
			return 0, err
		}
		if resp.Deleted != 1 {
			return 0, fmt.Errorf("delete %s: deleted %d keys, want 1", key, resp.Deleted)
		}
		return resp.Header.Revision, nil
	}, func(kv *clientv3.GetResponse) (int64, bool) { return 0, len(kv.Kvs) == 0 },
		func(int64) change { return change{key: strings.TrimPrefix(key, subnetsPrefix), del: true} })
}

// do runs op until it succeeds, or until a read of the key shows that an attempt that failed took effect;
// then it records the change. It fails the test after 30 s.
func (w *leaseWriter) do(what string, op func(context.Context) (int64, error), done func(*clientv3.GetResponse) (int64, bool), rec func(int64) change) {
	w.t.Helper()
	key := strings.Fields(what)[1]
	deadline := time.Now().Add(30 * time.Second)
	failed := false
	for {
		ctx, cancel := context.WithTimeout(w.t.Context(), 3*time.Second)
		if failed {
			// Did the last attempt take effect after all?
			if resp, err := w.st.cli.Get(ctx, key); err == nil {
				if rev, ok := done(resp); ok {
					cancel()
					w.r.write(rec(rev))
					return
				}
			}
		}
		rev, err := op(ctx)
		cancel()
		if err == nil {
			w.r.write(rec(rev))
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s: %v", what, err)
		}
		failed = true
		time.Sleep(200 * time.Millisecond)
	}
}

// deliveries drains a watcher's batches into a replay.
type deliveries struct {
	t       testing.TB
	r       *replay
	batches <-chan subnet.Changes
	fulls   int // Full batches after the first
}

// waitAll takes batches until every change written is delivered, failing the test at by or on a batch the
// replay refuses.
func (d *deliveries) waitAll(by time.Time, what string) {
	d.t.Helper()
	timer := time.NewTimer(time.Until(by))
	defer timer.Stop()
	for len(d.r.pending()) > 0 {
		select {
		case b := <-d.batches:
			d.take(b)
		case <-timer.C:
			d.t.Fatalf("%s: changes %v not delivered by the watch", what, d.r.pending())
		}
	}
}

// drain takes the batches that have arrived, without waiting.
func (d *deliveries) drain() {
	d.t.Helper()
	for {
		select {
		case b := <-d.batches:
			d.take(b)
		default:
			return
		}
	}
}

func (d *deliveries) take(b subnet.Changes) {
	d.t.Helper()
	if b.Full {
		d.fulls++
	}
	if err := d.r.apply(b); err != nil {
		d.t.Fatal(err)
	}
}

// TestReplay checks the checker: streams that deliver every change once and in order pass, and a missed,
// repeated, reordered or invented change, or a listing from the past, fails.
func TestReplay(t *testing.T) {
	t.Parallel()
	own := lease("10.5.1.0/24", 5)
	put := func(sub string, rev int64) change { return change{key: strings.Replace(sub, "/", "-", 1), rev: rev} }
	del := func(sub string) change { return change{key: strings.Replace(sub, "/", "-", 1), del: true} }
	written := []change{put("10.5.2.0/24", 10), put("10.5.3.0/24", 11), put("10.5.2.0/24", 12), del("10.5.3.0/24")}
	full := func(ls ...subnet.Lease) subnet.Changes { return subnet.Changes{Full: true, Put: ls} }
	ch := func(puts []subnet.Lease, dels ...string) subnet.Changes {
		c := subnet.Changes{Put: puts}
		for _, d := range dels {
			c.Deleted = append(c.Deleted, subnet.Lease{Subnet: netip.MustParsePrefix(d)})
		}
		return c
	}
	for _, tc := range []struct {
		name    string
		batches []subnet.Changes
		wantErr string // empty: every batch passes and every change is delivered
	}{
		{name: "one by one", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}), ch([]subnet.Lease{lease("10.5.3.0/24", 11)}),
			ch([]subnet.Lease{lease("10.5.2.0/24", 12)}), ch(nil, "10.5.3.0/24"),
		}},
		{name: "coalesced", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 12), lease("10.5.3.0/24", 11)}), ch(nil, "10.5.3.0/24"),
		}},
		{name: "all in one", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 12)}, "10.5.3.0/24"),
		}},
		{name: "listing in between", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}),
			full(own, lease("10.5.2.0/24", 12), lease("10.5.3.0/24", 11)),
			ch(nil, "10.5.3.0/24"),
		}},
		{name: "missed", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}), ch([]subnet.Lease{lease("10.5.2.0/24", 12)}),
		}, wantErr: "not the next changes"},
		{name: "repeated", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}), ch([]subnet.Lease{lease("10.5.2.0/24", 10)}),
		}, wantErr: "not the next changes"},
		{name: "reordered", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.3.0/24", 11), lease("10.5.2.0/24", 12)}),
		}, wantErr: "not the next changes"},
		{name: "phantom delete", batches: []subnet.Changes{
			ch(nil, "10.5.1.0/24"),
		}, wantErr: "not the next changes"},
		{name: "listing from the past", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}), ch([]subnet.Lease{lease("10.5.3.0/24", 11)}), full(own),
		}, wantErr: "no state after"},
		{name: "not all delivered", batches: []subnet.Changes{
			ch([]subnet.Lease{lease("10.5.2.0/24", 10)}),
		}, wantErr: "pending"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := newReplay(full(own))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range written {
				r.write(c)
			}
			for _, b := range tc.batches {
				if err = r.apply(b); err != nil {
					break
				}
			}
			if err == nil && len(r.pending()) > 0 {
				err = fmt.Errorf("pending %v", r.pending())
			}
			if tc.wantErr == "" && err != nil {
				t.Errorf("error %v, want none", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func lease(sub string, rev int64) subnet.Lease {
	return subnet.Lease{Subnet: netip.MustParsePrefix(sub), Revision: rev}
}

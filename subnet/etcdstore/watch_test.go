package etcdstore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// watcher runs Watch on its own goroutine and records the snapshots.
type watcher struct {
	sets chan []subnet.Lease
	done chan error
}

func startWatch(t testing.TB, st *Store) *watcher {
	ctx := testCtx(t, time.Minute)
	w := &watcher{sets: make(chan []subnet.Lease, 1000), done: make(chan error, 1)}
	go func() { w.done <- st.Watch(ctx, func(ls []subnet.Lease) { w.sets <- ls }) }()
	return w
}

// summary renders a set as "subnet=publicIP" items in order.
func summary(ls []subnet.Lease) string {
	var b []string
	for _, l := range ls {
		b = append(b, fmt.Sprintf("%s=%s", l.Subnet, l.Attrs.PublicIP))
	}
	return strings.Join(b, " ")
}

// waitFor waits until a delivered set renders as want, and returns it.
func (w *watcher) waitFor(t testing.TB, want string) []subnet.Lease {
	t.Helper()
	timeout := time.After(15 * time.Second)
	last := "(nothing)"
	for {
		select {
		case ls := <-w.sets:
			if !slices.IsSortedFunc(ls, subnet.CompareLeases) {
				t.Errorf("delivered set not sorted: %s", summary(ls))
			}
			if last = summary(ls); last == want {
				return ls
			}
		case err := <-w.done:
			t.Fatalf("Watch returned %v", err)
		case <-timeout:
			t.Fatalf("Watch did not deliver %q; last delivered %q", want, last)
		}
	}
}

func TestWatchChanges(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	rawPut(t, cli, subnetsPrefix+"10.5.1.0-24", leaseValue("198.51.100.1"))
	w := startWatch(t, st)
	w.waitFor(t, "10.5.1.0/24=198.51.100.1")

	grant, err := cli.Grant(testCtx(t, 5*time.Second), 60)
	if err != nil {
		t.Fatal(err)
	}
	rawPut(t, cli, subnetsPrefix+"10.5.3.0-24", leaseValue("198.51.100.3"), clientv3.WithLease(grant.ID))
	ls := w.waitFor(t, "10.5.1.0/24=198.51.100.1 10.5.3.0/24=198.51.100.3")
	if !ls[0].Reservation || ls[1].Reservation || ls[1].Revision == 0 {
		t.Errorf("Reservation/Revision wrong: %+v", ls)
	}
	rawPut(t, cli, subnetsPrefix+"10.5.2.0-24", leaseValue("198.51.100.2"))
	w.waitFor(t, "10.5.1.0/24=198.51.100.1 10.5.2.0/24=198.51.100.2 10.5.3.0/24=198.51.100.3")
	rawPut(t, cli, subnetsPrefix+"10.5.2.0-24", leaseValue("198.51.100.22"))
	w.waitFor(t, "10.5.1.0/24=198.51.100.1 10.5.2.0/24=198.51.100.22 10.5.3.0/24=198.51.100.3")
	if _, err := cli.Delete(testCtx(t, 5*time.Second), subnetsPrefix+"10.5.1.0-24"); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.5.2.0/24=198.51.100.22 10.5.3.0/24=198.51.100.3")
	if _, err := cli.Revoke(testCtx(t, 5*time.Second), grant.ID); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "10.5.2.0/24=198.51.100.22")
	// A key outside subnets/ is not a lease.
	rawPut(t, cli, subnet.DefaultPrefix+"/config", net16)
	rawPut(t, cli, subnetsPrefix+"10.5.4.0-24", leaseValue("198.51.100.4"))
	w.waitFor(t, "10.5.2.0/24=198.51.100.22 10.5.4.0/24=198.51.100.4")
}

func TestWatchCompaction(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	rawPut(t, cli, subnetsPrefix+"10.5.1.0-24", leaseValue("198.51.100.1"))
	rawPut(t, cli, subnetsPrefix+"10.5.2.0-24", leaseValue("198.51.100.2"))
	// Between the first list and the watch, the leases change and history is compacted past the list's
	// revision: the watch from there fails with a compaction error.
	var once sync.Once
	st.testHookBeforeWatch = func() {
		once.Do(func() {
			rawPut(t, cli, subnetsPrefix+"10.5.3.0-24", leaseValue("198.51.100.3"))
			rawPut(t, cli, subnetsPrefix+"10.5.2.0-24", leaseValue("198.51.100.22"))
			if _, err := cli.Delete(testCtx(t, 5*time.Second), subnetsPrefix+"10.5.1.0-24"); err != nil {
				t.Error(err)
			}
			srv.Compact(t)
		})
	}
	w := startWatch(t, st)
	w.waitFor(t, "10.5.1.0/24=198.51.100.1 10.5.2.0/24=198.51.100.2")
	w.waitFor(t, "10.5.2.0/24=198.51.100.22 10.5.3.0/24=198.51.100.3")
	rawPut(t, cli, subnetsPrefix+"10.5.4.0-24", leaseValue("198.51.100.4"))
	got := w.waitFor(t, "10.5.2.0/24=198.51.100.22 10.5.3.0/24=198.51.100.3 10.5.4.0/24=198.51.100.4")
	real, err := st.Leases(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if summary(got) != summary(real) {
		t.Errorf("delivered %q, etcd has %q", summary(got), summary(real))
	}
}

func TestEtcdRestart(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv, withTTL(2*time.Second))
	setConfig(t, st, net16)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")})
	held := h.next(t, 10*time.Second)
	w := startWatch(t, newStore(t, srv))
	want := fmt.Sprintf("%s=198.51.100.1", held.Subnet)
	w.waitFor(t, want)

	// etcd is gone until the holder's keepalive gives up (2 s, the TTL, after its last response; the client
	// checks once a second): Hold reports the lease lost and retries until etcd is back, then takes its lease
	// again (etcd restores leases' TTLs on restart). A fixed outage would race the client: if it reconnects
	// before giving up, the lease survives and is rightly not taken again.
	t.Logf("%s etcd stopping", time.Now().Format("05.000"))
	srv.Stop()
	t.Logf("%s etcd stopped", time.Now().Format("05.000"))
	select {
	case l := <-h.lost:
		if l.Subnet != held.Subnet {
			t.Errorf("Hold reported %s lost, want %s", l.Subnet, held.Subnet)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("Hold did not report lease %s lost within 15 s of etcd stopping (lease TTL 2 s)", held.Subnet)
	}
	t.Logf("%s lease reported lost", time.Now().Format("05.000"))
	srv.Restart()
	t.Logf("%s etcd restarted", time.Now().Format("05.000"))
	if l := h.next(t, 15*time.Second); l.Subnet != held.Subnet {
		t.Errorf("after etcd restart the holder got %s, want %s", l.Subnet, held.Subnet)
	}
	// The watch resumes and delivers later changes.
	rawPut(t, cli, subnetsPrefix+"10.5.250.0-24", leaseValue("198.51.100.250"))
	got := w.waitFor(t, want+" 10.5.250.0/24=198.51.100.250")
	if l := got[0]; l.Reservation {
		t.Errorf("holder's lease became a reservation: %+v", l)
	}
	if _, lease, _, ok := rawGet(t, cli, keyOf(held)); !ok || lease == 0 {
		t.Errorf("holder's key after restart: present %v etcd lease %x", ok, lease)
	}
	select {
	case err := <-h.done:
		t.Errorf("Hold returned %v during the etcd outage", err)
	default:
	}
}

func TestUnreadableKeys(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	setConfig(t, st, net4)
	garbage := map[string]string{
		subnetsPrefix + "10.6.0.0-24":      `{"PublicIP":`,                  // not JSON
		subnetsPrefix + "10.6.2.0-24&junk": leaseValue("198.51.100.9"),      // bad IPv6 half
		subnetsPrefix + "10.6.4.0-24":      `{"PublicIP":"not an address"}`, // bad address (and outside the network)
		subnetsPrefix + "garbage":          leaseValue("198.51.100.9"),      // bad name
		subnetsPrefix + "10.6.1.128-24":    leaseValue("198.51.100.9"),      // bits beyond the length
		subnetsPrefix + "10.6.3.0-24/x":    leaseValue("198.51.100.9"),      // a deeper key: takes no subnet
	}
	revs := map[string]int64{}
	for k, v := range garbage {
		rawPut(t, cli, k, v)
		_, _, rev, _ := rawGet(t, cli, k)
		revs[k] = rev
	}
	rawPut(t, cli, subnetsPrefix+"10.6.1.0-24", leaseValue("198.51.100.1"))

	w := startWatch(t, st)
	w.waitFor(t, "10.6.1.0/24=198.51.100.1")
	// Unreadable keys still hold the IPv4 subnets they name: with 10.6.0.0 and 10.6.2.0 unreadable and
	// 10.6.1.0 held, only 10.6.3.0 is free, even for a node whose previous subnet was an unreadable one.
	prev := netip.MustParsePrefix("10.6.0.0/24")
	l := startHold(t, newStore(t, srv), subnet.AcquireRequest{Attrs: attrs("198.51.100.3"), Prev: prev}).next(t, 10*time.Second)
	if l.Subnet.String() != "10.6.3.0/24" {
		t.Errorf("got %s, want the one free subnet 10.6.3.0/24", l.Subnet)
	}
	w.waitFor(t, "10.6.1.0/24=198.51.100.1 10.6.3.0/24=198.51.100.3")
	// A full network is Hold's to retry: it logs an error naming the leases, and neither returns nor delivers.
	var logs lockedBuffer
	full, err := New(Config{Endpoints: srv.Endpoints(), RequestTimeout: 5 * time.Second},
		slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { full.Close() })
	h := startHold(t, full, subnet.AcquireRequest{Attrs: attrs("198.51.100.4")})
	eventually(t, 10*time.Second, "Hold logs the full network", func() bool {
		return strings.Contains(logs.String(), "level=ERROR") && strings.Contains(logs.String(), "(5 leases exist)")
	})
	select {
	case err := <-h.done:
		close(h.done)
		t.Errorf("Hold in a full network returned %v; want it to keep retrying", err)
	case l := <-h.leases:
		t.Errorf("got %s in a full network", l.Subnet)
	case <-time.After(time.Second):
	}
	// Operations on a subnet named by an unreadable key refuse, or leave it alone.
	if err := st.Reserve(testCtx(t, 5*time.Second), netip.MustParsePrefix("10.6.2.0/24"), netip.MustParseAddr("198.51.100.9")); err == nil {
		t.Error("Reserve of a subnet an unreadable key names succeeded")
	}
	if err := st.Unreserve(testCtx(t, 5*time.Second), netip.MustParsePrefix("10.6.3.0/24")); !errors.Is(err, ErrNotReservation) {
		t.Errorf("Unreserve of a held lease next to an unreadable key: %v, want ErrNotReservation", err)
	}
	// A key whose value becomes unreadable drops out of the set.
	rawPut(t, cli, subnetsPrefix+"10.6.1.0-24", `garbage`)
	w.waitFor(t, "10.6.3.0/24=198.51.100.3")

	leases, err := st.Leases(testCtx(t, 5*time.Second))
	if err != nil || summary(leases) != "10.6.3.0/24=198.51.100.3" {
		t.Errorf("Leases: %q, %v", summary(leases), err)
	}
	for k, v := range garbage {
		if got, _, rev, ok := rawGet(t, cli, k); !ok || got != v || rev != revs[k] {
			t.Errorf("unreadable key %s was changed: %q rev %d", k, got, rev)
		}
	}
	// Once a key that takes a subnet goes, the Hold still retrying takes that subnet.
	if _, err := cli.Delete(testCtx(t, 5*time.Second), subnetsPrefix+"10.6.0.0-24"); err != nil {
		t.Fatal(err)
	}
	if l := h.next(t, 15*time.Second); l.Subnet.String() != "10.6.0.0/24" {
		t.Errorf("Hold after a subnet was freed got %s, want 10.6.0.0/24", l.Subnet)
	}
}

// TestWarnedSetIsBounded checks that the set of unreadable keys already warned about holds only keys that
// are unreadable now: a key deleted or made readable leaves it, whether the watch or a list sees it.
func TestWarnedSetIsBounded(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	setConfig(t, st, net4)
	warned := st.Unreadable
	deleted, fixed := subnetsPrefix+"10.6.0.0-24", subnetsPrefix+"10.6.1.0-24"
	rawPut(t, cli, deleted, `{"PublicIP":`)
	rawPut(t, cli, fixed, `{"PublicIP":`)
	if _, err := st.Leases(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := warned(); n != 2 {
		t.Fatalf("warned about %d keys, want 2", n)
	}

	// Seen by the watch.
	w := startWatch(t, st)
	if _, err := cli.Delete(testCtx(t, 5*time.Second), deleted); err != nil {
		t.Fatal(err)
	}
	rawPut(t, cli, fixed, leaseValue("198.51.100.1"))
	w.waitFor(t, "10.6.1.0/24=198.51.100.1")
	if n := warned(); n != 0 {
		t.Errorf("after the watch saw one key deleted and one made readable: warned set holds %d keys, want 0", n)
	}

	// Seen by a list, in a store with no watch (whose delete event would forget the key by itself).
	lister := newStore(t, srv)
	listerWarned := lister.Unreadable
	rawPut(t, cli, deleted, `{"PublicIP":`)
	if _, err := lister.Leases(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := listerWarned(); n != 1 {
		t.Fatalf("a list warned about %d keys, want 1", n)
	}
	if _, err := cli.Delete(testCtx(t, 5*time.Second), deleted); err != nil {
		t.Fatal(err)
	}
	if _, err := lister.Leases(testCtx(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if n := listerWarned(); n != 0 {
		t.Errorf("after a list without the deleted key: warned set holds %d keys, want 0", n)
	}
}

// TestWatchChangesReportsOnlyChanges checks WatchChanges' batches: a Full listing first, then each write or
// delete alone (a Put of one lease, a Deleted naming it), so a change costs the same however many leases
// there are; an unreadable rewrite of a lease is a Deleted.
func TestWatchChangesReportsOnlyChanges(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	for i := range 20 {
		rawPut(t, cli, fmt.Sprintf("%s10.5.%d.0-24", subnetsPrefix, i+1), leaseValue(fmt.Sprintf("198.51.100.%d", i+1)))
	}
	batches := make(chan subnet.Changes, 100)
	ctx := testCtx(t, time.Minute)
	go st.WatchChanges(ctx, func(c subnet.Changes) { batches <- c })
	next := func() subnet.Changes {
		t.Helper()
		select {
		case c := <-batches:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no batch within 10 s")
		}
		return subnet.Changes{}
	}
	if c := next(); !c.Full || len(c.Put) != 20 || len(c.Deleted) != 0 {
		t.Fatalf("first batch: full %v, %d put, %d deleted; want a full listing of 20", c.Full, len(c.Put), len(c.Deleted))
	}
	rawPut(t, cli, subnetsPrefix+"10.5.99.0-24", leaseValue("198.51.100.99"))
	if c := next(); c.Full || len(c.Put) != 1 || c.Put[0].Subnet.String() != "10.5.99.0/24" || len(c.Deleted) != 0 {
		t.Errorf("after one put: %+v; want a Put of 10.5.99.0/24 alone", c)
	}
	if _, err := cli.Delete(ctx, subnetsPrefix+"10.5.3.0-24"); err != nil {
		t.Fatal(err)
	}
	if c := next(); c.Full || len(c.Put) != 0 || len(c.Deleted) != 1 || c.Deleted[0].Key() != "10.5.3.0-24" {
		t.Errorf("after one delete: %+v; want a Deleted of 10.5.3.0-24 alone", c)
	}
	rawPut(t, cli, subnetsPrefix+"10.5.4.0-24", "garbage")
	if c := next(); c.Full || len(c.Put) != 0 || len(c.Deleted) != 1 || c.Deleted[0].Key() != "10.5.4.0-24" {
		t.Errorf("after an unreadable rewrite: %+v; want a Deleted of 10.5.4.0-24", c)
	}
}

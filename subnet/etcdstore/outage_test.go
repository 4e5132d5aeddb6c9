package etcdstore

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// TestAllMembersDown stops every member of a 3-member etcd for 60 s and starts them again with their data,
// while three stores hold leases (TTL 2 min, longer than the outage: a lease whose TTL runs out unconfirmed
// is reported lost, see TestLossReportedDuringOutage) and one of them watches. Nothing may be lost: no
// lease reported lost or acquired again, every key under the same etcd lease afterwards; the watcher is
// handed no change during the outage or after it (no peer removed, no spurious delete: a listing after the
// outage must equal what it held, replay); changes written after the members return are delivered within
// 10 s of being written.
func TestAllMembersDown(t *testing.T) {
	if testing.Short() {
		t.Skip("a 60 s outage: skipped in -short")
	}
	t.Parallel()
	const (
		ttl    = 2 * time.Minute
		outage = 60 * time.Second
	)
	c := etcdtest.StartCluster(t, 3)
	cfg := Config{Endpoints: c.Endpoints(), LeaseTTL: ttl, RequestTimeout: 3 * time.Second}
	newStore := func() *Store {
		st, err := New(cfg, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	st := newStore()
	setConfig(t, st, net16)
	type node struct {
		h     *holder
		l     subnet.Lease
		lease clientv3.LeaseID
	}
	var nodes []node
	for i := range 3 {
		s := st
		if i > 0 {
			s = newStore() // the peers: other nodes' agents
		}
		h := startHold(t, s, subnet.AcquireRequest{Attrs: attrs(fmt.Sprintf("198.51.100.%d", 10+i))})
		l := h.next(t, 10*time.Second)
		_, id, _, _ := rawGet(t, st.cli, keyOf(l))
		nodes = append(nodes, node{h: h, l: l, lease: id})
	}
	batches := make(chan subnet.Changes, 1000)
	go st.WatchChanges(testCtx(t, 3*time.Minute), func(ch subnet.Changes) { batches <- ch })
	first := <-batches
	if len(first.Put) != len(nodes) {
		t.Fatalf("first batch %s, want the %d leases", describe(first), len(nodes))
	}
	r, err := newReplay(first)
	if err != nil {
		t.Fatal(err)
	}
	d := &deliveries{t: t, r: r, batches: batches}

	stopping := time.Now()
	c.Stop(0, 1, 2)
	stopped := time.Now()
	t.Logf("all members stopped (took %.1f s); waiting %s", time.Since(stopping).Seconds(), outage)
	for end := stopped.Add(outage); time.Now().Before(end); time.Sleep(time.Second) {
		d.drain() // any batch now must be a listing of what the watcher holds: nothing was written
	}
	c.Restart(0, 1, 2)
	t.Logf("all members back after %.1f s", time.Since(stopped).Seconds())

	w := &leaseWriter{t: t, st: newStore(), r: r}
	w.put("10.5.201.0/24")
	wrote := time.Now()
	w.put("10.5.202.0/24")
	w.del("10.5.201.0/24")
	d.waitAll(wrote.Add(10*time.Second), "within 10 s of writing them after the outage")
	t.Logf("changes written after the outage delivered %.1f s after the first was written; %d listings after the first",
		time.Since(wrote).Seconds(), d.fulls)

	for _, n := range nodes {
		select {
		case l := <-n.h.lost:
			t.Errorf("lease %s reported lost during a %s outage of every member (TTL %s)", l.Subnet, outage, ttl)
		case l := <-n.h.leases:
			t.Errorf("lease %s acquired again after the outage", l.Subnet)
		default:
		}
		if _, id, _, ok := rawGet(t, w.st.cli, keyOf(n.l)); !ok || id != n.lease {
			t.Errorf("key %s after the outage: present %t with etcd lease %x, want etcd lease %x", keyOf(n.l), ok, id, n.lease)
		}
		if resp, err := w.st.cli.TimeToLive(testCtx(t, 5*time.Second), n.lease); err != nil || resp.TTL <= 0 {
			t.Errorf("etcd lease %x of %s after the outage: %v (%v), want alive", n.lease, n.l.Subnet, resp, err)
		}
	}
}

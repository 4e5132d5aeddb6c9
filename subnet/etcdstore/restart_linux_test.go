package etcdstore

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
)

// TestMemberRestart kills (SIGKILL) a member of a 3-member etcd (memberCluster), keeps it down for longer
// than the lease TTL while lease changes are written through the other two, then starts it again with its
// data and writes through it; first the member that carries the store's lease watch, then another one (the
// lease renewals, one short request each, are spread over the members by the client). The store's
// lease must be kept (never reported lost, the same key under the same etcd lease, still alive), the watch
// must move to a healthy member within 10 s of the kill, and every change (adds, updates, deletes) written
// before, during and after must be delivered once and in order, with nothing delivered that was not written
// (replay).
func TestMemberRestart(t *testing.T) {
	t.Parallel()
	const ttl = 8 * time.Second
	mc := startMemberCluster(t)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	st := mc.newStore(Config{Endpoints: mc.endpoints(), LeaseTTL: ttl}, log)
	setConfig(t, st, net16)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("192.0.2.14")})
	own := h.next(t, 10*time.Second)
	_, ownLease, _, _ := rawGet(t, st.cli, keyOf(own))
	batches := make(chan subnet.Changes, 1000)
	go st.WatchChanges(testCtx(t, 3*time.Minute), func(ch subnet.Changes) { batches <- ch })
	r, err := newReplay(<-batches)
	if err != nil {
		t.Fatal(err)
	}
	d := &deliveries{t: t, r: r, batches: batches}

	var w *leaseWriter
	for phase, what := range []string{"the member carrying the lease watch", "a member not carrying it"} {
		// Subnets 10.5.2x0.0/24 to 10.5.2x6.0/24 for phase x.
		sub := func(k int) string { return fmt.Sprintf("10.5.%d.0/24", 200+10*phase+k) }
		victim := mc.streamMember("Watch")
		if phase == 1 {
			victim = victim%3 + 1
		}
		w = &leaseWriter{t: t, st: mc.newStore(Config{Endpoints: mc.endpoints(victim), RequestTimeout: 3 * time.Second}, nil), r: r}
		w.put(sub(1))
		w.put(sub(2))
		w.put(sub(1))
		d.waitAll(time.Now().Add(10*time.Second), "before the kill")

		t.Logf("killing %s, m%d", what, victim)
		mc.kill(victim)
		killed := time.Now()
		w.put(sub(3))
		d.waitAll(killed.Add(10*time.Second), fmt.Sprintf("within 10 s of killing m%d", victim))
		t.Logf("a change written after the kill delivered %.1f s after it", time.Since(killed).Seconds())
		for _, op := range []func(){
			func() { w.put(sub(2)) }, func() { w.del(sub(1)) }, func() { w.put(sub(4)) },
			func() { w.put(sub(3)) }, func() { w.del(sub(2)) }, func() { w.put(sub(1)) },
			func() { w.put(sub(4)) }, func() { w.del(sub(3)) }, func() { w.put(sub(5)) },
		} {
			op()
			d.drain()
			time.Sleep(time.Second)
		}
		d.waitAll(time.Now().Add(10*time.Second), "while the member is down")
		if down := time.Since(killed); down < ttl {
			t.Fatalf("m%d was down %s, less than the lease TTL %s: the test proves less than it says", victim, down, ttl)
		}

		mc.start(victim)
		mc.waitHealthy(60*time.Second, victim)
		t.Logf("m%d back after %.1f s", victim, time.Since(killed).Seconds())
		back := &leaseWriter{t: t, st: mc.newStore(Config{Endpoints: []string{mc.endpoint(victim)}, RequestTimeout: 3 * time.Second}, nil), r: r}
		back.put(sub(6))
		back.del(sub(4))
		back.put(sub(5))
		d.waitAll(time.Now().Add(10*time.Second), "after the member is back, written through it")
	}
	t.Logf("%d changes delivered once and in order; %d listings after the first", len(r.written), d.fulls)

	// What the watcher holds is what etcd holds.
	resp, err := w.st.cli.Get(testCtx(t, 10*time.Second), subnetsPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	inEtcd := map[string]int64{}
	for _, kv := range resp.Kvs {
		inEtcd[strings.TrimPrefix(string(kv.Key), subnetsPrefix)] = kv.ModRevision
	}
	if !maps.Equal(inEtcd, r.state) {
		t.Errorf("the watcher holds %v, etcd %v", r.state, inEtcd)
	}
	select {
	case l := <-h.lost:
		t.Errorf("lease %s reported lost while a member was down", l.Subnet)
	case l := <-h.leases:
		t.Errorf("lease acquired again (%s) while a member was down", l.Subnet)
	default:
	}
	if _, lease, _, ok := rawGet(t, w.st.cli, keyOf(own)); !ok || lease != ownLease {
		t.Errorf("own key %s: present %t with etcd lease %x, want etcd lease %x", keyOf(own), ok, lease, ownLease)
	}
	if ttlResp, err := w.st.cli.TimeToLive(testCtx(t, 5*time.Second), ownLease); err != nil || ttlResp.TTL <= 0 {
		t.Errorf("own etcd lease %x after the restart: TTL %v (%v), want alive", ownLease, ttlResp, err)
	}
	if strings.Contains(logs.String(), "lease lost") {
		t.Errorf("the store's log reports a lost lease")
	}
}

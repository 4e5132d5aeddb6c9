package etcdstore

import (
	"bytes"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// lockedBuffer is a log sink safe for concurrent writers and a reading test.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestQuorumLoss runs against a 3-member etcd whose member the store talks to loses quorum (the other two
// stop) for a while: the lease is kept (never reported lost), the lease watch notices that its member has no
// leader instead of waiting silently, and once quorum is back a change written meanwhile elsewhere is
// delivered: nothing is missed.
func TestQuorumLoss(t *testing.T) {
	t.Parallel()
	c := etcdtest.StartCluster(t, 3)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := New(Config{Endpoints: []string{c.Endpoint(0)}, LeaseTTL: time.Minute, RequestTimeout: 2 * time.Second}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	setConfig(t, st, net16)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.90")})
	own := h.next(t, 10*time.Second)
	batches := make(chan subnet.Changes, 100)
	go st.WatchChanges(testCtx(t, 2*time.Minute), func(ch subnet.Changes) { batches <- ch })
	if b := <-batches; !b.Full || len(b.Put) != 1 {
		t.Fatalf("first batch %+v, want the own lease", b)
	}

	c.Stop(1, 2)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "lease watch failed") {
		if time.Now().After(deadline) {
			t.Fatalf("the lease watch did not notice within 10 s that its member lost its leader:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second)
	c.Restart(1, 2)

	// A change written through another member once quorum is back.
	other, err := New(Config{Endpoints: []string{c.Endpoint(1)}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	cli := other.cli
	// Another subnet than our own (the own lease is a random pick: writing over it would take it away).
	otherNet := netip.MustParsePrefix("10.5.77.0/24")
	if own.Subnet == otherNet {
		otherNet = netip.MustParsePrefix("10.5.78.0/24")
	}
	rawPut(t, cli, subnetsPrefix+strings.Replace(otherNet.String(), "/", "-", 1), leaseValue("198.51.100.77"))
	timeout := time.After(20 * time.Second)
	for seen := false; !seen; {
		select {
		case b := <-batches:
			for _, l := range b.Put {
				seen = seen || l.Subnet == otherNet
			}
		case <-timeout:
			t.Fatal("the change written after quorum came back was not delivered within 20 s")
		}
	}
	select {
	case l := <-h.lost:
		t.Errorf("lease %s reported lost during a quorum loss of a few seconds (TTL 1m)", l.Subnet)
	default:
	}
	if _, lease, _, ok := rawGet(t, cli, keyOf(own)); !ok || lease == 0 {
		t.Errorf("own key %s gone or without etcd lease after the quorum loss", keyOf(own))
	}
}

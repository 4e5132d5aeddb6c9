package etcdstore

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
)

// TestPartitionedMember runs a 3-member etcd, each member a process in a network namespace of its own
// (memberCluster), and the store with all three endpoints. The member carrying the store's lease watch is
// then cut off from the other two (its peer traffic dropped by a packet filter inside its namespace; it keeps
// running and keeps answering clients). The lease must be kept, the watch must move to a healthy member
// within 10 s (a change written through a healthy member arrives by then), and no change written before,
// during or after the move is missed.
func TestPartitionedMember(t *testing.T) {
	t.Parallel()
	mc := startMemberCluster(t)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	st := mc.newStore(Config{Endpoints: mc.endpoints(), LeaseTTL: time.Minute}, log)
	setConfig(t, st, net16)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("192.0.2.14")})
	own := h.next(t, 10*time.Second)
	batches := make(chan subnet.Changes, 1000)
	go st.WatchChanges(testCtx(t, 3*time.Minute), func(ch subnet.Changes) { batches <- ch })
	seen := map[netip.Prefix]bool{}
	take := func(b subnet.Changes) {
		for _, l := range b.Put {
			seen[l.Subnet] = true
		}
	}
	take(<-batches)
	if !seen[own.Subnet] {
		t.Fatalf("first batch lacks the own lease %s", own.Subnet)
	}

	watched := mc.streamMember("Watch")
	t.Logf("the watch is on m%d; cutting it off from its peers", watched)
	other := mc.newStore(Config{Endpoints: mc.endpoints(watched), RequestTimeout: 5 * time.Second}, nil)
	n := 0
	put := func() netip.Prefix {
		n++
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(200 + n), 0}), 24)
		key := subnetsPrefix + strings.Replace(sub.String(), "/", "-", 1)
		// A write may fail while the healthy two elect a new leader (the cut-off member may have led).
		for try := 0; ; try++ {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			_, err := other.cli.Put(ctx, key, leaseValue("192.0.2."+strconv.Itoa(100+n)))
			cancel()
			if err == nil {
				return sub
			}
			if try == 5 {
				t.Fatalf("put %s through the healthy members: %v", key, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	wrote := []netip.Prefix{put()} // before the cut

	member := mc.tp.Nodes[watched-1].NS
	for _, rule := range [][]string{
		{"INPUT", "--dport"}, {"INPUT", "--sport"}, {"OUTPUT", "--dport"}, {"OUTPUT", "--sport"},
	} {
		member.MustExec(t, "iptables", "-I", rule[0], "-p", "tcp", rule[1], "2380", "-j", "DROP")
	}
	cut := time.Now()
	wrote = append(wrote, put()) // right after the cut
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second)
		wrote = append(wrote, put())
	}
	wait := func(subs []netip.Prefix, by time.Time, what string) {
		t.Helper()
		timer := time.NewTimer(time.Until(by))
		defer timer.Stop()
		for {
			missing := []netip.Prefix{}
			for _, s := range subs {
				if !seen[s] {
					missing = append(missing, s)
				}
			}
			if len(missing) == 0 {
				return
			}
			select {
			case b := <-batches:
				take(b)
			case <-timer.C:
				t.Fatalf("%s: changes %v not delivered by the watch (store log:\n%s)", what, missing, tail(logs.String(), 4000))
			}
		}
	}
	wait(wrote, cut.Add(10*time.Second), "within 10 s of cutting off the watch's member")
	t.Logf("every change delivered %.1f s after the cut", time.Since(cut).Seconds())
	if !strings.Contains(logs.String(), "lease watch failed") {
		t.Errorf("the store's log does not say the watch failed on the cut-off member")
	}

	// Still the partition: later changes, and the lease, keep working for a while.
	wrote = append(wrote, put())
	wait(wrote, time.Now().Add(10*time.Second), "while the member is cut off")
	time.Sleep(5 * time.Second)
	select {
	case l := <-h.lost:
		t.Errorf("lease %s reported lost while one of three members was cut off", l.Subnet)
	default:
	}
	if _, lease, _, ok := rawGet(t, other.cli, keyOf(own)); !ok || lease == 0 {
		t.Errorf("own key %s gone or without etcd lease while one member was cut off", keyOf(own))
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

package etcdstore

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// TestPartitionedMember runs a 3-member etcd, each member a process in a network namespace of its own on
// one bridge, and the store in a fourth namespace reaching all three:
//
//	netns <p>-lan  bridge br0
//	  ├─ <p>-n1  192.0.2.11  etcd m1   ┐
//	  ├─ <p>-n2  192.0.2.12  etcd m2   ├ peers on :2380, clients on :2379
//	  ├─ <p>-n3  192.0.2.13  etcd m3   ┘
//	  └─ <p>-n4  192.0.2.14  the store (Hold, WatchChanges) with all three endpoints
//
// The member carrying the store's lease watch is then cut off from the other two (its peer traffic dropped
// by a packet filter inside its namespace; it keeps running and keeps answering clients). The lease must be
// kept, the watch must move to a healthy member within 10 s (a change written through a healthy member
// arrives by then), and no change written before, during or after the move is missed.
func TestPartitionedMember(t *testing.T) {
	kerneltest.RequireCommand(t, "iptables")
	tp := kerneltest.NewTopology(t, 4)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var initial []string
	for i := 1; i <= 3; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://192.0.2.1%d:2380", i, i))
	}
	endpoint := func(i int) string { return fmt.Sprintf("http://192.0.2.1%d:2379", i) }
	for i := 1; i <= 3; i++ {
		o := etcdtest.Options{
			Name: fmt.Sprintf("m%d", i), Dir: filepath.Join(dir, fmt.Sprintf("m%d", i)),
			ClientAddr: fmt.Sprintf("192.0.2.1%d:2379", i), PeerAddr: fmt.Sprintf("192.0.2.1%d:2380", i),
			InitialCluster: strings.Join(initial, ","), LogFile: filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			UnsafeNoFsync: true, // etcd's own timings: with Fast's 100 ms elections a loaded machine re-elects forever
		}
		raw, _ := json.Marshal(o)
		cmd := tp.Nodes[i-1].NS.Command(self, "-test.run=^$")
		cmd.Env = append(os.Environ(), memberEnv+"="+string(raw))
		out, err := os.Create(filepath.Join(dir, fmt.Sprintf("m%d.out", i)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = out, out
		// No Pdeathsig: it fires when the thread that started the child ends, and the namespace dialer below
		// ends threads on purpose (kerneltest.NS.Do).
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
			out.Close()
			if t.Failed() {
				b, _ := os.ReadFile(filepath.Join(dir, o.Name+".log"))
				so, _ := os.ReadFile(out.Name())
				t.Logf("etcd %s output:\n%s\nlog (tail):\n%s", o.Name, so, tail(string(b), 3000))
			}
		})
	}
	client := tp.Nodes[3].NS
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := client.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(addr, "http://"))
			return err
		})
		return c, err
	}
	httpc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return dial(ctx, addr)
	}}}
	// Wait for the cluster: every member healthy.
	deadline := time.Now().Add(60 * time.Second)
	for i := 1; i <= 3; i++ {
		for !healthy(httpc, endpoint(i)) {
			if time.Now().After(deadline) {
				t.Fatalf("etcd member m%d not healthy after 60 s", i)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := New(Config{Endpoints: []string{endpoint(1), endpoint(2), endpoint(3)}, LeaseTTL: time.Minute, dial: dial}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
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

	// The member that carries the watch.
	watched := 0
	deadline = time.Now().Add(10 * time.Second)
	for watched == 0 {
		for i := 1; i <= 3; i++ {
			if n, _ := metric(httpc, endpoint(i), "etcd_debugging_mvcc_watch_stream_total"); n > 0 {
				watched = i
			}
		}
		if watched == 0 && time.Now().After(deadline) {
			t.Fatal("no member reports the store's watch stream")
		}
		time.Sleep(100 * time.Millisecond)
	}
	var healthyEPs []string
	for i := 1; i <= 3; i++ {
		if i != watched {
			healthyEPs = append(healthyEPs, endpoint(i))
		}
	}
	t.Logf("the watch is on m%d; cutting it off from its peers", watched)
	other, err := New(Config{Endpoints: healthyEPs, RequestTimeout: 5 * time.Second, dial: dial}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
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

	member := tp.Nodes[watched-1].NS
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

// healthy reports whether the member at endpoint answers /health with health true.
func healthy(c *http.Client, endpoint string) bool {
	resp, err := c.Get(endpoint + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(string(b), `"health":"true"`)
}

// metric reads a gauge or counter without labels from the member's /metrics.
func metric(c *http.Client, endpoint, name string) (float64, error) {
	resp, err := c.Get(endpoint + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no metric %s", endpoint, name)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

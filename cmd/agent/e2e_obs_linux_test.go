package main_test

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// TestE2EMetrics checks the observability an operator gets, per backend, in a real cluster: a node that
// joins moves the other nodes' lease-to-kernel histogram (within its buckets), and with --probe-rate every
// node sees its peers reachable; one node's path to one peer broken (a blackhole route for the probed half
// of the peer's subnet) shows that peer unreachable on the metric and in `weftd status` within the probe
// interval, and reachable again once the blackhole is gone.
func TestE2EMetrics(t *testing.T) {
	requireE2E(t)
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testMetrics(t, backend)
		})
	}
}

func testMetrics(t *testing.T, backend string) {
	c := startCluster(t, netcluster.Options{
		Backend: backend, Nodes: 2,
		// 2 peers at most at 20 probes/s: each peer is probed every 100 ms; a lost probe counts after 500 ms.
		ExtraAgentFlags: []string{"--reconcile-interval=1h", "--probe-rate=20", "--probe-timeout=500ms"},
	})
	ctx := t.Context()
	n1, n2 := c.Node(1), c.Node(2)
	metrics := func(n *netcluster.Node) map[string]float64 {
		t.Helper()
		m, err := c.Metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	const hist = "weft_lease_to_kernel_seconds"
	before := metrics(n1)[hist+"_count"]

	// A new node's lease moves the histogram on the others.
	n3, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "n1 programs n3's lease", func() (bool, string) {
		m := metrics(n1)
		return m["weft_peers"] == 2 && m[hist+"_count"] > before,
			fmt.Sprintf("weft_peers %v, %s_count %v (before %v)", m["weft_peers"], hist, m[hist+"_count"], before)
	})
	m := metrics(n1)
	var buckets []float64
	for k := range m {
		if le, ok := strings.CutPrefix(k, hist+`_bucket{le="`); ok {
			if v, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64); err == nil && !math.IsInf(v, 1) {
				buckets = append(buckets, v)
			}
		}
	}
	if len(buckets) == 0 {
		t.Fatalf("no %s buckets in n1's metrics", hist)
	}
	lowest, highest := slices.Min(buckets), slices.Max(buckets)
	bucket := func(le float64) float64 {
		return m[fmt.Sprintf(`%s_bucket{le="%s"}`, hist, strconv.FormatFloat(le, 'g', -1, 64))]
	}
	total := m[hist+"_count"]
	t.Logf("%s on n1: %v observations, %v s in all, %v below %g s", hist, total, m[hist+"_sum"], bucket(lowest), lowest)
	if bucket(highest) != total || bucket(lowest) == total {
		t.Errorf("%s: %v observations, %v within the lowest bucket (%g s), %v within the highest (%g s): want them spread inside the buckets",
			hist, total, bucket(lowest), lowest, bucket(highest), highest)
	}

	// Probing: every node sees its peers reachable.
	reachable := func(from, to *netcluster.Node) (float64, bool) {
		v, ok := metrics(from)[fmt.Sprintf(`weft_peer_reachable{peer="%s"}`, to.Subnet())]
		return v, ok
	}
	for _, from := range c.Nodes() {
		for _, to := range c.Nodes() {
			if from != to {
				waitFor(t, 10*time.Second, fmt.Sprintf("%s sees %s reachable", from.Name, to.Name), func() (bool, string) {
					v, ok := reachable(from, to)
					return ok && v == 1, fmt.Sprintf("weft_peer_reachable %v (present %v)", v, ok)
				})
			}
		}
	}
	// Break n1's path to n3: a blackhole route of another protocol for the half of n3's subnet that holds
	// the probed address. weftd leaves routes it did not make alone, and its own route to n3 stays in place
	// (a deleted one would be restored at once from the kernel's events).
	half := netip.PrefixFrom(n3.Subnet().Addr(), n3.Subnet().Bits()+1)
	n1.NS.MustIP(t, "route", "add", "blackhole", half.String())
	broken := time.Now()
	waitFor(t, 10*time.Second, "n1 sees n3 unreachable", func() (bool, string) {
		v, ok := reachable(n1, n3)
		return ok && v == 0, fmt.Sprintf("weft_peer_reachable %v (present %v)", v, ok)
	})
	if d := time.Since(broken); d > 5*time.Second {
		t.Errorf("n3 showed unreachable %s after the break; want within the probe interval (100 ms) plus the timeout (500 ms) and a scrape", d)
	}
	if v, _ := reachable(n1, n2); v != 1 {
		t.Errorf("n1 sees n2 (not broken) as %v, want 1", v)
	}
	st := weftdStatus(t, n1)
	if got := st.peer(n3.Subnet().String()); got != "unreachable" {
		t.Errorf("weftd status on n1: n3 %q, want unreachable: %+v", got, st)
	}
	if got := st.peer(n2.Subnet().String()); got != "reachable" {
		t.Errorf("weftd status on n1: n2 %q, want reachable", got)
	}
	if st.Lease.Subnet != n1.Subnet().String() || st.Backend.Type != backend || st.Peers != 2 || !st.Ready {
		t.Errorf("weftd status on n1: lease %s, backend %s, peers %d, ready %v; want %s, %s, 2, true",
			st.Lease.Subnet, st.Backend.Type, st.Peers, st.Ready, n1.Subnet(), backend)
	}
	out, err := n1.NS.Exec(weftdBin, "status", "--healthz-port", strconv.Itoa(c.Options().HealthzPort))
	if err != nil || !strings.Contains(out, "unreachable") || !strings.Contains(out, n3.Subnet().String()) {
		t.Errorf("weftd status (text) on n1: %v\n%s", err, out)
	}

	// Repair: the blackhole goes.
	n1.NS.MustIP(t, "route", "del", "blackhole", half.String())
	waitFor(t, 10*time.Second, "n1 sees n3 reachable again", func() (bool, string) {
		v, ok := reachable(n1, n3)
		return ok && v == 1, fmt.Sprintf("weft_peer_reachable %v (present %v)", v, ok)
	})
	if got := weftdStatus(t, n1).peer(n3.Subnet().String()); got != "reachable" {
		t.Errorf("weftd status on n1 after the repair: n3 %q, want reachable", got)
	}
}

// statusReport is the part of `weftd status --json` the test reads.
type statusReport struct {
	Ready   bool
	Lease   struct{ Subnet string }
	Backend struct {
		Type string
	}
	Peers  int
	Probes struct {
		Peers []struct{ Peer, State string }
	}
}

func (s statusReport) peer(subnet string) string {
	for _, p := range s.Probes.Peers {
		if p.Peer == subnet {
			return p.State
		}
	}
	return "(absent)"
}

// weftdStatus runs `weftd status --json` in n's namespace.
func weftdStatus(t *testing.T, n *netcluster.Node) statusReport {
	t.Helper()
	out, err := n.NS.Exec(weftdBin, "status", "--json", "--healthz-port", strconv.Itoa(netcluster.DefaultHealthzPort))
	if err != nil {
		t.Fatalf("weftd status on %s: %v", n.Name, err)
	}
	var st statusReport
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("weftd status --json on %s: %v\n%s", n.Name, err, out)
	}
	return st
}

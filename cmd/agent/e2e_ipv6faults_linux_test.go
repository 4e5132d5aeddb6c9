package main_test

// End-to-end IPv6 under faults: TestE2E's fault scenarios (weftd killed and stopped, etcd down for 20 s)
// run with IPv6 traffic, plus a node's lease deleted while it runs and hostile IPv6 leases. Gate, logs and
// helpers as in e2e_linux_test.go and e2e_faults_linux_test.go.

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/subnet"
)

// TestE2EIPv6Faults runs, on a dual-stack vxlan cluster, an IPv6-only host-gw cluster and a dual-stack udp
// cluster of 3 nodes (in parallel), with continuous IPv6 pings between containers: hostile IPv6 leases
// written to etcd, weftd SIGKILLed and SIGTERMed and restarted (no echo lost on the kernel backends, traffic
// again on udp, whose data path is the process; same subnets), a running node's lease deleted (it takes the
// same subnets again and traffic resumes), a node joining (reached over IPv6 by ICMPv6 and TCP) whose lease
// is deleted once it stopped (every other node drops its IPv6 entries), and etcd stopped for 20 s (no echo
// lost, every node's IPv6 kernel entries for its peers still there at the end of the outage; then the
// stopped node starts again and takes its previous IPv6 subnet).
func TestE2EIPv6Faults(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		backend string
		v6only  bool
	}{{"vxlan", false}, {"host-gw", true}, {"udp", false}} {
		name := tc.backend + "/" + map[bool]string{false: "dual-stack", true: "ipv6-only"}[tc.v6only]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			args := []string{"--ipv6-network", network6.String()}
			if tc.v6only {
				args = append(args, "--disable-ipv4")
			}
			e := startFaultCluster(t, netcluster.Options{
				Backend: tc.backend, Nodes: 3, ConfigArgs: args,
				// As TestE2E: the lease TTL is shorter than the etcd outage, so the agents must take their
				// leases again afterwards.
				ExtraAgentFlags: []string{"--reconcile-interval=2s", "--subnet-lease-ttl=15s"},
			})
			e.v6 = true
			t.Run("hostile-leases", func(t *testing.T) { hostileLeases6(t, e, tc.v6only) })
			t.Run("agent-restart", e.restart)
			t.Run("lease-deleted", e.leaseDeleted)
			t.Run("join-and-delete", e.joinAndDelete)
			t.Run("etcd-outage", e.etcdOutage)
		})
	}
}

// Scenario: node 2's lease is deleted in etcd while its agent runs. The agent (the same process) takes the
// same subnets again (both families), and a continuous ping from node 1's container to node 2's resumes;
// the test reports how long after the delete each happened and how many echoes were lost.
func (e *e2e) leaseDeleted(t *testing.T) {
	ctx := e.ctx(t, 60*time.Second)
	n1, n2 := e.Node(1), e.Node(2)
	pid := n2.AgentPID()
	before, err := n2.Lease()
	if err != nil {
		t.Fatal(err)
	}
	sn := e.envSub(before)
	run, err := e.StartPing(n1, e.dst(n2), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if _, err := e.Weftd(ctx, n1.NS, "leases", "delete", sn.String()); err != nil {
		t.Fatalf("weftd leases delete %s: %v", sn, err)
	}
	deleted := time.Now()
	var again time.Duration
	waitFor(t, 20*time.Second, "node 2 holds "+sn.String()+" again", func() (bool, string) {
		leases, err := e.leases(ctx)
		if err != nil {
			return false, err.Error()
		}
		a, ok := leases[sn]
		again = time.Since(deleted)
		return ok && e.attrsPub(a) == e.pub(n2), fmt.Sprintf("lease %+v (present %t)", a, ok)
	})
	if err := e.WaitPing(e.ctx(t, 20*time.Second), n1, e.dst(n2)); err != nil {
		t.Errorf("no traffic after the lease was taken again: %v", err)
	}
	resumed := time.Since(deleted)
	time.Sleep(time.Second)
	r, err := run.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lease %s deleted: node 2 held it again after %s, ping %s → %s answered again after %s; continuous ping: %s",
		sn, again.Round(10*time.Millisecond), n1.Name, n2.Name, resumed.Round(10*time.Millisecond), r)
	if after, err := n2.Lease(); err != nil || after != before {
		t.Errorf("node 2's env file after its lease was deleted: %+v (%v), want %+v", after, err, before)
	}
	checkSameAgents(t, []*netcluster.Node{n2}, map[string]int{n2.Name: pid})
	if err := n2.WaitReady(ctx); err != nil {
		t.Error(err)
	}
}

// hostileLeases6 writes leases whose IPv6 side is hostile or broken, as a stranger with etcd access
// could: one claiming node 2's IPv6 subnet again (in dual stack under a fresh IPv4 subnet, so under a key
// of its own; IPv6 only, the upper half of it as a /65), one with an IPv6 subnet outside IPv6Network, one
// whose PublicIPv6 is an IPv4 address. Every node warns about each, naming the key and the reason ("not
// routing to peer", counted by reason; the last: "skipping unreadable lease key" from the store, which
// refuses the whole value), except that node 2 leaves a lease with its own subnet out silently; no node
// routes their IPv6 subnets or sends to the stranger's address, and node 1 still reaches node 2's
// container over IPv6 through node 2 itself. The keys are removed at the end.
func hostileLeases6(t *testing.T, e *e2e, v6only bool) {
	ctx := e.ctx(t, 60*time.Second)
	nodes := e.Nodes()
	n1, n2 := nodes[0], nodes[1]
	const stranger6 = "2001:db8::99" // on the underlay, no node: traffic routed there is lost
	v4 := func(third byte) netip.Prefix {
		if v6only {
			return netip.Prefix{}
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, third, 0}), 24)
	}
	value := func(i int, pub6 string) string {
		pub := fmt.Sprintf(`"192.0.2.%d"`, 90+i)
		if v6only {
			pub = `"0.0.0.0"`
		}
		return fmt.Sprintf(`{"PublicIP":%s,"PublicIPv6":%q,"BackendType":%q,`+
			`"BackendData":{"VNI":1,"VtepMAC":"02:00:5e:00:63:%02x"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:5e:00:64:%02x"}}`,
			pub, pub6, e.backend, i, i)
	}
	sn2 := n2.Subnet6()
	claim := sn2
	if v6only {
		a := sn2.Addr().As16()
		a[8] |= 0x80
		claim = netip.PrefixFrom(netip.AddrFrom16(a), 65)
	}
	type hostile struct {
		name   string
		sn6    netip.Prefix
		value  string
		warn   string // the warning's message
		reason string // in the warning
		metric string // the counter that counts it on every node; "": none
	}
	skipped := func(reason string) string {
		return fmt.Sprintf(`weft_backend_peers_skipped_total{backend=%q,reason=%q}`, e.backend, reason)
	}
	const notRouting, unreadable = `msg="not routing to peer"`, `msg="skipping unreadable lease key; it is left as it is"`
	claimed := hostile{"claims node 2's IPv6 subnet", claim, value(0, stranger6), notRouting,
		"is also lease " + subnet.KeyName(n2.Subnet(), sn2), `weft_peers_skipped_total{reason="duplicate_subnet"}`}
	if v6only {
		claimed.reason, claimed.metric = "overlaps lease "+subnet.KeyName(netip.Prefix{}, sn2), `weft_peers_skipped_total{reason="overlap"}`
	}
	cases := []hostile{
		claimed,
		{"IPv6 subnet outside IPv6Network", netip.MustParsePrefix("fd00:6::/64"), value(1, stranger6), notRouting,
			"outside the network", skipped("outside_network")},
		// The store refuses the value as a whole (its IPv4 side too, in dual stack); no counter.
		{"PublicIPv6 not IPv6", netip.MustParsePrefix("fd00:5:0:fe::/64"), value(2, "192.0.2.98"), unreadable,
			`PublicIPv6 \"192.0.2.98\"`, ""},
	}
	cli := etcdClient(t, e, n1.NS)
	keys := make([]string, len(cases))
	for i, c := range cases {
		keys[i] = leasePrefix + subnet.KeyName(v4(byte(250+i)), c.sn6)
		if _, err := cli.Put(ctx, keys[i], c.value); err != nil {
			t.Fatalf("put %s: %v", keys[i], err)
		}
	}
	defer func() {
		for _, k := range keys {
			if _, err := cli.Delete(e.ctx(t, 10*time.Second), k); err != nil {
				t.Errorf("delete %s: %v", k, err)
			}
		}
	}()
	for i, c := range cases {
		key := strings.TrimPrefix(keys[i], leasePrefix)
		for _, n := range nodes {
			if c.sn6 == sn2 && n == n2 {
				continue // node 2 leaves a lease with its own subnet out of its peers without a word
			}
			waitFor(t, 10*time.Second, fmt.Sprintf("node %s refuses the lease %s (%s)", n.Name, key, c.name), func() (bool, string) {
				warned := false
				for _, l := range strings.Split(e.AgentLog(n), "\n") {
					if strings.Contains(l, "level=WARN") && strings.Contains(l, c.warn) &&
						strings.Contains(l, key+" ") && strings.Contains(l, c.reason) {
						warned = true
					}
				}
				if c.metric == "" {
					return warned, fmt.Sprintf("no warning %s naming %s and %q", c.warn, key, c.reason)
				}
				v, err := e.metricSum(ctx, n, c.metric)
				return warned && err == nil && v >= 1, fmt.Sprintf("warning %s naming %s and %q: %t, %s = %v (%v)", c.warn, key, c.reason, warned, c.metric, v, err)
			})
		}
	}
	time.Sleep(4 * time.Second) // two reconcile rounds with the leases in place
	for _, n := range nodes {
		out, err := n.NS.IP("-6", "route", "show")
		if err != nil {
			t.Fatal(err)
		}
		routes := nonEmptyLines(out)
		for _, c := range cases {
			if c.sn6 != sn2 && hasPrefixLine(routes, c.sn6.String()) {
				t.Errorf("node %s routes the hostile lease's %s (%s): %q", n.Name, c.sn6, c.name, routes)
			}
		}
		for _, l := range routes {
			if strings.Contains(l+" ", " "+stranger6+" ") {
				t.Errorf("node %s routes via the stranger %s: %q", n.Name, stranger6, l)
			}
		}
		if n != n2 {
			if got := e.kernelMentions(n, sn2, n2.Addr6); len(got) != peerEntries[e.backend] {
				t.Errorf("node %s: state for node 2's %s: %q, want %d entries", n.Name, sn2, got, peerEntries[e.backend])
			}
		}
	}
	if out, err := n1.NS.Exec("bridge", "fdb", "show"); err != nil || strings.Contains(out, stranger6) {
		t.Errorf("node 1's FDB (%v) sends to the stranger %s:\n%s", err, stranger6, out)
	}
	out, err := e.Ping(ctx, n1, n2.ContainerIP6(), "-c", "10", "-i", "0.05")
	if r, perr := netcluster.ParsePing(out); err != nil || perr != nil || r.Lost() != 0 {
		t.Errorf("%s → %s with the hostile leases in etcd: %v %v:\n%s", n1.Name, n2.ContainerIP6(), err, perr, out)
	}
}

package main_test

// End-to-end scenarios: real weftd binaries in a network-namespace cluster (cmd/internal/netcluster) against a real
// embedded etcd, carrying real traffic and surviving faults. One cluster per backend; the scenarios of a
// backend run in order on its cluster (see testBackend). Gate: root and iproute2, not -short; with
// WEFT_E2E=1 a missing prerequisite fails instead of skipping. The agents' and etcd's logs are printed when
// a backend's test fails, or always with WEFT_E2E_LOGS=1.

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/subnet"
)

// bins are the binaries under test, built once per test binary into binDir by buildBins.
var (
	binDir   string
	binsOnce sync.Once
	binsErr  error
	weftdBin string
	cluBin   string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	if binDir, err = os.MkdirTemp("", "weft-e2e-bin"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(binDir)
	return m.Run()
}

// buildBins builds weftd and weft-cluster with `go build`, once.
func buildBins(t *testing.T) {
	t.Helper()
	binsOnce.Do(func() {
		weftdBin, cluBin = filepath.Join(binDir, "weftd"), filepath.Join(binDir, "weft-cluster")
		for bin, pkg := range map[string]string{weftdBin: "github.com/weft-net/weft/cmd/agent", cluBin: "github.com/weft-net/weft/cmd/weft-cluster"} {
			if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
				binsErr = fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
				return
			}
		}
	})
	if binsErr != nil {
		t.Fatal(binsErr)
	}
}

func requireE2E(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: skipped in -short")
	}
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "ping", "bridge")
	buildBins(t)
}

// expectMTU is FLANNEL_MTU per backend on a 1500-byte underlay (compat.md §7).
var expectMTU = map[string]int{"host-gw": 1500, "vxlan": 1450, "udp": 1472}

// peerEntries is, per backend, how many kernel entries a node has for each peer (kernelMentions): the
// route, and for vxlan also the neighbour and the FDB entry.
var peerEntries = map[string]int{"vxlan": 3, "host-gw": 1, "udp": 0}

// kernelBackend reports whether the data path lives in the kernel (it survives an agent restart).
func kernelBackend(b string) bool { return b != "udp" }

func TestE2E(t *testing.T) {
	requireE2E(t)
	for _, backend := range []string{"host-gw", "vxlan", "udp"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testBackend(t, backend)
		})
	}
}

// e2e is one backend's cluster under test.
type e2e struct {
	*netcluster.Cluster
	backend string
	prefix  string
	dir     string
	// v6 makes the scenarios that follow it (restart, etcdOutage, leaseDeleted) send their traffic to the
	// containers' IPv6 addresses and check the nodes' IPv6 subnets, public addresses and kernel state
	// (e2e_ipv6faults_linux_test.go). False: IPv4.
	v6 bool
}

// dst returns n's container address of the scenarios' family (e.v6).
func (e *e2e) dst(n *netcluster.Node) netip.Addr {
	if e.v6 {
		return n.ContainerIP6()
	}
	return n.ContainerIP()
}

// sub returns n's subnet of the scenarios' family, as attached.
func (e *e2e) sub(n *netcluster.Node) netip.Prefix {
	if e.v6 {
		return n.Subnet6()
	}
	return n.Subnet()
}

// pub returns n's underlay address of the scenarios' family.
func (e *e2e) pub(n *netcluster.Node) netip.Addr {
	if e.v6 {
		return n.Addr6
	}
	return n.Addr
}

// tcp checks TCP from from's container to to's over the scenarios' family (netcluster's TCP or TCP6).
func (e *e2e) tcp(ctx context.Context, from, to *netcluster.Node, size int) error {
	if e.v6 {
		return e.TCP6(ctx, from, to, size)
	}
	return e.TCP(ctx, from, to, size)
}

// envSub returns the subnet of the scenarios' family in env.
func (e *e2e) envSub(env subnet.Env) netip.Prefix {
	if e.v6 {
		return env.IPv6Subnet.Masked()
	}
	return env.Subnet.Masked()
}

// attrsPub returns the public address of the scenarios' family in a.
func (e *e2e) attrsPub(a subnet.Attrs) netip.Addr {
	if e.v6 {
		return a.PublicIPv6
	}
	return a.PublicIP
}

func testBackend(t *testing.T, backend string) {
	e := &e2e{backend: backend, prefix: kerneltest.Prefix(), dir: t.TempDir()}
	e.Cluster = startCluster(t, netcluster.Options{
		Prefix:  e.prefix,
		Backend: backend,
		Nodes:   3,
		Dir:     e.dir,
		// Reconcile often (scenario 4). The lease TTL is shorter than the etcd outage of scenario 6, so
		// the agents' etcd sessions expire meanwhile and they must re-acquire their subnets afterwards.
		ExtraAgentFlags: []string{"--reconcile-interval=2s", "--subnet-lease-ttl=15s"},
	})
	t.Run("1-traffic-and-mtu", e.traffic)
	t.Run("1b-node-sends-frag-needed", e.fragNeeded)
	t.Run("4-reconcile-stale-route", e.staleRoute)
	t.Run("3-agent-restart", e.restart)
	if backend == "udp" {
		t.Run("5-udp-drops", e.udpDrops)
		t.Run("8-udp-offloads-mixed", e.udpOffloadsMixed)
		t.Run("9-udp-repair", e.udpRepair)
	}
	t.Run("2-join-and-delete", e.joinAndDelete)
	t.Run("6-etcd-outage", e.etcdOutage)
	t.Run("7-teardown", e.teardown)
}

// dumpLogs prints every agent's and etcd's log under dir.
func dumpLogs(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*", "*.log"))
	for _, f := range logs {
		b, _ := os.ReadFile(f)
		t.Logf("===== %s =====\n%s", strings.TrimPrefix(f, dir+"/"), b)
	}
}

// waitFor polls cond every 200 ms until it holds or timeout passes; then it fails the test with cond's
// last description.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: not within %s: %s", what, timeout, detail)
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *e2e) ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// leases returns the leases in etcd (weftd leases --json), keyed by subnet, and a lease with an IPv6 subnet
// also by that.
func (e *e2e) leases(ctx context.Context) (map[netip.Prefix]subnet.Attrs, error) {
	out, err := e.Weftd(ctx, e.Node(1).NS, "leases", "--json")
	if err != nil {
		return nil, err
	}
	var rows []struct {
		Subnet, IPv6Subnet string
		Attrs              subnet.Attrs
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		return nil, fmt.Errorf("weftd leases --json: %w: %s", err, out)
	}
	m := map[netip.Prefix]subnet.Attrs{}
	for _, r := range rows {
		for _, s := range []string{r.Subnet, r.IPv6Subnet} {
			if s == "" {
				continue // no subnet of that family
			}
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("weftd leases --json: subnet %q: %w", s, err)
			}
			m[p] = r.Attrs
		}
	}
	return m, nil
}

// metric returns a backend or agent metric by key, accepting weft_<backend>_<key>, weft_<key> and <key>.
func (e *e2e) metric(ctx context.Context, n *netcluster.Node, key string) (float64, error) {
	m, err := e.Metrics(ctx, n)
	if err != nil {
		return 0, err
	}
	for _, name := range []string{"weft_" + strings.ReplaceAll(e.backend, "-", "_") + "_" + key, "weft_" + key, key} {
		if v, ok := m[name]; ok {
			return v, nil
		}
	}
	return 0, fmt.Errorf("node %s: no metric %q in %v", n.Name, key, m)
}

// metricSum returns the sum of every series of the metric name (name and name{labels...}).
func (e *e2e) metricSum(ctx context.Context, n *netcluster.Node, name string) (float64, error) {
	m, err := e.Metrics(ctx, n)
	if err != nil {
		return 0, err
	}
	sum, found := 0.0, false
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum, found = sum+v, true
		}
	}
	if !found {
		return 0, fmt.Errorf("node %s: no metric %q", n.Name, name)
	}
	return sum, nil
}

// Scenario 1: ICMP and TCP between the containers of every ordered node pair; DF pings at the advertised
// MTU pass and one byte more fails; a payload larger than the MTU (fragmented) gets through.
func (e *e2e) traffic(t *testing.T) {
	ctx := e.ctx(t, 90*time.Second)
	nodes := e.Nodes()
	for _, n := range nodes {
		if n.MTU() != expectMTU[e.backend] {
			t.Errorf("node %s: FLANNEL_MTU=%d, want %d", n.Name, n.MTU(), expectMTU[e.backend])
		}
	}
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			dst := to.ContainerIP()
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := e.WaitPing(wctx, from, dst)
			cancel()
			if err != nil {
				t.Errorf("%s → %s: %v", from.Name, to.Name, err)
				continue
			}
			out, _ := e.Ping(ctx, from, dst, "-c", "3")
			if r, err := netcluster.ParsePing(out); err != nil || r.Received != r.Transmitted {
				t.Errorf("%s → %s: ping: %v %s", from.Name, to.Name, err, out)
			}
			if err := e.TCP(ctx, from, to, 256<<10); err != nil {
				t.Error(err)
			}
			mtu := from.MTU()
			if out, err := e.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-28)); err != nil {
				t.Errorf("%s → %s: DF ping of %d bytes (the MTU) failed: %v", from.Name, to.Name, mtu, err)
			} else if r, _ := netcluster.ParsePing(out); r.Received != 1 {
				t.Errorf("%s → %s: DF ping of %d bytes: %s", from.Name, to.Name, mtu, out)
			}
			out, err = e.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-27))
			if err == nil || !(strings.Contains(out, "message too long") || strings.Contains(out, "Frag needed")) {
				t.Errorf("%s → %s: DF ping of %d bytes (MTU+1): want \"message too long\" or \"Frag needed\", got err %v: %s",
					from.Name, to.Name, mtu+1, err, out)
			}
			if out, err := e.Ping(ctx, from, dst, "-c", "2", "-s", "4000"); err != nil {
				t.Errorf("%s → %s: fragmented 4000-byte ping: %v", from.Name, to.Name, err)
			} else if r, _ := netcluster.ParsePing(out); r.Received != r.Transmitted {
				t.Errorf("%s → %s: fragmented 4000-byte ping lost packets: %s", from.Name, to.Name, out)
			}
		}
	}
}

// Scenario 1b: the node's own data path enforces the advertised MTU. The container's interface (and the
// node's end of its veth) get a larger MTU, so an oversize DF packet is not refused inside the container
// but reaches the node, which must answer "Frag needed" with exactly FLANNEL_MTU (the overlay device's
// MTU on vxlan and udp, the underlay's on host-gw); a DF packet of exactly FLANNEL_MTU still crosses.
func (e *e2e) fragNeeded(t *testing.T) {
	ctx := e.ctx(t, 30*time.Second)
	from, to := e.Node(1), e.Node(2)
	mtu := from.MTU()
	const big = "9000"
	set := func(m string) error {
		if _, err := from.Container().IP("link", "set", "eth0", "mtu", m); err != nil {
			return err
		}
		_, err := from.NS.IP("link", "set", "veth-c1", "mtu", m)
		return err
	}
	if err := set(big); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := set(fmt.Sprint(mtu)); err != nil {
			t.Errorf("restore container MTU: %v", err)
		}
	}()
	dst := to.ContainerIP()
	if out, err := e.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-28)); err != nil {
		t.Errorf("DF ping of %d bytes (FLANNEL_MTU) through the node failed: %v", mtu, err)
	} else if r, _ := netcluster.ParsePing(out); r.Received != 1 {
		t.Errorf("DF ping of %d bytes (FLANNEL_MTU): %s", mtu, out)
	}
	// The first oversize packet teaches the container the path MTU; ping reports the ICMP error itself.
	out, err := e.Ping(ctx, from, dst, "-c", "2", "-M", "do", "-s", fmt.Sprint(mtu-27))
	want := fmt.Sprintf("Frag needed and DF set (mtu = %d)", mtu)
	if err == nil || !strings.Contains(out, want) {
		t.Errorf("DF ping of %d bytes (FLANNEL_MTU+1) from a container with MTU %s: want the node's %q, got err %v:\n%s",
			mtu+1, big, want, err, out)
	}
}

// Scenario 4: a stale route tagged with Weft's protocol is removed by reconcile; a foreign route is kept.
func (e *e2e) staleRoute(t *testing.T) {
	n1 := e.Node(1)
	const stale, foreign = "10.5.250.0/24", "10.5.251.0/24"
	if _, err := n1.NS.IP("route", "add", stale, "via", "192.0.2.250", "dev", "eth0", "proto", "87"); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.NS.IP("route", "add", foreign, "via", "192.0.2.251", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	defer n1.NS.IP("route", "del", foreign)
	// A route added behind weftd's back is no event vxlan and host-gw follow (deletions are): the comparison
	// with the kernel's tables removes it, every 10th reconcile interval for them (20 s here).
	waitFor(t, 30*time.Second, "stale proto-87 route removed by reconcile", func() (bool, string) {
		out, err := n1.NS.IP("route", "show")
		return err == nil && !strings.Contains(out, stale), out
	})
	// Another two reconcile rounds: the foreign route must survive them.
	time.Sleep(4 * time.Second)
	if out, _ := n1.NS.IP("route", "show"); !strings.Contains(out, foreign) {
		t.Errorf("foreign route %s removed by reconcile:\n%s", foreign, out)
	}
}

// Scenario 3: an agent killed (SIGKILL) or stopped (SIGTERM) and restarted keeps its subnet; on kernel
// backends a continuous ping to its container from another node loses nothing meanwhile.
func (e *e2e) restart(t *testing.T) {
	for _, tc := range []struct {
		node int
		sig  syscall.Signal
	}{{2, syscall.SIGKILL}, {3, syscall.SIGTERM}} {
		t.Run(tc.sig.String(), func(t *testing.T) {
			ctx := e.ctx(t, 60*time.Second)
			n, src := e.Node(tc.node), e.Node(1)
			before, err := n.Lease()
			if err != nil {
				t.Fatal(err)
			}
			run, err := e.StartPing(src, e.dst(n), 50*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if err := n.StopAgent(tc.sig); err != nil {
				t.Error(err)
			}
			time.Sleep(time.Second)
			if err := n.StartAgent(ctx); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitReady(ctx); err != nil {
				t.Error(err)
			}
			time.Sleep(time.Second)
			r, err := run.Stop()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("ping %s → %s across the restart: %s", src.Name, n.Name, r)
			after, err := n.Lease()
			if err != nil {
				t.Fatal(err)
			}
			if after.Subnet != before.Subnet || after.IPv6Subnet != before.IPv6Subnet {
				t.Errorf("env file subnets after restart = %s %s, want %s %s", after.Subnet, after.IPv6Subnet, before.Subnet, before.IPv6Subnet)
			}
			leases, err := e.leases(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if a, ok := leases[e.envSub(before)]; !ok || e.attrsPub(a) != e.pub(n) {
				t.Errorf("lease %s after restart: %+v (present %t), want public address %s", e.envSub(before), a, ok, e.pub(n))
			}
			if kernelBackend(e.backend) {
				if r.Transmitted < 20 || r.Lost() != 0 {
					t.Errorf("continuous ping across the restart: %s, want no loss", r)
				}
			} else if err := e.WaitPing(e.ctx(t, 10*time.Second), src, e.dst(n)); err != nil {
				t.Errorf("no traffic after the restart: %v", err)
			}
		})
	}
}

// Scenario 5 (udp): datagrams from a stranger and from a peer with an inner source outside the peer's
// subnet are dropped and counted.
func (e *e2e) udpDrops(t *testing.T) {
	ctx := e.ctx(t, 30*time.Second)
	n1, n2 := e.Node(1), e.Node(2)
	// A stranger's datagrams are dropped by the sockets' peer filter in the kernel (socket_drops).
	baseUnknown, err := e.metric(ctx, n1, "socket_drops")
	if err != nil {
		t.Fatal(err)
	}
	baseBad, err := e.metric(ctx, n1, "drop_bad_inner_source")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := e.AddHost("x", netip.MustParseAddr("192.0.2.99"))
	if err != nil {
		t.Fatal(err)
	}
	dst := netip.AddrPortFrom(n1.Addr, 8285)
	// From a stranger: a well-formed packet that would be fine from n2.
	sendUDP(t, stranger, netip.Addr{}, dst, ipv4Packet(n2.ContainerIP(), n1.ContainerIP()))
	// From n2's own address, but with an inner source outside n2's subnet.
	sendUDP(t, n2.NS, n2.Addr, dst, ipv4Packet(netip.MustParseAddr("10.5.250.7"), n1.ContainerIP()))
	waitFor(t, 10*time.Second, "drops counted on n1", func() (bool, string) {
		u, err1 := e.metric(ctx, n1, "socket_drops")
		b, err2 := e.metric(ctx, n1, "drop_bad_inner_source")
		return err1 == nil && err2 == nil && u >= baseUnknown+1 && b >= baseBad+1,
			fmt.Sprintf("socket_drops %v → %v (%v), drop_bad_inner_source %v → %v (%v)", baseUnknown, u, err1, baseBad, b, err2)
	})
}

// Scenario 8 (udp): offloads on, then node 3 restarted with --udp-offload=off: every pair still carries ICMP,
// TCP and DF pings at the MTU (a mixed cluster, as during a rollout or on a kernel without offloads).
func (e *e2e) udpOffloadsMixed(t *testing.T) {
	ctx := e.ctx(t, 120*time.Second)
	offload := func(n *netcluster.Node, f string) float64 {
		v, err := e.metric(ctx, n, `offload{feature="`+f+`"}`)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, f := range []string{"tun", "gso", "gro"} {
		if v := offload(e.Node(1), f); v != 1 {
			t.Errorf("node 1: offload %s = %v, want 1", f, v)
		}
	}
	n3 := e.Node(3)
	restart := func(flags ...string) {
		t.Helper()
		if err := n3.StopAgent(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		n3.SetExtraFlags(flags...)
		if err := n3.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n3.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	restart("--udp-offload=off")
	defer restart()
	for _, f := range []string{"tun", "gso", "gro"} {
		if v := offload(n3, f); v != 0 {
			t.Errorf("node 3 with --udp-offload=off: offload %s = %v, want 0", f, v)
		}
	}
	e.traffic(t)
	for _, p := range [][2]int{{1, 3}, {3, 1}, {1, 2}} {
		if err := e.TCP(ctx, e.Node(p[0]), e.Node(p[1]), 16<<20); err != nil {
			t.Error(err)
		}
	}
}

// Scenario 9 (udp): flannel0 set down, then deleted, on a running node: the agent repairs it (the deleted
// TUN at once, through its own reconcile request) and traffic comes back without an operator.
func (e *e2e) udpRepair(t *testing.T) {
	ctx := e.ctx(t, 60*time.Second)
	n1, n2 := e.Node(1), e.Node(2)
	back := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := e.WaitPing(wctx, n1, n2.ContainerIP()); err != nil {
			t.Errorf("after %s: no traffic %s → %s: %v", what, n1.Name, n2.Name, err)
		}
		if err := e.TCP(ctx, n2, n1, 1<<20); err != nil {
			t.Errorf("after %s: %v", what, err)
		}
	}
	n2.NS.MustIP(t, "link", "set", "flannel0", "down")
	back("flannel0 set down")
	n2.NS.MustIP(t, "link", "del", "flannel0")
	back("flannel0 deleted")
	if v, err := e.metric(ctx, n2, "tun_recreated"); err != nil || v < 1 {
		t.Errorf("node 2: tun_recreated = %v (%v), want ≥ 1", v, err)
	}
	if err := n2.WaitReady(ctx); err != nil {
		t.Errorf("node 2 not ready after the repair: %v", err)
	}
}

// sendUDP sends payload three times from a socket opened inside ns (bound to src if valid) to dst.
func sendUDP(t *testing.T, ns *kerneltest.NS, src netip.Addr, dst netip.AddrPort, payload []byte) {
	t.Helper()
	var conn *net.UDPConn
	err := ns.Do(func() error {
		var laddr *net.UDPAddr
		if src.IsValid() {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		}
		var err error
		conn, err = net.DialUDP("udp4", laddr, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		t.Fatalf("udp socket in %s: %v", ns.Name, err)
	}
	defer conn.Close()
	for range 3 {
		if _, err := conn.Write(payload); err != nil {
			t.Fatalf("send from %s to %s: %v", ns.Name, dst, err)
		}
	}
}

// ipv4Packet returns an ICMP echo request from src to dst with a valid IPv4 header.
func ipv4Packet(src, dst netip.Addr) []byte {
	icmp := []byte{8, 0, 0, 0, 0, 1, 0, 1, 'w', 'e', 'f', 't'}
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp))
	h := make([]byte, 20, 20+len(icmp))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(icmp)))
	h[8], h[9] = 64, 1 // TTL, ICMP
	s, d := src.As4(), dst.As4()
	copy(h[12:], s[:])
	copy(h[16:], d[:])
	binary.BigEndian.PutUint16(h[10:], checksum(h))
	return append(h, icmp...)
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// kernelMentions returns what in n's kernel state still refers to the peer with subnet sn and underlay
// address pub: the route (all kernel backends), and for vxlan the neighbour and FDB entries (on flannel.1,
// or flannel-v6.1 for an IPv6 subnet).
func (e *e2e) kernelMentions(n *netcluster.Node, sn netip.Prefix, pub netip.Addr) []string {
	var found []string
	if !kernelBackend(e.backend) {
		return nil
	}
	fam, dev := "-4", "flannel.1"
	if sn.Addr().Is6() {
		fam, dev = "-6", "flannel-v6.1"
	}
	out, err := n.NS.IP(fam, "route", "show")
	if err != nil {
		return []string{err.Error()}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, sn.String()+" ") {
			found = append(found, "route: "+l)
		}
	}
	if e.backend == "vxlan" {
		out, err := n.NS.IP(fam, "neigh", "show", "dev", dev)
		if err != nil {
			return []string{err.Error()}
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, sn.Addr().String()+" ") {
				found = append(found, "neigh: "+l)
			}
		}
		b, err := exec.Command("bridge", "-n", n.NS.Name, "fdb", "show", "dev", dev).CombinedOutput()
		if err != nil {
			return []string{fmt.Sprintf("bridge fdb: %v: %s", err, b)}
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l+" ", "dst "+pub.String()+" ") {
				found = append(found, "fdb: "+l)
			}
		}
	}
	return found
}

// Scenario 2: a node that joins later is reachable from all; after its agent stops and its lease is
// deleted, no other node's kernel state mentions its subnet.
func (e *e2e) joinAndDelete(t *testing.T) {
	ctx := e.ctx(t, 90*time.Second)
	old := e.Nodes()
	n4, err := e.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sn := e.sub(n4)
	for _, n := range old {
		for _, pair := range [][2]*netcluster.Node{{n, n4}, {n4, n}} {
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			if err := e.WaitPing(wctx, pair[0], e.dst(pair[1])); err != nil {
				t.Errorf("%s → %s: %v", pair[0].Name, pair[1].Name, err)
			}
			cancel()
		}
		if err := e.tcp(ctx, n, n4, 64<<10); err != nil {
			t.Error(err)
		}
		if kernelBackend(e.backend) {
			want := peerEntries[e.backend]
			if got := e.kernelMentions(n, sn, e.pub(n4)); len(got) != want {
				t.Errorf("node %s: state for joined %s: %q, want %d entries", n.Name, sn, got, want)
			}
		}
	}
	if err := n4.StopAgent(syscall.SIGTERM); err != nil {
		t.Error(err)
	}
	if out, err := e.Weftd(ctx, old[0].NS, "leases", "delete", sn.String()); err != nil {
		t.Fatalf("weftd leases delete: %v", err)
	} else {
		t.Logf("weftd leases delete %s: %s", sn, strings.TrimSpace(out))
	}
	for _, n := range old {
		waitFor(t, 10*time.Second, fmt.Sprintf("node %s forgets %s", n.Name, sn), func() (bool, string) {
			got := e.kernelMentions(n, sn, e.pub(n4))
			peers, err := e.metric(ctx, n, "peers")
			return len(got) == 0 && err == nil && peers == float64(len(old)-1),
				fmt.Sprintf("kernel state %q, weft_peers %v (%v)", got, peers, err)
		})
	}
	if leases, err := e.leases(ctx); err != nil {
		t.Error(err)
	} else if _, ok := leases[sn]; ok {
		t.Errorf("lease %s still in etcd after delete", sn)
	}
}

// Scenario 6: etcd stops for 20 s and restarts; a continuous ping keeps flowing; at the end of the outage
// every node still has its kernel entries for each peer; the agents (not restarted) recover by themselves
// and see a lease change made afterwards.
func (e *e2e) etcdOutage(t *testing.T) {
	ctx := e.ctx(t, 120*time.Second)
	nodes := e.Nodes()[:3]
	n1, n2 := nodes[0], nodes[1]
	pids := agentPIDs(nodes)
	run, err := e.StartPing(n1, e.dst(n2), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.StopEtcd(); err != nil {
		t.Error(err)
	}
	time.Sleep(20 * time.Second)
	for _, n := range nodes {
		for _, p := range nodes {
			if got := e.kernelMentions(n, e.sub(p), e.pub(p)); p != n && len(got) != peerEntries[e.backend] {
				t.Errorf("node %s after 20 s without etcd: state for peer %s (%s): %q, want %d entries",
					n.Name, p.Name, e.sub(p), got, peerEntries[e.backend])
			}
		}
	}
	if err := e.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	r, err := run.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ping %s → %s across the etcd outage: %s", n1.Name, n2.Name, r)
	maxLoss := 0
	if !kernelBackend(e.backend) {
		maxLoss = 5
	}
	if r.Transmitted < 300 || r.Lost() > maxLoss {
		t.Errorf("continuous ping across the etcd outage: %s, want at most %d lost", r, maxLoss)
	}
	checkSameAgents(t, nodes, pids)
	// A lease change after the restart: node 4 (stopped, lease deleted in scenario 2) comes back, or a new
	// node joins if scenario 2 did not leave one.
	n4 := e.Node(4)
	if n4 != nil && n4.Container() != nil {
		if err := n4.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		env, err := n4.WaitLease(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := n4.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		if e.envSub(env) != e.sub(n4) {
			t.Fatalf("node 4 came back with subnet %s, not its previous (free) %s", e.envSub(env), e.sub(n4))
		}
	} else if n4, err = e.AddNode(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := e.WaitPing(wctx, n, e.dst(n4)); err != nil {
			t.Errorf("after the etcd restart, %s → %s (new lease %s): %v", n.Name, n4.Name, e.sub(n4), err)
		}
		cancel()
		waitFor(t, 30*time.Second, fmt.Sprintf("node %s ready and sees %d peers", n.Name, len(nodes)), func() (bool, string) {
			status, _, err := e.HTTPGet(ctx, n, "/readyz")
			peers, perr := e.metric(ctx, n, "peers")
			return err == nil && status == 200 && perr == nil && peers == float64(len(nodes)),
				fmt.Sprintf("/readyz %d (%v), weft_peers %v (%v)", status, err, peers, perr)
		})
	}
}

// agentPIDs returns each node's agent PID by node name, for checkSameAgents.
func agentPIDs(nodes []*netcluster.Node) map[string]int {
	pids := map[string]int{}
	for _, n := range nodes {
		pids[n.Name] = n.AgentPID()
	}
	return pids
}

// checkSameAgents reports each node whose agent is not the process of pids (agentPIDs) still running.
func checkSameAgents(t *testing.T, nodes []*netcluster.Node, pids map[string]int) {
	t.Helper()
	for _, n := range nodes {
		if !n.AgentRunning() || n.AgentPID() != pids[n.Name] {
			t.Errorf("node %s: agent pid %d running %t, want the same pid %d still running", n.Name, n.AgentPID(), n.AgentRunning(), pids[n.Name])
		}
	}
}

// Scenario 7: after the cluster is closed, nothing of it remains: no namespace with the prefix, no process
// (by PID, and none whose command line names the cluster's directory or prefix), no device named after it
// in the host namespace (read only).
func (e *e2e) teardown(t *testing.T) {
	pids := e.PIDs()
	if err := e.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if left, err := kerneltest.ListNS(e.prefix); err != nil || len(left) > 0 {
		t.Errorf("namespaces left: %v %v", left, err)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("process %d still exists", pid)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		cmd := strings.ReplaceAll(string(b), "\x00", " ")
		if strings.Contains(cmd, e.dir) || strings.Contains(cmd, e.prefix+"-") {
			t.Errorf("process left: %s: %s", filepath.Dir(f), cmd)
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput(); err != nil {
		t.Error(err)
	} else if strings.Contains(string(out), e.prefix) {
		t.Errorf("host namespace has a device named after %s:\n%s", e.prefix, out)
	}
}

// startCluster starts a netns cluster of real weftd processes for an end-to-end test, from o completed with
// the test's binaries, a fresh namespace prefix, a log to the test's output and a temporary directory where
// unset. It fails the test if the cluster does not come up. When the test ends the cluster is closed, and
// then, if the test failed (or with WEFT_E2E_LOGS=1), every agent's and etcd's log is printed, followed by
// what moreLogs prints.
func startCluster(t *testing.T, o netcluster.Options, moreLogs ...func()) *netcluster.Cluster {
	t.Helper()
	if o.Prefix == "" {
		o.Prefix = kerneltest.Prefix()
	}
	if o.Weftd == "" {
		o.Weftd = weftdBin
	}
	if o.ClusterBin == "" {
		o.ClusterBin = cluBin
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WEFT_E2E_LOGS") == "1" {
			dumpLogs(t, o.Dir)
			for _, f := range moreLogs {
				f()
			}
		}
	})
	c, err := netcluster.Start(t.Context(), o)
	if err != nil {
		t.Fatalf("start %s cluster: %v", o.Backend, err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	return c
}

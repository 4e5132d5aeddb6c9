package main_test

// End-to-end fault scenarios that TestE2E does not cover: a lease that expires (agent SIGKILLed, never
// restarted), kernel state left over from an earlier run when an agent starts, the alloc backend, garbage
// keys in etcd, and a full network. Each scenario runs on its own small cluster, in parallel with the
// others. Gate, logs and helpers (e2e, waitFor, dumpLogs, kernelMentions, leases, metric) as in
// e2e_linux_test.go.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// leasePrefix is where the agents keep their leases (the default --etcd-prefix).
const leasePrefix = "/coreos.com/network/subnets/"

func TestE2EFaults(t *testing.T) {
	requireE2E(t)
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run("lease-expiry-"+backend, func(t *testing.T) {
			t.Parallel()
			testLeaseExpiry(t, backend)
		})
	}
	t.Run("stale-state-vxlan", func(t *testing.T) {
		t.Parallel()
		testStaleStateVXLAN(t)
	})
	t.Run("stale-state-udp", func(t *testing.T) {
		t.Parallel()
		testStaleStateUDP(t)
	})
	t.Run("alloc", func(t *testing.T) {
		t.Parallel()
		testAlloc(t)
	})
	t.Run("etcd-garbage", func(t *testing.T) {
		t.Parallel()
		testEtcdGarbage(t)
	})
	t.Run("network-full", func(t *testing.T) {
		t.Parallel()
		testNetworkFull(t)
	})
}

// startFaultCluster starts a cluster for one scenario (o's Prefix, binaries, Dir and Log are filled in),
// prints every log if the test fails (or with WEFT_E2E_LOGS=1) and closes the cluster at the end.
func startFaultCluster(t *testing.T, o netcluster.Options) *e2e {
	t.Helper()
	if o.Backend == "" {
		o.Backend = "vxlan"
	}
	e := &e2e{backend: o.Backend, prefix: kerneltest.Prefix(), dir: t.TempDir()}
	o.Prefix, o.Dir = e.prefix, e.dir
	e.Cluster = startCluster(t, o)
	return e
}

// Scenario: lease expiry. Node 3's agent is SIGKILLed and not restarted: its lease key stays until its TTL
// (5 s) runs out, then it is gone from etcd and nodes 1 and 2 drop every piece of kernel state for its
// subnet (route; for vxlan also neighbour and FDB entry), and their peer count (weft_peers) drops to 1.
func testLeaseExpiry(t *testing.T, backend string) {
	const ttl = 5 * time.Second
	e := startFaultCluster(t, netcluster.Options{
		Backend:         backend,
		Nodes:           3,
		ExtraAgentFlags: []string{"--subnet-lease-ttl=" + ttl.String()},
	})
	ctx := e.ctx(t, 60*time.Second)
	n1, n2, n3 := e.Node(1), e.Node(2), e.Node(3)
	sn := n3.Subnet()
	want := peerEntries[backend]
	for _, n := range []*netcluster.Node{n1, n2} {
		if err := e.WaitPing(e.ctx(t, 20*time.Second), n, n3.ContainerIP()); err != nil {
			t.Fatalf("before the kill: %v", err)
		}
		if got := e.kernelMentions(n, sn, n3.Addr); len(got) != want {
			t.Fatalf("before the kill: node %s: state for %s: %q, want %d entries", n.Name, sn, got, want)
		}
		if peers, err := e.metric(ctx, n, "peers"); err != nil || peers != 2 {
			t.Fatalf("before the kill: node %s: weft_peers %v (%v), want 2", n.Name, peers, err)
		}
	}

	if err := n3.KillAgent(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	// Nobody deleted the key: it must still be there right after the kill (at least TTL − TTL/3 is left).
	leases, err := e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := leases[sn]; !ok {
		t.Fatalf("lease %s gone right after SIGKILL (%s later), before its TTL could run out", sn, time.Since(killed))
	}

	var expired time.Duration
	if !waitFor(t, ttl+5*time.Second, "lease "+sn.String()+" expires", func() (bool, string) {
		leases, err := e.leases(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, ok := leases[sn]
		expired = time.Since(killed)
		return !ok, fmt.Sprintf("still in etcd: %+v", leases[sn])
	}) {
		return
	}
	t.Logf("lease %s gone %s after the SIGKILL (TTL %s)", sn, expired.Round(100*time.Millisecond), ttl)
	for _, n := range []*netcluster.Node{n1, n2} {
		waitFor(t, 5*time.Second, fmt.Sprintf("node %s forgets %s", n.Name, sn), func() (bool, string) {
			got := e.kernelMentions(n, sn, n3.Addr)
			peers, err := e.metric(ctx, n, "peers")
			return len(got) == 0 && err == nil && peers == 1,
				fmt.Sprintf("kernel state %q, weft_peers %v (%v)", got, peers, err)
		})
		if status, _, err := e.HTTPGet(ctx, n, "/readyz"); err != nil || status != 200 {
			t.Errorf("node %s: /readyz %d (%v) after the peer expired, want 200", n.Name, status, err)
		}
	}
	if err := e.WaitPing(e.ctx(t, 10*time.Second), n1, n2.ContainerIP()); err != nil {
		t.Errorf("n1 → n2 after n3 expired: %v", err)
	}
	if backend == "udp" {
		// The peer table no longer has n3: n1's TUN answers for its subnet with ICMP net unreachable.
		before, err := e.metric(ctx, n1, "drop_no_route")
		if err != nil {
			t.Fatal(err)
		}
		out, err := e.Ping(ctx, n1, n3.ContainerIP(), "-c", "1")
		if err == nil || !strings.Contains(out, "Destination Net Unreachable") {
			t.Errorf("n1 → expired n3 %s: want \"Destination Net Unreachable\", got err %v: %s", n3.ContainerIP(), err, out)
		}
		if after, err := e.metric(ctx, n1, "drop_no_route"); err != nil || after < before+1 {
			t.Errorf("n1: weft_udp_drop_no_route %v → %v (%v), want it counted", before, after, err)
		}
	}
}

// vxlanInfo is the part of `ip -d -j link show` that describes a VXLAN device.
type vxlanInfo struct {
	Index   int    `json:"ifindex"`
	MTU     int    `json:"mtu"`
	Address string `json:"address"`
	Flags   []string
	Link    struct {
		Kind string `json:"info_kind"`
		Data struct {
			ID       int    `json:"id"`
			Local    string `json:"local"`
			Dev      string `json:"link"`
			Port     int    `json:"port"`
			Learning bool   `json:"learning"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func readVXLAN(t *testing.T, ns *kerneltest.NS, name string) vxlanInfo {
	t.Helper()
	out, err := ns.IP("-d", "-j", "link", "show", name)
	if err != nil {
		t.Fatal(err)
	}
	var links []vxlanInfo
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip -d -j link show %s: %v: %s", name, err, out)
	}
	return links[0]
}

// routeLines returns the lines of `ip route show args...` in ns.
func routeLines(t *testing.T, ns *kerneltest.NS, args ...string) []string {
	t.Helper()
	out, err := ns.IP(append([]string{"route", "show"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return nonEmptyLines(out)
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// hasPrefixLine reports whether a line of lines starts with p followed by a space.
func hasPrefixLine(lines []string, p string) bool {
	return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l+" ", p+" ") })
}

// Addresses and names planted as leftovers. Allocation picks among the first 100 free subnets of
// 10.5.1.0..10.5.255.0, so a lease never lands on these in a small cluster.
const (
	staleEth0Route   = "10.5.250.0/24" // proto 87 via eth0: no lease explains it
	foreignRoute     = "10.5.251.0/24" // no proto 87: not ours, must stay
	staleVXLANSubnet = "10.5.249.0/24" // a departed vxlan peer: route, neighbour and FDB entry
	staleVXLANMAC    = "02:00:5e:00:f9:01"
	staleVXLANVTEP   = "192.0.2.249"
	plantedMAC       = "02:00:5e:00:0a:04" // the MAC of the compatible leftover device
)

// plantRoutes adds a stale proto-87 route via eth0 and a foreign route in ns.
func plantRoutes(t *testing.T, ns *kerneltest.NS) {
	t.Helper()
	ns.MustIP(t, "route", "add", staleEth0Route, "via", "192.0.2.250", "dev", "eth0", "proto", "87")
	ns.MustIP(t, "route", "add", foreignRoute, "via", "192.0.2.251", "dev", "eth0")
}

// checkRoutesAfterStart checks right after the agent reported ready (no reconcile tick has run: the
// interval is 1 h) that the stale proto-87 route is gone and the foreign one is still there.
func checkRoutesAfterStart(t *testing.T, n *netcluster.Node) {
	t.Helper()
	all := routeLines(t, n.NS)
	if hasPrefixLine(all, staleEth0Route) {
		t.Errorf("node %s: stale proto-87 route %s still there at ready:\n%s", n.Name, staleEth0Route, strings.Join(all, "\n"))
	}
	if !hasPrefixLine(all, foreignRoute) {
		t.Errorf("node %s: foreign route %s removed:\n%s", n.Name, foreignRoute, strings.Join(all, "\n"))
	}
}

// startStale starts the agent of a node created with CreateNode, with a reconcile interval of 1 h (so only
// the reconcile at start can have cleaned up), and attaches its container. It returns when the agent is
// ready.
func startStale(t *testing.T, e *e2e, n *netcluster.Node) {
	t.Helper()
	n.SetExtraFlags("--reconcile-interval=1h")
	ctx := e.ctx(t, 40*time.Second)
	if err := n.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.Attach(ctx); err != nil {
		t.Fatal(err)
	}
}

// pingAll checks ICMP both ways between n and each of others.
func pingAll(t *testing.T, e *e2e, n *netcluster.Node, others ...*netcluster.Node) {
	t.Helper()
	for _, o := range others {
		for _, p := range [][2]*netcluster.Node{{n, o}, {o, n}} {
			if err := e.WaitPing(e.ctx(t, 20*time.Second), p[0], p[1].ContainerIP()); err != nil {
				t.Errorf("%s → %s: %v", p[0].Name, p[1].Name, err)
			}
		}
	}
}

// Scenario: stale vxlan state from an earlier run, present when the agent starts.
//   - node 3 has a leftover flannel.1 with an incompatible setup (dstport 4789, learning on) and a stale
//     proto-87 route via eth0: the agent replaces the device (dstport 8472, nolearning, MTU 1450) and
//     removes the route; traffic works.
//   - node 4 has a compatible leftover flannel.1 (wrong MTU) with a departed peer's neighbour, FDB entry and
//     onlink proto-87 route on it: the agent keeps the device and its MAC (and publishes that MAC), fixes the
//     MTU and removes the three stale entries.
//
// Both agents run with --reconcile-interval=1h and are checked as soon as they report ready: the start-up
// reconcile does it.
func testStaleStateVXLAN(t *testing.T) {
	e := startFaultCluster(t, netcluster.Options{Backend: "vxlan", Nodes: 2})
	n1, n2 := e.Node(1), e.Node(2)

	n3, err := e.CreateNode()
	if err != nil {
		t.Fatal(err)
	}
	n3.NS.MustIP(t, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", n3.Addr.String(), "dev", "eth0",
		"dstport", "4789", "learning")
	n3.NS.MustIP(t, "link", "set", "flannel.1", "up")
	old3 := readVXLAN(t, n3.NS, "flannel.1")
	plantRoutes(t, n3.NS)

	n4, err := e.CreateNode()
	if err != nil {
		t.Fatal(err)
	}
	n4.NS.MustIP(t, "link", "add", "flannel.1", "address", plantedMAC, "mtu", "1400", "type", "vxlan", "id", "1",
		"local", n4.Addr.String(), "dev", "eth0", "dstport", "8472", "nolearning")
	n4.NS.MustIP(t, "link", "set", "flannel.1", "up")
	plantStaleVXLANPeer(t, e, n4)
	old4 := readVXLAN(t, n4.NS, "flannel.1")
	plantRoutes(t, n4.NS)

	// Both start at once, so each sees the other as a peer from its first reconcile.
	for _, n := range []*netcluster.Node{n3, n4} {
		n.SetExtraFlags("--reconcile-interval=1h")
		if err := n.StartAgent(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []*netcluster.Node{n3, n4} {
		if err := n.Attach(e.ctx(t, 40*time.Second)); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("incompatible-device-replaced", func(t *testing.T) {
		dev := readVXLAN(t, n3.NS, "flannel.1")
		d := dev.Link.Data
		if dev.Link.Kind != "vxlan" || d.ID != 1 || d.Port != 8472 || d.Learning || d.Local != n3.Addr.String() ||
			d.Dev != "eth0" || dev.MTU != 1450 || !slices.Contains(dev.Flags, "UP") {
			t.Errorf("n3 flannel.1 after start: %+v, want vxlan id 1 local %s dev eth0 dstport 8472 nolearning mtu 1450 up", dev, n3.Addr)
		}
		if dev.Index == old3.Index {
			t.Errorf("n3 flannel.1 has the leftover's index %d: it was not recreated", dev.Index)
		}
		if log := e.AgentLog(n3); !strings.Contains(log, "replaced an incompatible link") || !strings.Contains(log, "port 4789, want 8472") {
			t.Errorf("n3 log does not report the replaced device (port 4789, want 8472)")
		}
		checkRoutesAfterStart(t, n3)
	})
	t.Run("stale-entries-removed", func(t *testing.T) {
		checkStaleVXLANPeerGone(t, e, n4)
		checkRoutesAfterStart(t, n4)
		dev := readVXLAN(t, n4.NS, "flannel.1")
		if dev.Index != old4.Index || dev.Address != plantedMAC || dev.MTU != 1450 {
			t.Errorf("n4 flannel.1: index %d mac %s mtu %d, want the leftover (index %d, mac %s) kept with mtu 1450",
				dev.Index, dev.Address, dev.MTU, old4.Index, plantedMAC)
		}
		leases, err := e.leases(e.ctx(t, 15*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var data struct{ VtepMAC string }
		json.Unmarshal(leases[n4.Subnet()].BackendData, &data)
		if data.VtepMAC != plantedMAC {
			t.Errorf("n4's lease publishes VtepMAC %q, want the kept device's %s", data.VtepMAC, plantedMAC)
		}
		// Every current peer has its three entries.
		for _, p := range []*netcluster.Node{n1, n2, n3} {
			if got := e.kernelMentions(n4, p.Subnet(), p.Addr); len(got) != 3 {
				t.Errorf("n4: state for peer %s (%s): %q, want 3 entries", p.Name, p.Subnet(), got)
			}
		}
	})
	t.Run("traffic", func(t *testing.T) {
		pingAll(t, e, n3, n1, n2, n4)
		pingAll(t, e, n4, n1, n2)
		if err := e.TCP(e.ctx(t, 20*time.Second), n3, n1, 64<<10); err != nil {
			t.Error(err)
		}
	})
	// The same on an agent restart: n1 stopped (SIGTERM leaves its device and entries), stale entries
	// planted on its working flannel.1, agent started again with a 1 h reconcile interval.
	t.Run("restart", func(t *testing.T) {
		if err := n1.StopAgent(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		plantStaleVXLANPeer(t, e, n1)
		plantRoutes(t, n1.NS)
		n1.SetExtraFlags("--reconcile-interval=1h")
		ctx := e.ctx(t, 30*time.Second)
		if err := n1.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n1.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		checkStaleVXLANPeerGone(t, e, n1)
		checkRoutesAfterStart(t, n1)
		for _, p := range []*netcluster.Node{n2, n3, n4} {
			if got := e.kernelMentions(n1, p.Subnet(), p.Addr); len(got) != 3 {
				t.Errorf("n1: state for peer %s (%s): %q, want 3 entries", p.Name, p.Subnet(), got)
			}
		}
		pingAll(t, e, n1, n2, n3, n4)
	})
}

// plantStaleVXLANPeer leaves on n's flannel.1 what a departed peer (staleVXLANSubnet at staleVXLANVTEP)
// had: the onlink proto-87 route, the permanent neighbour and the FDB entry.
func plantStaleVXLANPeer(t *testing.T, e *e2e, n *netcluster.Node) {
	t.Helper()
	gw := netip.MustParsePrefix(staleVXLANSubnet).Addr().String()
	n.NS.MustIP(t, "route", "add", staleVXLANSubnet, "via", gw, "dev", "flannel.1", "onlink", "proto", "87")
	n.NS.MustIP(t, "neigh", "add", gw, "lladdr", staleVXLANMAC, "dev", "flannel.1", "nud", "permanent")
	n.NS.MustExec(t, "bridge", "fdb", "add", staleVXLANMAC, "dev", "flannel.1", "dst", staleVXLANVTEP, "self", "permanent")
	// The planted state is there, so its absence later means something.
	if got := e.kernelMentions(n, netip.MustParsePrefix(staleVXLANSubnet), netip.MustParseAddr(staleVXLANVTEP)); len(got) != 3 {
		t.Fatalf("planted stale vxlan state on %s: %q, want route, neighbour and fdb entry", n.Name, got)
	}
}

// checkStaleVXLANPeerGone checks, right after n's agent reported ready, that nothing of what
// plantStaleVXLANPeer left is there.
func checkStaleVXLANPeerGone(t *testing.T, e *e2e, n *netcluster.Node) {
	t.Helper()
	sn, vtep := netip.MustParsePrefix(staleVXLANSubnet), netip.MustParseAddr(staleVXLANVTEP)
	if got := e.kernelMentions(n, sn, vtep); len(got) != 0 {
		t.Errorf("%s at ready: stale vxlan state for %s still there: %q", n.Name, sn, got)
	}
	if out, _ := n.NS.IP("neigh", "show", "dev", "flannel.1"); strings.Contains(out, staleVXLANMAC) {
		t.Errorf("%s at ready: neighbour with %s still there:\n%s", n.Name, staleVXLANMAC, out)
	}
	if out, _ := n.NS.Exec("bridge", "fdb", "show", "dev", "flannel.1"); strings.Contains(out, staleVXLANMAC) {
		t.Errorf("%s at ready: fdb entry for %s still there:\n%s", n.Name, staleVXLANMAC, out)
	}
}

// Scenario: a stale proto-87 route via eth0 (the udp backend's TUN cannot outlive its agent, so a leftover
// route into it is impossible) is removed at start by a udp agent with --reconcile-interval=1h; a foreign
// route stays; the overlay route into flannel0 is in place and traffic works.
func testStaleStateUDP(t *testing.T) {
	e := startFaultCluster(t, netcluster.Options{Backend: "udp", Nodes: 2})
	n3, err := e.CreateNode()
	if err != nil {
		t.Fatal(err)
	}
	plantRoutes(t, n3.NS)
	startStale(t, e, n3)
	checkRoutesAfterStart(t, n3)
	ours := routeLines(t, n3.NS, "proto", "87")
	if len(ours) != 1 || !strings.HasPrefix(ours[0], "10.5.0.0/16 dev flannel0") {
		t.Errorf("n3 proto-87 routes: %q, want exactly the network 10.5.0.0/16 into flannel0", ours)
	}
	pingAll(t, e, n3, e.Node(1), e.Node(2))
}

// Scenario: the alloc backend. Two nodes hold leases with BackendType "alloc", write env files with the
// underlay MTU and report ready, and the agents create no kernel state at all: no proto-87 route and no link
// besides the underlay's and the harness's (lo, eth0, cbr0, veth-c1).
func testAlloc(t *testing.T) {
	e := startFaultCluster(t, netcluster.Options{Backend: "alloc", Nodes: 2})
	ctx := e.ctx(t, 30*time.Second)
	leases, err := e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 2 {
		t.Errorf("leases: %v, want 2", leases)
	}
	for _, n := range e.Nodes() {
		a, ok := leases[n.Subnet()]
		if !ok || a.BackendType != "alloc" || a.PublicIP != n.Addr || len(a.BackendData) != 0 {
			t.Errorf("node %s: lease %s: %+v (present %t), want BackendType alloc, PublicIP %s, no BackendData",
				n.Name, n.Subnet(), a, ok, n.Addr)
		}
		env, err := n.Lease()
		if err != nil {
			t.Fatal(err)
		}
		if env.MTU != 1500 || env.Network != netip.MustParsePrefix(netcluster.DefaultNetwork) || env.Subnet.Masked() != n.Subnet() {
			t.Errorf("node %s: env file %+v, want FLANNEL_MTU=1500, network %s, subnet %s", n.Name, env, netcluster.DefaultNetwork, n.Subnet())
		}
		if status, body, err := e.HTTPGet(ctx, n, "/readyz"); err != nil || status != 200 {
			t.Errorf("node %s: /readyz %d %q (%v), want 200", n.Name, status, body, err)
		}
		if peers, err := e.metric(ctx, n, "peers"); err != nil || peers != 1 {
			t.Errorf("node %s: weft_peers %v (%v), want 1", n.Name, peers, err)
		}
		if ours := routeLines(t, n.NS, "table", "all", "proto", "87"); len(ours) != 0 {
			t.Errorf("node %s: proto-87 routes with the alloc backend: %q", n.Name, ours)
		}
		out, err := n.NS.IP("-o", "link", "show")
		if err != nil {
			t.Fatal(err)
		}
		var links []string
		for _, l := range nonEmptyLines(out) {
			f := strings.Fields(l) // "3: eth0@if5: <...> ..."; skip anything else ip prints, such as
			// "Peer netns reference is invalid." while a peer namespace is busy
			if len(f) > 1 && strings.HasSuffix(f[0], ":") && strings.Trim(f[0], "0123456789") == ":" {
				name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
				links = append(links, name)
			}
		}
		slices.Sort(links)
		if !slices.Equal(links, []string{"cbr0", "eth0", "lo", "veth-c1"}) {
			t.Errorf("node %s: links %q, want only cbr0 eth0 lo veth-c1 (none made by the agent)", n.Name, links)
		}
	}

	// Reuse through the env file (compat §4 step 2): with the node's lease deleted, its PublicIP no longer
	// finds it, so only FLANNEL_SUBNET in the previous env file can bring the same subnet back (a random pick
	// would hit it with a chance of 1 in 250).
	n := e.Node(2)
	want := n.Subnet()
	if err := n.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Weftd(ctx, e.Node(1).NS, "leases", "delete", want.String()); err != nil {
		t.Fatal(err)
	}
	if err := n.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	leases, err = e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := leases[want]; !ok || a.PublicIP != n.Addr {
		t.Errorf("after restart with its lease deleted: node %s holds no lease for %s from its env file; leases %v", n.Name, want, leases)
	}
	if !strings.Contains(e.AgentLog(n), "found previous env file") {
		t.Errorf("node %s: agent log does not mention the previous env file", n.Name)
	}
}

// etcdClient returns an etcd client for the cluster's etcd whose connections are dialled inside ns: the
// test process stays in the host namespace, where the underlay does not exist. A socket belongs to the
// namespace it was created in, so only the dial needs ns's thread (kerneltest.NS.Do).
func etcdClient(t *testing.T, e *e2e, ns *kerneltest.NS) *clientv3.Client {
	t.Helper()
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := ns.Do(func() error {
			var d net.Dialer
			var err error
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{e.EtcdURL},
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(dial)},
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client via %s: %v", ns.Name, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Scenario: garbage under <prefix>/subnets/ does not hurt a running cluster. On a network of eight
// subnets (10.9.0.0/21, SubnetLen 24, SubnetMin 10.9.0.0) three nodes run; then keys are written that
// name four of the five free subnets but cannot be read (truncated JSON, binary, a value without PublicIP,
// a readable subnet followed by "&" and junk), plus two keys that name no subnet at all. The agents keep
// running (same PIDs), ready, with their two peers and no reconcile error, and keep forwarding; each logs a
// warning naming every garbage key; the keys are left untouched; `weftd leases` still works and lists only
// the three leases; and a node joining afterwards gets the one subnet no key names.
func testEtcdGarbage(t *testing.T) {
	e := startFaultCluster(t, netcluster.Options{
		Backend:         "host-gw",
		Network:         "10.9.0.0/21",
		SubnetLen:       24,
		ConfigArgs:      []string{"--subnet-min", "10.9.0.0"},
		Nodes:           3,
		ExtraAgentFlags: []string{"--reconcile-interval=1s"},
	})
	ctx := e.ctx(t, 60*time.Second)
	nodes := e.Nodes()
	pids := map[string]int{}
	held := map[netip.Prefix]bool{}
	for _, n := range nodes {
		pids[n.Name] = n.AgentPID()
		held[n.Subnet()] = true
	}
	var free []string // key names ("10.9.4.0-24") of the subnets no node holds
	for i := range 8 {
		if p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i), 0}), 24); !held[p] {
			free = append(free, fmt.Sprintf("10.9.%d.0-24", i))
		}
	}
	if len(free) != 5 {
		t.Fatalf("nodes hold %v; want 3 distinct subnets of 10.9.0.0/21", held)
	}
	lastFree, _ := netip.ParsePrefix(strings.Replace(free[4], "-", "/", 1))
	garbage := map[string]string{
		leasePrefix + free[0]:           `{"PublicIP":"192.0.2.77","BackendType":"host-gw"`, // truncated JSON
		leasePrefix + free[1]:           "\x00\xff\xfe garbage \x01",
		leasePrefix + free[2]:           `{"BackendType":"host-gw"}`, // no PublicIP
		leasePrefix + free[3] + "&junk": `{"PublicIP":"192.0.2.78","BackendType":"host-gw"}`,
		leasePrefix + "not-a-subnet":    `{"PublicIP":"192.0.2.79","BackendType":"host-gw"}`,
		leasePrefix + "10.9.300.0-24":   `{"PublicIP":"192.0.2.80","BackendType":"host-gw"}`,
	}
	cli := etcdClient(t, e, e.Node(1).NS)
	revs := map[string]int64{}
	for k, v := range garbage {
		resp, err := cli.Put(ctx, k, v)
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		revs[k] = resp.Header.Revision
	}
	// A readable lease that claims the upper half of node 1's subnet for a stranger: routing it would take
	// half of node 1's containers away. No node may route it (node 1: it overlaps its own subnet; the
	// others: it overlaps node 1's lease and does not fit the config).
	n1Sub := nodes[0].Subnet()
	half := netip.PrefixFrom(netip.AddrFrom4([4]byte{n1Sub.Addr().As4()[0], n1Sub.Addr().As4()[1], n1Sub.Addr().As4()[2], 128}), 25)
	halfKey := leasePrefix + fmt.Sprintf("%s-25", half.Addr())
	if _, err := cli.Put(ctx, halfKey, `{"PublicIP":"192.0.2.81","PublicIPv6":null,"BackendType":"host-gw"}`); err != nil {
		t.Fatalf("put %s: %v", halfKey, err)
	}
	for _, n := range nodes {
		waitFor(t, 10*time.Second, "node "+n.Name+" refuses the lease overlapping node 1's subnet", func() (bool, string) {
			for _, l := range strings.Split(e.AgentLog(n), "\n") {
				if strings.Contains(l, "level=WARN") && strings.Contains(l, "not routing to peer") &&
					strings.Contains(l, fmt.Sprintf("lease=%s-25", half.Addr())) && strings.Contains(l, "overlaps") {
					return true, ""
				}
			}
			return false, "no warning naming " + halfKey
		})
		if routes := routeLines(t, n.NS); hasPrefixLine(routes, half.String()) {
			t.Errorf("node %s routes the overlapping lease %s: %q", n.Name, half, routes)
		}
	}
	untouched := func(when string) {
		t.Helper()
		for k, v := range garbage {
			resp, err := cli.Get(ctx, k)
			if err != nil {
				t.Errorf("%s: get %s: %v", when, k, err)
				continue
			}
			if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != v || resp.Kvs[0].ModRevision != revs[k] {
				t.Errorf("%s: garbage key %s was touched: %v", when, k, resp.Kvs)
			}
		}
	}

	for _, n := range nodes {
		waitFor(t, 10*time.Second, "node "+n.Name+" warns about every garbage key", func() (bool, string) {
			lines := strings.Split(e.AgentLog(n), "\n")
			var missing []string
			for k := range garbage {
				if !slices.ContainsFunc(lines, func(l string) bool {
					return strings.Contains(l, "level=WARN") && strings.Contains(l, "skipping unreadable lease key") &&
						strings.Contains(l, "key="+k+" ")
				}) {
					missing = append(missing, k)
				}
			}
			return len(missing) == 0, fmt.Sprintf("no warning naming %q", missing)
		})
	}
	time.Sleep(3 * time.Second) // a few reconcile rounds with the garbage in place
	for _, n := range nodes {
		if !n.AgentRunning() || n.AgentPID() != pids[n.Name] {
			t.Errorf("node %s: agent pid %d running %t, want pid %d still running: %v", n.Name, n.AgentPID(), n.AgentRunning(), pids[n.Name], n.AgentExit())
		}
		status, _, err := e.HTTPGet(ctx, n, "/readyz")
		peers, perr := e.metric(ctx, n, "peers")
		errs, eerr := e.metricSum(ctx, n, "weft_reconcile_errors_total")
		if u, err := e.metric(ctx, n, "weft_leases_unreadable"); err != nil || u != float64(len(garbage)) {
			t.Errorf("node %s: weft_leases_unreadable %v (%v), want %d", n.Name, u, err, len(garbage))
		}
		if err != nil || status != 200 || perr != nil || peers != 2 || eerr != nil || errs != 0 {
			t.Errorf("node %s: /readyz %d (%v), weft_peers %v (%v), reconcile errors %v (%v); want 200, 2, 0",
				n.Name, status, err, peers, perr, errs, eerr)
		}
		if ours := routeLines(t, n.NS, "proto", "87"); len(ours) != 2 {
			t.Errorf("node %s: proto-87 routes %q, want one per peer (2)", n.Name, ours)
		}
	}
	for i, n := range nodes {
		to := nodes[(i+1)%len(nodes)]
		if err := e.WaitPing(e.ctx(t, 10*time.Second), n, to.ContainerIP()); err != nil {
			t.Errorf("with garbage in etcd: %v", err)
		}
	}
	if out, warnings, err := e.WeftdStderr(ctx, nodes[0].NS, "leases"); err != nil {
		t.Errorf("weftd leases with garbage in etcd: %v", err)
	} else {
		t.Logf("weftd leases:\n%s", out)
		// The operator is told which keys were skipped, on standard error (the table stays parseable).
		for k := range garbage {
			if !strings.Contains(warnings, "skipping unreadable lease key") || !strings.Contains(warnings, "key="+k+" ") {
				t.Errorf("weftd leases does not warn about garbage key %q; stderr:\n%s", k, warnings)
			}
		}
	}
	leases, err := e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := leases[half]; len(leases) != len(nodes)+1 || !ok {
		t.Errorf("weftd leases --json: %d leases, want the %d nodes' and the readable overlapping %s (garbage skipped): %v",
			len(leases), len(nodes), half, leases)
	}
	untouched("before the join")

	n4, err := e.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n4.Subnet() != lastFree {
		t.Errorf("joined node got %s, want %s, the only subnet no key names", n4.Subnet(), lastFree)
	}
	pingAll(t, e, n4, nodes[0])
	untouched("after the join")
	// Last, a readable lease outside the network (overlapping nothing) reaches the backends, which leave it
	// out and count it by kind.
	outsideKey := leasePrefix + "10.10.0.0-24"
	if _, err := cli.Put(ctx, outsideKey, `{"PublicIP":"192.0.2.82","BackendType":"host-gw"}`); err != nil {
		t.Fatalf("put %s: %v", outsideKey, err)
	}
	for _, n := range nodes {
		waitFor(t, 10*time.Second, "node "+n.Name+" counts the lease outside the network", func() (bool, string) {
			v, err := e.metric(ctx, n, `weft_backend_peers_skipped_total{backend="host-gw",reason="outside_network"}`)
			return err == nil && v == 1, fmt.Sprintf("skipped as outside_network: %v (%v), want 1", v, err)
		})
	}
}

// Scenario: a full network. 10.9.0.0/22 with SubnetLen 24 and SubnetMin 10.9.0.0 has four subnets; nodes
// 1-4 take them. Node 5's agent keeps running without a lease: it logs a "network full" error naming the
// network, serves /healthz but answers /readyz with 503 and writes no env file. When node 1 stops and its
// lease is deleted, node 5 takes that subnet on its next try (every 10 s), becomes ready and carries traffic.
func testNetworkFull(t *testing.T) {
	const network = "10.9.0.0/22"
	e := startFaultCluster(t, netcluster.Options{
		Backend:    "host-gw",
		Network:    network,
		SubnetLen:  24,
		ConfigArgs: []string{"--subnet-min", "10.9.0.0"},
		Nodes:      4,
	})
	ctx := e.ctx(t, 90*time.Second)
	var subnets []netip.Prefix
	for _, n := range e.Nodes() {
		subnets = append(subnets, n.Subnet())
	}
	slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	want := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24"), netip.MustParsePrefix("10.9.1.0/24"),
		netip.MustParsePrefix("10.9.2.0/24"), netip.MustParsePrefix("10.9.3.0/24")}
	if !slices.Equal(subnets, want) {
		t.Fatalf("the four nodes hold %v, want %v", subnets, want)
	}

	n5, err := e.CreateNode()
	if err != nil {
		t.Fatal(err)
	}
	if err := n5.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "node 5 logs that the network is full", func() (bool, string) {
		for _, l := range strings.Split(e.AgentLog(n5), "\n") {
			if strings.Contains(l, "level=ERROR") && strings.Contains(l, "network full") && strings.Contains(l, network) {
				return true, ""
			}
		}
		return false, "no ERROR line with \"network full\" and " + network
	})
	time.Sleep(time.Second) // the agent must still be there after the error
	if !n5.AgentRunning() {
		t.Fatalf("node 5's agent exited with a full network: %v", n5.AgentExit())
	}
	if status, _, err := e.HTTPGet(ctx, n5, "/healthz"); err != nil || status != 200 {
		t.Errorf("node 5: /healthz %d (%v), want 200", status, err)
	}
	if status, _, err := e.HTTPGet(ctx, n5, "/readyz"); err != nil || status != 503 {
		t.Errorf("node 5 without a lease: /readyz %d (%v), want 503", status, err)
	}
	if _, err := os.Stat(n5.EnvFile); !os.IsNotExist(err) {
		t.Errorf("node 5 without a lease: env file %s: %v, want none", n5.EnvFile, err)
	}
	if leases, err := e.leases(ctx); err != nil || len(leases) != 4 {
		t.Errorf("leases with a full network: %v (%v), want the 4", leases, err)
	}

	n1 := e.Node(1)
	freed := n1.Subnet()
	if err := n1.StopAgent(syscall.SIGTERM); err != nil {
		t.Error(err)
	}
	if _, err := e.Weftd(ctx, e.Node(2).NS, "leases", "delete", freed.String()); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	if !waitFor(t, 15*time.Second, "node 5 takes the freed "+freed.String(), func() (bool, string) {
		env, err := n5.Lease()
		return err == nil && env.Subnet.Masked() == freed, fmt.Sprintf("env file: %+v (%v)", env, err)
	}) {
		return
	}
	t.Logf("node 5 got %s %s after the delete", freed, time.Since(deleted).Round(100*time.Millisecond))
	if err := n5.Attach(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.Nodes()[1:4] {
		if err := e.WaitPing(e.ctx(t, 20*time.Second), n, n5.ContainerIP()); err != nil {
			t.Errorf("%s → n5 (%s): %v", n.Name, freed, err)
		}
	}
	if err := e.WaitPing(e.ctx(t, 20*time.Second), n5, e.Node(2).ContainerIP()); err != nil {
		t.Errorf("n5 → n2: %v", err)
	}
}

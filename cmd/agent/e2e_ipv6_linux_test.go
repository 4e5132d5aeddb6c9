package main_test

// End-to-end IPv6: real weftd processes in a netns cluster whose underlay is dual stack (192.0.2.0/24 and
// 2001:db8::/64 on one LAN), with a dual-stack or an IPv6-only overlay network, per backend.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/dist/kubetest"
	"github.com/weft-net/weft/subnet"
)

// network6 is the IPv6 overlay network of the IPv6 end-to-end tests.
var network6 = netip.MustParsePrefix("fd00:5::/56")

// expectMTU6 is, per backend on a 1500-byte underlay, the device MTU of each family and FLANNEL_MTU (the
// smaller, so containers' packets of either family fit): vxlan's IPv6 device carries 70 bytes of overhead.
var expectMTU6 = map[string]struct{ v4, v6 int }{"host-gw": {1500, 1500}, "vxlan": {1450, 1430}, "udp": {1472, 1472}}

// expectMTU6Only is FLANNEL_MTU in an IPv6-only network, where the underlay is IPv6 (udp: 40 + 8 bytes).
var expectMTU6Only = map[string]int{"host-gw": 1500, "vxlan": 1430, "udp": 1452}

// TestE2EIPv6 runs, per backend, a dual-stack and an IPv6-only 3-node cluster (udp carries IPv6 over the
// IPv4 underlay in dual stack, over the IPv6 underlay IPv6 only): the env file in flannel's
// order, the leases as flanneld writes them (key, PublicIPv6, BackendV6Data), ICMP and TCP over IPv6 (and
// IPv4 in dual stack) between the containers of every pair, and the MTU of each family: a DF packet of
// FLANNEL_MTU passes, one byte more is refused, and from a container with a larger MTU the path answers
// "packet too big" (IPv6) or "frag needed" (IPv4) with FLANNEL_MTU; a restarted weftd (with and without
// its env file) keeps its subnets, and a stale route of ours in the IPv6 network is removed by reconcile.
func TestE2EIPv6(t *testing.T) {
	requireE2E(t)
	for _, backend := range []string{"host-gw", "vxlan", "udp"} {
		for _, v6only := range []bool{false, true} {
			name := backend + "/" + map[bool]string{false: "dual-stack", true: "ipv6-only"}[v6only]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				testIPv6(t, backend, v6only)
			})
		}
	}
}

func testIPv6(t *testing.T, backend string, v6only bool) {
	args := []string{"--ipv6-network", network6.String()}
	if v6only {
		args = append(args, "--disable-ipv4")
	}
	c := startCluster(t, netcluster.Options{
		Backend: backend, Nodes: 3, ConfigArgs: args, ExtraAgentFlags: []string{"--reconcile-interval=2s"},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	mtus := expectMTU6[backend]
	nodes := c.Nodes()
	t.Run("env-file", func(t *testing.T) {
		for _, n := range nodes {
			mtu := min(mtus.v4, mtus.v6)
			if v6only {
				mtu = expectMTU6Only[backend]
			}
			checkEnv6(t, n, v6only, mtu)
		}
	})
	t.Run("leases", func(t *testing.T) { checkLeases6(t, ctx, c, backend, v6only) })
	t.Run("traffic", func(t *testing.T) {
		allPairs(t, ctx, c, v6only, func(from *netcluster.Node, dst netip.Addr) {
			if out, err := c.Ping(ctx, from, dst, "-c", "3"); err != nil {
				t.Errorf("%s → %s: ping: %v\n%s", from.Name, dst, err, out)
			}
			checkDFPings(t, ctx, c, from, dst)
		})
	})
	if backend == "udp" {
		t.Run("udp-coalesces-ipv6", func(t *testing.T) { checkCoalesce6(t, ctx, c, nodes[0], nodes[1]) })
	}
	t.Run("restart-keeps-subnets", func(t *testing.T) {
		// weftd stopped and started again (the env file says which subnets it had) keeps its subnets, and
		// traffic flows again; without the env file it finds its lease by its public address.
		n := nodes[1]
		before, err := n.Lease()
		if err != nil {
			t.Fatal(err)
		}
		for _, removeEnv := range []bool{false, true} {
			if err := n.StopAgent(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if removeEnv {
				if err := os.Remove(n.EnvFile); err != nil {
					t.Fatal(err)
				}
			}
			if err := n.StartAgent(ctx); err != nil {
				t.Fatal(err)
			}
			if err := n.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			if after, err := n.Lease(); err != nil || after != before {
				t.Errorf("after a restart (env file removed %t): env %+v %v, want %+v", removeEnv, after, err, before)
			}
			wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			if err := c.WaitPing(wctx, nodes[0], n.ContainerIP6()); err != nil {
				t.Errorf("after a restart: %v", err)
			}
			cancel()
		}
	})
	t.Run("stale-ipv6-route-removed", func(t *testing.T) {
		// A route of ours (protocol 87) in the IPv6 network that no lease explains goes at the next
		// reconcile (--reconcile-interval 2s); a foreign one stays.
		n := nodes[0]
		const stale, foreign = "fd00:5:0:ff::/64", "fd00:5:0:fe::/64"
		gw := nodes[1].Addr6.String()
		if _, err := n.NS.IP("-6", "route", "add", stale, "via", gw, "dev", "eth0", "proto", "87"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.NS.IP("-6", "route", "add", foreign, "via", gw, "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, "stale IPv6 route removed by reconcile", func() (bool, string) {
			out, err := n.NS.IP("-6", "route", "show")
			return err == nil && !strings.Contains(out, stale) && strings.Contains(out, foreign), out
		})
	})
	t.Run("node-sends-packet-too-big", func(t *testing.T) {
		// The path's MTU is FLANNEL_MTU for both families: the IPv6 device's (vxlan), and for IPv4 the
		// receiving node's bridge, which has FLANNEL_MTU, below flannel.1's.
		checkTooBig(t, ctx, c, nodes[0], nodes[1].ContainerIP6(), nodes[0].MTU())
		if !v6only {
			checkTooBig(t, ctx, c, nodes[0], nodes[1].ContainerIP(), nodes[0].MTU())
		}
	})
}

// checkCoalesce6 echoes 16 MiB over IPv6 TCP between a's and b's containers (both directions verified) and
// checks that each agent wrote what it received into its TUN as IPv6 super-packets (udp's receive
// coalescing, weft_udp_tun_super_packets_ipv6).
func checkCoalesce6(t *testing.T, ctx context.Context, c *netcluster.Cluster, a, b *netcluster.Node) {
	const key = "weft_udp_tun_super_packets_ipv6"
	count := func(n *netcluster.Node) float64 {
		m, err := c.Metrics(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		v, ok := m[key]
		if !ok {
			t.Fatalf("node %s: no metric %s", n.Name, key)
		}
		return v
	}
	beforeA, beforeB := count(a), count(b)
	if err := c.TCP6(ctx, a, b, 16<<20); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct {
		n      *netcluster.Node
		before float64
	}{{a, beforeA}, {b, beforeB}} {
		if got := count(r.n) - r.before; got < 10 {
			t.Errorf("node %s: %s +%.0f after 16 MiB each way, want ≥ 10 (received IPv6 TCP coalesced)", r.n.Name, key, got)
		}
	}
}

// allPairs checks, from every node's container to every other's, that pings of the container's IPv6 address
// (and IPv4 unless v6only) come back, then runs more on each (nil: nothing), then 256 KiB of TCP over IPv6
// (and IPv4).
func allPairs(t *testing.T, ctx context.Context, c *netcluster.Cluster, v6only bool, more func(from *netcluster.Node, dst netip.Addr)) {
	t.Helper()
	for _, from := range c.Nodes() {
		for _, to := range c.Nodes() {
			if from == to {
				continue
			}
			dsts := []netip.Addr{to.ContainerIP6()}
			tcp := []func(context.Context, *netcluster.Node, *netcluster.Node, int) error{c.TCP6}
			if !v6only {
				dsts, tcp = append(dsts, to.ContainerIP()), append(tcp, c.TCP)
			}
			for _, dst := range dsts {
				wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := c.WaitPing(wctx, from, dst)
				cancel()
				if err != nil {
					t.Errorf("%s → %s %s: %v", from.Name, to.Name, dst, err)
					continue
				}
				if more != nil {
					more(from, dst)
				}
			}
			for _, check := range tcp {
				if err := check(ctx, from, to, 256<<10); err != nil {
					t.Error(err)
				}
			}
		}
	}
}

// checkEnv6 checks node n's env file: flannel's variables in flannel's order, the IPv6 network and subnet
// (and the IPv4 ones unless IPv6 only), and FLANNEL_MTU.
func checkEnv6(t *testing.T, n *netcluster.Node, v6only bool, mtu int) {
	t.Helper()
	raw, err := os.ReadFile(n.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	order := "FLANNEL_NETWORK FLANNEL_SUBNET FLANNEL_IPV6_NETWORK FLANNEL_IPV6_SUBNET FLANNEL_MTU FLANNEL_IPMASQ"
	if v6only {
		order = "FLANNEL_IPV6_NETWORK FLANNEL_IPV6_SUBNET FLANNEL_MTU FLANNEL_IPMASQ"
	}
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^([A-Z0-9_]+)=`).FindAllStringSubmatch(string(raw), -1) {
		names = append(names, m[1])
	}
	if got := strings.Join(names, " "); got != order {
		t.Errorf("node %s: env file variables %q, want %q:\n%s", n.Name, got, order, raw)
	}
	env, err := subnet.ReadEnvFile(n.EnvFile)
	if err != nil {
		t.Fatal(err)
	}
	if env.IPv6Network != network6 || !network6.Contains(env.IPv6Subnet.Addr()) || env.IPv6Subnet.Bits() != 64 ||
		env.IPv6Subnet.Addr() != env.IPv6Subnet.Masked().Addr().Next() || env.MTU != mtu || env.Network.IsValid() == v6only {
		t.Errorf("node %s: env %+v, want IPv6 network %s, a /64 subnet's first address, MTU %d (IPv6 only %t)", n.Name, env, network6, mtu, v6only)
	}
}

// checkLeases6 checks the leases in etcd as flanneld writes them: the key (with "0.0.0.0-0" IPv6 only),
// PublicIPv6 the node's IPv6 underlay address, and for vxlan a VtepMAC in BackendV6Data (and in BackendData
// only in dual stack).
func checkLeases6(t *testing.T, ctx context.Context, c *netcluster.Cluster, backend string, v6only bool) {
	out, err := c.Weftd(ctx, c.Node(1).NS, "leases", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var rows []struct {
		Key        string
		IPv6Subnet string
		Attrs      subnet.Attrs
	}
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("weftd leases --json: %v\n%s", err, out)
	}
	byPub := map[netip.Addr]bool{}
	for _, r := range rows {
		byPub[r.Attrs.PublicIPv6] = true
		v4, v6, err := subnet.ParseKeyName(r.Key)
		if err != nil || !v6.IsValid() || v4.IsValid() == v6only || v6.String() != r.IPv6Subnet {
			t.Errorf("lease %s: key %v, IPv6 subnet %q (IPv6 only %t)", r.Key, err, r.IPv6Subnet, v6only)
		}
		if v6only && !r.Attrs.PublicIP.IsUnspecified() {
			t.Errorf("lease %s: PublicIP %s, want 0.0.0.0 as flanneld writes it", r.Key, r.Attrs.PublicIP)
		}
		if backend == "vxlan" {
			var d struct {
				VNI     int
				VtepMAC string
			}
			if err := json.Unmarshal(r.Attrs.BackendV6Data, &d); err != nil || d.VNI != 1 || d.VtepMAC == "" {
				t.Errorf("lease %s: BackendV6Data %s: %v", r.Key, r.Attrs.BackendV6Data, err)
			}
			if (len(r.Attrs.BackendData) == 0) != v6only {
				t.Errorf("lease %s: BackendData %s (IPv6 only %t)", r.Key, r.Attrs.BackendData, v6only)
			}
		}
	}
	for _, n := range c.Nodes() {
		if !byPub[n.Addr6] {
			t.Errorf("no lease with PublicIPv6 %s (node %s):\n%s", n.Addr6, n.Name, out)
		}
	}
}

// checkDFPings sends from from's container a DF ping of FLANNEL_MTU to dst, which must pass, and one of
// FLANNEL_MTU + 1, which the container's own MTU must refuse.
func checkDFPings(t *testing.T, ctx context.Context, c *netcluster.Cluster, from *netcluster.Node, dst netip.Addr) {
	t.Helper()
	mtu, hdr := from.MTU(), 28
	if dst.Is6() {
		hdr = 48
	}
	if out, err := c.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-hdr)); err != nil {
		t.Errorf("%s → %s: DF ping of %d bytes (the MTU) failed: %v\n%s", from.Name, dst, mtu, err, out)
	}
	out, err := c.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-hdr+1))
	if err == nil || !(strings.Contains(out, "message too long") || strings.Contains(out, "too big") || strings.Contains(out, "Frag needed")) {
		t.Errorf("%s → %s: DF ping of %d bytes (MTU+1): want it refused, got err %v:\n%s", from.Name, dst, mtu+1, err, out)
	}
}

// checkTooBig raises the MTU of from's container link to 9000 and sends a DF ping one byte larger than the
// path MTU for dst's family (devMTU): a node must answer with "packet too big" (IPv6) or "frag needed"
// (IPv4) naming devMTU, and a ping of devMTU must pass.
func checkTooBig(t *testing.T, ctx context.Context, c *netcluster.Cluster, from *netcluster.Node, dst netip.Addr, devMTU int) {
	t.Helper()
	mtu := from.MTU()
	set := func(m string) error {
		if _, err := from.Container().IP("link", "set", "eth0", "mtu", m); err != nil {
			return err
		}
		_, err := from.NS.IP("link", "set", "veth-c1", "mtu", m)
		return err
	}
	if err := set("9000"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := set(fmt.Sprint(mtu)); err != nil {
			t.Errorf("restore container MTU: %v", err)
		}
	}()
	hdr, want := 28, []string{fmt.Sprintf("mtu = %d", devMTU)}
	if dst.Is6() {
		hdr, want = 48, []string{fmt.Sprintf("mtu=%d", devMTU), fmt.Sprintf("mtu = %d", devMTU)}
	}
	if out, err := c.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(devMTU-hdr)); err != nil {
		t.Errorf("%s → %s: DF ping of %d bytes (the device MTU) failed: %v\n%s", from.Name, dst, devMTU, err, out)
	}
	out, err := c.Ping(ctx, from, dst, "-c", "2", "-M", "do", "-s", fmt.Sprint(devMTU-hdr+1))
	if err == nil || !(strings.Contains(out, want[0]) || strings.Contains(out, want[len(want)-1])) {
		t.Errorf("%s → %s: DF ping of %d bytes from a container with MTU 9000: want the node's error with %q, got err %v:\n%s",
			from.Name, dst, devMTU+1, want[0], err, out)
	}
}

// TestE2EKubeIPv6 runs kube mode (--kube-subnet-mgr against a real kube-apiserver) with vxlan in a
// dual-stack and an IPv6-only network: Nodes with an IPv6 pod CIDR (and an IPv4 one in dual stack), and
// ICMPv6 and TCP over IPv6 (and IPv4 in dual stack) between the containers of every pair.
func TestE2EKubeIPv6(t *testing.T) {
	requireE2E(t)
	kubetest.Require(t)
	for _, v6only := range []bool{false, true} {
		t.Run(map[bool]string{false: "dual-stack", true: "ipv6-only"}[v6only], func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			k := &kubeE2E{dir: dir, kubeconfig: filepath.Join(dir, "kubeconfig"), netConf: filepath.Join(dir, "net-conf.json"),
				flanneld: map[string]bool{}, image: map[string]bool{}}
			k.conf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
			k.podCIDRs = func(i int) []string {
				return []string{fmt.Sprintf("10.244.%d.0/24", i), fmt.Sprintf("fd00:10:244:%x::/64", i)}
			}
			if v6only {
				k.conf = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
				k.podCIDRs = func(i int) []string { return []string{fmt.Sprintf("fd00:10:244:%x::/64", i)} }
			}
			c := startCluster(t, netcluster.Options{
				Backend: "vxlan", Network: "10.244.0.0/16", Nodes: 3, Dir: dir,
				AgentStore: k.agentStore, ReadyPath: k.readyPath, Setup: k.setup, Timeout: 90 * time.Second,
			})
			k.Cluster = c
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			allPairs(t, ctx, c, v6only, nil)
		})
	}
}

// TestE2EFlanneldIPv6 proves IPv6 compatibility with flannel's own agent (flanneld v0.28.10, etcd mode)
// on vxlan and host-gw in a dual-stack network: node n3 runs flanneld beside two weftd nodes; each side reads
// the other's dual-stack lease (key, PublicIPv6, and for vxlan BackendV6Data), containers exchange ICMPv6,
// ICMP and TCP over both families on every ordered pair, and after n3 moves to weftd it keeps both subnets
// and traffic flows again.
func TestE2EFlanneldIPv6(t *testing.T) {
	requireE2E(t)
	requireFlanneld(t)
	for _, backend := range []string{"vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			c, switchAgent := startMixed(t, backend, "--ipv6-network", network6.String())
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
			defer cancel()
			checkLeases6(t, ctx, c, backend, false)
			allPairs(t, ctx, c, false, nil)

			f := c.Node(3)
			before, err := f.Lease()
			if err != nil {
				t.Fatal(err)
			}
			switchAgent(ctx, false)
			if after, err := f.Lease(); err != nil || after.Subnet != before.Subnet || after.IPv6Subnet != before.IPv6Subnet {
				t.Errorf("env file after the switch to weftd: %+v, %v; want flanneld's subnets %s and %s", after, err, before.Subnet, before.IPv6Subnet)
			}
			allPairs(t, ctx, c, false, nil)
		})
	}
}

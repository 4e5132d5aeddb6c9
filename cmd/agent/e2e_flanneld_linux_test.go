package main_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/dist/kubetest"
)

// TestE2EFlanneld proves compatibility with flannel's own agent in etcd mode, per backend: node n3 runs
// flanneld v0.28.10 (built by make kube-bin) beside two weftd nodes. Each side reads the other's lease, and
// containers exchange ICMP, DF pings at the MTU and TCP transfers verified byte for byte on every ordered
// pair. On udp the weftd nodes have every offload on (UDP GSO on send, GRO on receive, TUN super-packets)
// while flanneld's C proxy reads and writes one datagram per call, so each GSO datagram must reach it as one
// packet and its datagrams must pass weftd's checks. Then n3 migrates as an operator would, node by node:
// flanneld stops, weftd starts with the same subnet file and keeps the subnet, and traffic flows again.
func TestE2EFlanneld(t *testing.T) {
	requireE2E(t)
	requireFlanneld(t)
	for _, backend := range []string{"udp", "vxlan", "host-gw"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testFlanneld(t, backend)
		})
	}
}

func testFlanneld(t *testing.T, backend string) {
	c, switchAgent := startMixed(t, backend)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	e := &e2e{Cluster: c, backend: backend}
	f := c.Node(3)

	// n3's lease was written by flanneld: no WeftNodeID, and flannel's backend type (its udp backend writes
	// none).
	leases, err := e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantType := map[string]string{"udp": "", "vxlan": "vxlan", "host-gw": "host-gw"}[backend]
	if a, ok := leases[f.Subnet()]; !ok || a.NodeID != "" || a.BackendType != wantType || a.PublicIP != f.Addr {
		t.Errorf("flanneld's lease for %s: %+v (found %v), want BackendType %q, PublicIP %s, no WeftNodeID", f.Subnet(), a, ok, wantType, f.Addr)
	}
	if backend == "udp" { // the weftd nodes must really send with GSO and read with GRO
		for _, n := range c.Nodes()[:2] {
			for _, feat := range []string{"gso", "gro"} {
				if v, err := e.metric(ctx, n, `offload{feature="`+feat+`"}`); err != nil || v != 1 {
					t.Errorf("node %s: offload %s in use = %v (%v), want 1", n.Name, feat, v, err)
				}
			}
		}
	}
	flanneldPairs(t, ctx, e)
	if backend == "udp" { // flanneld's datagrams passed weftd's checks
		for _, n := range c.Nodes()[:2] {
			for _, k := range []string{"drop_malformed", "drop_bad_inner_source", "rx_trailing"} {
				if v, err := e.metric(ctx, n, k); err != nil || v != 0 {
					t.Errorf("node %s: %s = %v (%v), want 0", n.Name, k, v, err)
				}
			}
		}
	}

	// Migration: flanneld stops, weftd takes its place with the same subnet file and keeps the subnet.
	subnetBefore := f.Subnet()
	switchAgent(ctx, false)
	if env, err := f.Lease(); err != nil || env.Subnet.Masked() != subnetBefore {
		t.Errorf("env file after the switch to weftd: %+v, %v; want flanneld's subnet %s", env, err, subnetBefore)
	}
	flanneldPairs(t, ctx, e)
	if backend == "vxlan" { // weftd's peer routes go through nexthop objects (--route-nexthops)
		if r, _ := f.NS.IP("route", "show", "dev", "flannel.1", "proto", "87"); strings.Count(r, "nhid") != 2 {
			t.Errorf("n3 under weftd: want 2 peer routes through nexthop objects:\n%s", r)
		}
	}

	// And back, as an operator rolling back would: weftd stops, flanneld starts with the same subnet file and
	// takes over weftd's kernel state (routes through nexthop objects on vxlan), and traffic flows again;
	// then a peer leaving must take its route with it, which flanneld deletes by gateway.
	switchAgent(ctx, true)
	if env, err := f.Lease(); err != nil || env.Subnet.Masked() != subnetBefore {
		t.Errorf("env file after the switch back to flanneld: %+v, %v; want subnet %s", env, err, subnetBefore)
	}
	flanneldPairs(t, ctx, e)
	if r, _ := f.NS.IP("route", "show", "proto", "87"); strings.Contains(r, "nhid") {
		t.Errorf("n3 under flanneld still has routes through weftd's nexthop objects:\n%s", r)
	}
	gone := c.Node(2)
	sn := e.sub(gone)
	if err := gone.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Weftd(ctx, c.Node(1).NS, "leases", "delete", sn.String()); err != nil {
		t.Fatalf("weftd leases delete %s: %v", sn, err)
	}
	waitFor(t, 30*time.Second, "n3 under flanneld forgets "+sn.String(), func() (bool, string) {
		r, _ := f.NS.IP("route", "show", sn.String())
		return strings.TrimSpace(r) == "", "route: " + r
	})
}

// requireFlanneld skips (fails with WEFT_E2E=1) without flannel's flanneld, built by make kube-bin.
func requireFlanneld(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(kubetest.FlanneldBin()); err != nil {
		if kerneltest.E2E() {
			t.Fatalf("WEFT_E2E=1 but flanneld is missing (make kube-bin, dist/kubetest/build-flanneld.sh): %v", err)
		}
		t.Skipf("flanneld is missing (make kube-bin): %v", err)
	}
}

// startMixed starts a 3-node etcd-mode cluster of backend whose node n3 runs flanneld and the others weftd
// (configArgs go to `weftd config set`). switchAgent is the migration step: n3's agent stops and weftd
// (or, toFlanneld, flanneld) starts in its place with the same subnet file, and is ready.
func startMixed(t *testing.T, backend string, configArgs ...string) (c *netcluster.Cluster, switchAgent func(ctx context.Context, toFlanneld bool)) {
	t.Helper()
	const flannelNode = "n3"
	var flanneld atomic.Bool // n3 runs flanneld (until the migration)
	flanneld.Store(true)
	etcdURL := fmt.Sprintf("http://%s:%d", netcluster.EtcdAddr, netcluster.EtcdPort)
	c = startCluster(t, netcluster.Options{
		Backend:    backend,
		Nodes:      3,
		ConfigArgs: configArgs,
		AgentStore: func(n *netcluster.Node) []string {
			if n.Name == flannelNode && flanneld.Load() {
				return []string{kubetest.FlanneldBin(), "--etcd-endpoints", etcdURL}
			}
			return []string{weftdBin, "--etcd-endpoints", etcdURL}
		},
		ReadyPath: func(n *netcluster.Node) string {
			if n.Name == flannelNode && flanneld.Load() {
				return "/healthz" // flanneld serves no /readyz
			}
			return "/readyz"
		},
	})
	return c, func(ctx context.Context, toFlanneld bool) {
		t.Helper()
		f := c.Node(3)
		if err := f.StopAgent(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		flanneld.Store(toFlanneld)
		if err := f.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// flanneldPairs checks ICMP, a DF ping at the MTU and an 8 MiB TCP transfer each way on every ordered pair.
func flanneldPairs(t *testing.T, ctx context.Context, e *e2e) {
	t.Helper()
	for _, from := range e.Nodes() {
		for _, to := range e.Nodes() {
			if from == to {
				continue
			}
			dst := to.ContainerIP()
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			err := e.WaitPing(wctx, from, dst)
			wcancel()
			if err != nil {
				t.Errorf("%s → %s: %v", from.Name, to.Name, err)
				continue
			}
			out, _ := e.Ping(ctx, from, dst, "-c", "3")
			if r, err := netcluster.ParsePing(out); err != nil || r.Received != r.Transmitted {
				t.Errorf("%s → %s: ping: %v %s", from.Name, to.Name, err, out)
			}
			mtu := min(from.MTU(), to.MTU())
			if out, err := e.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-28)); err != nil {
				t.Errorf("%s → %s: DF ping of %d bytes (the MTU) failed: %v %s", from.Name, to.Name, mtu, err, out)
			}
			if err := e.TCP(ctx, from, to, 8<<20); err != nil {
				t.Errorf("%s → %s: %v", from.Name, to.Name, err)
			}
		}
	}
}

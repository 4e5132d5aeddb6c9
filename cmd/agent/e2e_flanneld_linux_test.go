package main_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/dist/kubetest"
)

// TestE2EFlanneldUDP proves the udp wire format against flannel's own udp backend: a node running flanneld
// v0.28.10 in etcd mode (its C proxy reads and writes one datagram per call, with no offloads) joins two
// weftd udp nodes whose offloads are on (UDP GSO on send, GRO on receive, TUN super-packets). Each side reads
// the other's lease, and containers exchange ICMP, DF pings at the MTU and TCP transfers (verified byte for
// byte) on every ordered pair, so every datagram weftd sends with GSO reaches flanneld as one packet and
// flanneld's datagrams pass weftd's checks.
func TestE2EFlanneldUDP(t *testing.T) {
	requireE2E(t)
	if _, err := os.Stat(kubetest.FlanneldBin()); err != nil {
		if kerneltest.E2E() {
			t.Fatalf("WEFT_E2E=1 but flanneld is missing (make kube-bin, dist/kubetest/build-flanneld.sh): %v", err)
		}
		t.Skipf("flanneld is missing (make kube-bin): %v", err)
	}
	dir := t.TempDir()
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("WEFT_E2E_LOGS") == "1" {
			dumpLogs(t, dir)
		}
	})
	const flannelNode = "n3"
	etcdURL := "http://" + netcluster.EtcdAddr.String() + fmt.Sprintf(":%d", netcluster.EtcdPort)
	c, err := netcluster.Start(t.Context(), netcluster.Options{
		Prefix:     kerneltest.Prefix(),
		Backend:    "udp",
		Nodes:      3,
		Weftd:      weftdBin,
		ClusterBin: cluBin,
		Dir:        dir,
		AgentStore: func(n *netcluster.Node) []string {
			if n.Name == flannelNode {
				return []string{kubetest.FlanneldBin(), "--etcd-endpoints", etcdURL}
			}
			return []string{weftdBin, "--etcd-endpoints", etcdURL}
		},
		ReadyPath: func(n *netcluster.Node) string {
			if n.Name == flannelNode {
				return "/healthz" // flanneld serves no /readyz
			}
			return "/readyz"
		},
		Log: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatalf("start the mixed udp cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close cluster: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	e := &e2e{Cluster: c, backend: "udp", dir: dir}

	// n3's lease was written by flanneld: no WeftNodeID, and flannel's udp backend writes no BackendType.
	leases, err := e.leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := leases[c.Node(3).Subnet()]; !ok || a.NodeID != "" || a.BackendType != "" || a.PublicIP != c.Node(3).Addr {
		t.Errorf("flanneld's lease for %s: %+v (found %v), want no BackendType, PublicIP %s, no WeftNodeID", c.Node(3).Subnet(), a, ok, c.Node(3).Addr)
	}

	// The weftd nodes must really send with GSO and read with GRO, or this test proves nothing about them.
	for _, n := range c.Nodes() {
		if n.Name == flannelNode {
			continue
		}
		for _, f := range []string{"gso", "gro"} {
			if v, err := e.metric(ctx, n, `offload{feature="`+f+`"}`); err != nil || v != 1 {
				t.Errorf("node %s: offload %s in use = %v (%v), want 1", n.Name, f, v, err)
			}
		}
	}
	for _, from := range c.Nodes() {
		for _, to := range c.Nodes() {
			if from == to {
				continue
			}
			dst := to.ContainerIP()
			wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.WaitPing(wctx, from, dst)
			wcancel()
			if err != nil {
				t.Errorf("%s → %s: %v", from.Name, to.Name, err)
				continue
			}
			out, _ := c.Ping(ctx, from, dst, "-c", "3")
			if r, err := netcluster.ParsePing(out); err != nil || r.Received != r.Transmitted {
				t.Errorf("%s → %s: ping: %v %s", from.Name, to.Name, err, out)
			}
			// Both ends have MTU 1472 (flanneld: eth0's 1500 − 28); a DF ping at it crosses in one datagram.
			mtu := min(from.MTU(), to.MTU())
			if out, err := c.Ping(ctx, from, dst, "-c", "1", "-M", "do", "-s", fmt.Sprint(mtu-28)); err != nil {
				t.Errorf("%s → %s: DF ping of %d bytes (the MTU) failed: %v %s", from.Name, to.Name, mtu, err, out)
			}
			// 8 MiB each way: long enough for full-size GSO sends and GRO runs in both directions.
			if err := c.TCP(ctx, from, to, 8<<20); err != nil {
				t.Errorf("%s → %s: %v", from.Name, to.Name, err)
			}
		}
	}
	// flanneld's datagrams pass weftd's checks: none of them was dropped as malformed or spoofed.
	for _, n := range c.Nodes() {
		if n.Name == flannelNode {
			continue
		}
		for _, k := range []string{"drop_malformed", "drop_bad_inner_source", "rx_trailing"} {
			if v, err := e.metric(ctx, n, k); err != nil || v != 0 {
				t.Errorf("node %s: %s = %v (%v), want 0", n.Name, k, v, err)
			}
		}
	}
}

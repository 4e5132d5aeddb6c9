package main_test

// End-to-end: real weftd processes (vxlan) in a netns cluster against a 3-member etcd whose members all stop
// for 60 s. Gate, logs and helpers (startFaultCluster, waitFor, kernelMentions, metric) as in
// e2e_faults_linux_test.go and e2e_linux_test.go.

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// TestE2EEtcdClusterDown stops all three members of the cluster's etcd for 60 s (killed at once, then
// started again with their data) under two nodes of real weftd (vxlan, the default 24 h lease TTL). A continuous
// ping between the nodes' containers loses no echo; neither agent restarts, reports its lease lost or
// acquires one again; neither drops its peer meanwhile (weft_peers and the kernel's route, neighbour and FDB
// entry stay); and a node that joins after the members are back is programmed on both within 10 s of
// holding its lease.
func TestE2EEtcdClusterDown(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	const outage = 60 * time.Second
	e := startFaultCluster(t, netcluster.Options{Backend: "vxlan", Nodes: 2, EtcdMembers: 3})
	ctx := e.ctx(t, 3*time.Minute)
	n1, n2 := e.Node(1), e.Node(2)
	nodes := []*netcluster.Node{n1, n2}
	pids := agentPIDs(nodes)
	ping, err := e.StartPing(n1, n2.ContainerIP(), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if err := e.KillEtcd(); err != nil {
		t.Fatal(err)
	}
	// Each agent keeps its peer all along: in its view and in the kernel.
	for time.Since(stopped) < outage {
		for _, pair := range [][2]*netcluster.Node{{n1, n2}, {n2, n1}} {
			n, peer := pair[0], pair[1]
			if peers, err := e.metric(ctx, n, "peers"); err != nil || peers != 1 {
				t.Errorf("%.0f s into the etcd outage: node %s: weft_peers %v (%v), want 1", time.Since(stopped).Seconds(), n.Name, peers, err)
			}
			if got := e.kernelMentions(n, peer.Subnet(), peer.Addr); len(got) != 3 {
				t.Errorf("%.0f s into the etcd outage: node %s: state for %s: %q, want route, neighbour and FDB entry", time.Since(stopped).Seconds(), n.Name, peer.Subnet(), got)
			}
		}
		time.Sleep(2 * time.Second)
	}
	if err := e.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd's three members back after %.1f s", time.Since(stopped).Seconds())

	// A lease written after recovery: a node joins; the others program it.
	n3, err := e.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := time.Now() // AddNode returns once n3 holds its lease and is ready
	for _, n := range nodes {
		waitFor(t, 10*time.Second, fmt.Sprintf("node %s programs %s (joined after the outage)", n.Name, n3.Subnet()), func() (bool, string) {
			got := e.kernelMentions(n, n3.Subnet(), n3.Addr)
			return len(got) == 3, fmt.Sprintf("kernel state %q", got)
		})
	}
	t.Logf("the new lease %s programmed on both nodes %.1f s after it was held", n3.Subnet(), time.Since(held).Seconds())
	for _, n := range nodes {
		if err := e.WaitPing(e.ctx(t, 10*time.Second), n, n3.ContainerIP()); err != nil {
			t.Errorf("after the outage, %s → %s: %v", n.Name, n3.Name, err)
		}
	}

	r, err := ping.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ping %s → %s across the outage of every etcd member: %s", n1.Name, n2.Name, r)
	if min := int(outage / (50 * time.Millisecond) * 9 / 10); r.Transmitted < min || r.Lost() > 0 {
		t.Errorf("continuous ping across the etcd outage: %s, want at least %d sent and none lost", r, min)
	}
	checkSameAgents(t, nodes, pids)
	for _, n := range nodes {
		if env, err := n.Lease(); err != nil || env.Subnet.Masked() != n.Subnet() {
			t.Errorf("node %s: env file after the outage: subnet %s (%v), want %s", n.Name, env.Subnet, err, n.Subnet())
		}
		log := e.AgentLog(n)
		if c := strings.Count(log, `msg="lease acquired"`); c != 1 || strings.Contains(log, "lease lost") {
			t.Errorf("node %s: the log has %d \"lease acquired\" lines (want 1) or a lost lease", n.Name, c)
		}
	}
}

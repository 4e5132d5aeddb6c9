package main_test

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestE2EChangesNotAppliedLive checks the changes weftd applies by starting again, never by mixing old and
// new: a changed network config, and a changed address of the external interface. Each makes weftd log
// what changed and exit non-zero (its supervisor restarts it); for the config it first removes the old
// network's routes. Started again, it leases in the new network (the env file says so) or publishes the new
// address.
func TestE2EChangesNotAppliedLive(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	c := startHostGW2(t)
	ctx := t.Context()
	n1, n2 := c.Node(1), c.Node(2)
	routes := func() string { out, _ := n1.NS.IP("route", "show", "proto", "87"); return out }
	exited := func(what string) {
		t.Helper()
		for _, n := range c.Nodes() {
			waitFor(t, 15*time.Second, n.Name+" weftd exits for "+what, func() (bool, string) {
				return !n.AgentRunning(), "still running"
			})
			if err := n.AgentExit(); err == nil {
				t.Errorf("%s: weftd exited with status 0 for %s; want non-zero", n.Name, what)
			}
		}
	}

	// 1. The network config changes.
	if _, err := c.Weftd(ctx, n1.NS, "config", "set", "--network", "10.8.0.0/16", "--backend", "host-gw"); err != nil {
		t.Fatal(err)
	}
	exited("a config change")
	if log := c.AgentLog(n1); !strings.Contains(log, "Network 10.5.0.0/16 -> 10.8.0.0/16") {
		t.Errorf("n1's log does not say what changed:\n%s", log)
	}
	if r := routes(); strings.Contains(r, "10.5.") {
		t.Errorf("n1 kept routes of the old network:\n%s", r)
	}
	for _, n := range c.Nodes() {
		if err := n.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range c.Nodes() {
		waitFor(t, 30*time.Second, n.Name+" leases in the new network", func() (bool, string) {
			env, err := n.Lease()
			if err != nil {
				return false, err.Error()
			}
			return env.Network.String() == "10.8.0.0/16" && strings.HasPrefix(env.Subnet.String(), "10.8."),
				fmt.Sprintf("FLANNEL_NETWORK=%s FLANNEL_SUBNET=%s", env.Network, env.Subnet)
		})
	}
	waitFor(t, 20*time.Second, "n1 routes n2's new subnet", func() (bool, string) {
		env, _ := n2.Lease()
		r := routes()
		return strings.Contains(r, fmt.Sprintf("%s via %s dev eth0", env.Subnet.Masked(), n2.Addr)), r
	})

	// 2. n1's external interface gets another address.
	// (Deleting the primary address first: deleting it after would take the secondary along.)
	n1.NS.MustIP(t, "addr", "del", n1.Addr.String()+"/24", "dev", "eth0")
	n1.NS.MustIP(t, "addr", "add", "192.0.2.31/24", "dev", "eth0")
	// etcd's connection from the old address stays open until n1 can answer it: give the address back at
	// the end, so that etcd stops promptly.
	t.Cleanup(func() { n1.NS.IP("addr", "add", n1.Addr.String()+"/24", "dev", "eth0") })
	waitFor(t, 20*time.Second, "n1 weftd exits for an address change", func() (bool, string) {
		return !n1.AgentRunning(), "still running"
	})
	if err := n1.AgentExit(); err == nil {
		t.Errorf("n1: weftd exited with status 0 for an address change; want non-zero")
	}
	if log := c.AgentLog(n1); !strings.Contains(log, "external interface changed") || !strings.Contains(log, "192.0.2.31") {
		t.Errorf("n1's log does not say the interface changed:\n%s", log)
	}
	if err := n1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "n1's lease publishes the new address", func() (bool, string) {
		out, err := c.Weftd(ctx, n2.NS, "leases")
		return err == nil && strings.Contains(out, "192.0.2.31"), out
	})
}

package main_test

// End-to-end test of the packet filter rules (compat.md §8): a vxlan cluster whose agents run with
// --ip-masq, and a plain host on the underlay. Uses TestMain, buildBins and the netcluster harness of
// e2e_linux_test.go.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
)

func TestE2EMasq(t *testing.T) {
	requireE2E(t)
	kerneltest.RequireCommand(t, "iptables")
	c := startMasqCluster(t, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	n1, n2 := c.Node(1), c.Node(2)
	network := netip.MustParsePrefix(netcluster.DefaultNetwork)
	randomFully := randomPorts(t, n1, false)

	// Ready, FLANNEL_IPMASQ=true, and exactly the planned chains and jumps in each node's namespace.
	for _, n := range []*netcluster.Node{n1, n2} {
		if status, body, err := c.HTTPGet(ctx, n, "/readyz"); err != nil || status != 200 {
			t.Errorf("node %s: /readyz %d %q %v, want 200", n.Name, status, body, err)
		}
		if env, err := n.Lease(); err != nil || !env.IPMasq {
			t.Errorf("node %s: env file: IPMasq %t (%v), want FLANNEL_IPMASQ=true", n.Name, env.IPMasq, err)
		}
		expectRules(t, n, kernel.MasqRules(network, n.Subnet(), randomFully))
		expectRules(t, n, kernel.ForwardRules(network))
	}

	// A container reaching a plain host on the underlay is masqueraded; container to container is not.
	expectMasq(t, ctx, addOut(t, c), n1, n2)

	// A rule and a jump deleted behind the agent's back come back within the resync interval.
	masq1 := kernel.MasqRules(network, n1.Subnet(), randomFully)
	n1.NS.MustExec(t, "iptables", "-t", "nat", "-D", kernel.MasqChainName, "5")
	n1.NS.MustExec(t, append([]string{"iptables", "-t", "filter", "-D", "FORWARD"}, kernel.ForwardRules(network).Jump.Spec...)...)
	waitFor(t, 10*time.Second, "rules restored on "+n1.Name, func() (bool, string) {
		nat, fwd := chainLines(n1, masq1.Table, masq1.Name), chainLines(n1, "filter", "FORWARD")
		return slices.Equal(nat, masq1.Lines()) && slices.Contains(fwd, kernel.ForwardRules(network).Jump.String()),
			fmt.Sprintf("%s:\n%s\nFORWARD:\n%s", masq1.Name, strings.Join(nat, "\n"), strings.Join(fwd, "\n"))
	})

	// --ip-masq=false after a restart: the env file says so, the nat chain is left as it was (flanneld
	// leaves it too), and the forward rules are still kept.
	if err := n2.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	n2.SetExtraFlags("--ip-masq=false")
	if err := n2.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n2.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if env, err := n2.Lease(); err != nil || env.IPMasq {
		t.Errorf("node %s with --ip-masq=false: env file IPMasq %t (%v), want false", n2.Name, env.IPMasq, err)
	}
	expectRules(t, n2, kernel.MasqRules(network, n2.Subnet(), randomFully))
	expectRules(t, n2, kernel.ForwardRules(network))
}

// TestE2EMasqIPv6IPTables: with a dual-stack network config and the iptables engine, the agent keeps
// flanneld's chains in ip6tables too, for the IPv6 network and its IPv6 subnet, and restores a rule deleted
// behind its back. (IPv6 traffic is checked by TestE2EIPv6.)
func TestE2EMasqIPv6IPTables(t *testing.T) {
	requireE2E(t)
	kerneltest.RequireCommand(t, "iptables", "ip6tables")
	c := startMasqCluster(t, 1, "--ipv6-network", "fd00:5::/56")
	n1 := c.Node(1)
	env, err := n1.Lease()
	if err != nil || !env.IPv6Subnet.IsValid() {
		t.Fatalf("node %s: env file: %+v %v, want an IPv6 subnet", n1.Name, env, err)
	}
	network, network6 := netip.MustParsePrefix(netcluster.DefaultNetwork), netip.MustParsePrefix("fd00:5::/56")
	var rf6 bool
	if err := n1.NS.Do(func() error {
		ipt, err := kernel.NewIPTables(true)
		rf6 = err == nil && ipt.HasRandomFully()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	masq6 := kernel.MasqRules(network6, env.IPv6Subnet, rf6)
	expectRules(t, n1, kernel.MasqRules(network, n1.Subnet(), randomPorts(t, n1, false)))
	expectRules(t, n1, kernel.ForwardRules(network))
	expectRulesOf(t, n1, "ip6tables", masq6)
	expectRulesOf(t, n1, "ip6tables", kernel.ForwardRules(network6))

	n1.NS.MustExec(t, "ip6tables", "-t", "nat", "-D", kernel.MasqChainName, "5")
	waitFor(t, 10*time.Second, "ip6tables rules restored on "+n1.Name, func() (bool, string) {
		got := chainLinesOf(n1, "ip6tables", masq6.Table, masq6.Name)
		return slices.Equal(got, masq6.Lines()), strings.Join(got, "\n")
	})
}

// hasRandomFully reports whether iptables in n's namespace supports --random-fully.
func hasRandomFully(t *testing.T, n *netcluster.Node) bool { return randomPorts(t, n, false) }

// chainLines returns the -A lines of `iptables -t table -S chain` in n's namespace.
func chainLines(n *netcluster.Node, table, chain string) []string {
	return chainLinesOf(n, "iptables", table, chain)
}

// chainLinesOf returns the -A lines of `<ipt> -t table -S chain` in n's namespace (ipt: iptables or
// ip6tables).
func chainLinesOf(n *netcluster.Node, ipt, table, chain string) []string {
	out, err := n.NS.Exec(ipt, "-t", table, "-S", chain)
	if err != nil {
		return []string{err.Error()}
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A ") {
			lines = append(lines, l)
		}
	}
	return lines
}

// expectRules checks that n's chain holds exactly the plan and that its jump is there once.
func expectRules(t *testing.T, n *netcluster.Node, want kernel.Chain) {
	t.Helper()
	expectRulesOf(t, n, "iptables", want)
}

// expectRulesOf is expectRules with ipt (iptables or ip6tables).
func expectRulesOf(t *testing.T, n *netcluster.Node, ipt string, want kernel.Chain) {
	t.Helper()
	if got := chainLinesOf(n, ipt, want.Table, want.Name); !slices.Equal(got, want.Lines()) {
		t.Errorf("node %s: %s -t %s -S %s:\n%s\nwant\n%s", n.Name, ipt, want.Table, want.Name,
			strings.Join(got, "\n"), strings.Join(want.Lines(), "\n"))
	}
	jumps := 0
	for _, l := range chainLinesOf(n, ipt, want.Table, want.Jump.Chain) {
		if l == want.Jump.String() {
			jumps++
		}
	}
	if jumps != 1 {
		t.Errorf("node %s: %d jumps %q in %s, want 1", n.Name, jumps, want.Jump, want.Jump.Chain)
	}
}

// peerSeen opens a TCP listener on addr inside the server namespace, connects to it from inside the client
// namespace, and returns the source address the server saw.
func peerSeen(ctx context.Context, client, server *kerneltest.NS, addr netip.Addr) (netip.Addr, error) {
	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(addr, 0).String())
		return err
	}); err != nil {
		return netip.Addr{}, fmt.Errorf("listen in %s: %w", server.Name, err)
	}
	defer ln.Close()
	seen := make(chan netip.Addr, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(seen)
			return
		}
		defer conn.Close()
		seen <- conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		conn.Write([]byte("ok"))
	}()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var conn net.Conn
	if err := client.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp4", ln.Addr().String())
		return err
	}); err != nil {
		return netip.Addr{}, fmt.Errorf("dial %s from %s: %w", ln.Addr(), client.Name, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 2)); err != nil {
		return netip.Addr{}, fmt.Errorf("read from %s: %w", ln.Addr(), err)
	}
	select {
	case a, ok := <-seen:
		if !ok {
			return netip.Addr{}, fmt.Errorf("accept on %s failed", ln.Addr())
		}
		return a, nil
	case <-ctx.Done():
		return netip.Addr{}, ctx.Err()
	}
}

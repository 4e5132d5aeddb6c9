package main_test

// End-to-end tests of the nftables packet filter rules (compat.md §8, flannel's EnableNFTables): a vxlan
// cluster whose agents run with --ip-masq, and a plain host on the underlay. Uses TestMain, buildBins, the
// netcluster harness of e2e_linux_test.go and the helpers of e2e_masq_linux_test.go.

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// startMasqCluster starts a vxlan cluster of nodes with --ip-masq and a 1 s resync, the network config
// extended by configArgs.
func startMasqCluster(t *testing.T, nodes int, configArgs ...string) *netcluster.Cluster {
	t.Helper()
	return startCluster(t, netcluster.Options{
		Backend:         "vxlan",
		Nodes:           nodes,
		ConfigArgs:      configArgs,
		ExtraAgentFlags: []string{"--ip-masq", "--iptables-resync=1s"},
	})
}

// nftChain returns `nft list chain` of c in n's namespace, or the error text.
func nftChain(n *netcluster.Node, c kernel.NFTChain) string {
	out, err := n.NS.Exec("nft", "list", "chain", c.Family, c.Table, c.Name)
	if err != nil {
		return err.Error()
	}
	return out
}

// expectNFT checks that each chain in n's namespace is exactly its plan.
func expectNFT(t *testing.T, n *netcluster.Node, chains ...kernel.NFTChain) {
	t.Helper()
	for _, c := range chains {
		if got := nftChain(n, c); got != c.Listing() {
			t.Errorf("node %s: nft list chain %s %s %s:\n%s\nwant\n%s", n.Name, c.Family, c.Table, c.Name, got, c.Listing())
		}
	}
}

// randomPorts reports whether the engine in n's namespace (nftables, else iptables) can masquerade with
// fully random ports.
func randomPorts(t *testing.T, n *netcluster.Node, nft bool) bool {
	t.Helper()
	var ok bool
	if err := n.NS.Do(func() error {
		if nft {
			x, err := kernel.NewNFTables(false)
			ok = err == nil && x.HasFullyRandom()
			return err
		}
		x, err := kernel.NewIPTables(false)
		ok = err == nil && x.HasRandomFully()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ok
}

// addOut adds the plain host 192.0.2.99 to c's underlay.
func addOut(t *testing.T, c *netcluster.Cluster) *kerneltest.NS {
	t.Helper()
	out, err := c.AddHost("out", netip.MustParseAddr("192.0.2.99"))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// expectMasq checks the data path: a container reaching the plain host out (192.0.2.99) is seen with its
// node's underlay address; container to container across nodes keeps the container's own address.
func expectMasq(t *testing.T, ctx context.Context, out *kerneltest.NS, n1, n2 *netcluster.Node) {
	t.Helper()
	if got, err := peerSeen(ctx, n1.Container(), out, netip.MustParseAddr("192.0.2.99")); err != nil {
		t.Errorf("container of %s → host 192.0.2.99: %v", n1.Name, err)
	} else if got != n1.Addr {
		t.Errorf("host 192.0.2.99 sees the container of %s as %s, want %s (masqueraded)", n1.Name, got, n1.Addr)
	}
	if n2 == nil {
		return
	}
	if got, err := peerSeen(ctx, n1.Container(), n2.Container(), n2.ContainerIP()); err != nil {
		t.Errorf("container of %s → container of %s: %v", n1.Name, n2.Name, err)
	} else if got != n1.ContainerIP() {
		t.Errorf("container of %s sees the container of %s as %s, want %s (not masqueraded)", n2.Name, n1.Name, got, n1.ContainerIP())
	}
}

// TestE2EMasqNFTables: with EnableNFTables in a dual-stack network config, every agent keeps flanneld's
// nftables tables for both families (and no iptables chain), containers reaching the outside are
// masqueraded while container-to-container traffic keeps its addresses, and rules changed behind the
// agent's back are restored within the resync interval.
func TestE2EMasqNFTables(t *testing.T) {
	requireE2E(t)
	kerneltest.RequireCommand(t, "nft", "iptables-save", "ip6tables-save")
	c := startMasqCluster(t, 2, "--enable-nftables", "--ipv6-network", "fd00:5::/56")
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	n1, n2 := c.Node(1), c.Node(2)
	network, network6 := netip.MustParsePrefix(netcluster.DefaultNetwork), netip.MustParsePrefix("fd00:5::/56")
	fr := randomPorts(t, n1, true)

	for _, n := range []*netcluster.Node{n1, n2} {
		if status, body, err := c.HTTPGet(ctx, n, "/readyz"); err != nil || status != 200 {
			t.Errorf("node %s: /readyz %d %q %v, want 200", n.Name, status, body, err)
		}
		env, err := n.Lease()
		if err != nil || !env.IPv6Subnet.IsValid() {
			t.Fatalf("node %s: env file: %+v %v, want an IPv6 subnet", n.Name, env, err)
		}
		expectNFT(t, n,
			kernel.NFTForwardRules(network), kernel.NFTMasqRules(network, n.Subnet(), fr),
			kernel.NFTForwardRules(network6), kernel.NFTMasqRules(network6, env.IPv6Subnet, fr))
		for _, save := range []string{"iptables-save", "ip6tables-save"} {
			if out, err := n.NS.Exec(save); err != nil || strings.Contains(out, "FLANNEL") {
				t.Errorf("node %s: %s (%v) has iptables chains with nftables on:\n%s", n.Name, save, err, out)
			}
		}
	}

	out := addOut(t, c)
	expectMasq(t, ctx, out, n1, n2)

	// A rule deleted, the forward chain deleted and the IPv6 table deleted come back within the resync.
	masq1 := kernel.NFTMasqRules(network, n1.Subnet(), fr)
	env1, _ := n1.Lease()
	n1.NS.MustExec(t, "nft", "flush", "chain", "ip", kernel.NFTTableIPv4, kernel.NFTMasqChainName)
	n1.NS.MustExec(t, "nft", "delete", "chain", "ip", kernel.NFTTableIPv4, kernel.NFTForwardChainName)
	n1.NS.MustExec(t, "nft", "delete", "table", "ip6", kernel.NFTTableIPv6)
	want := []kernel.NFTChain{masq1, kernel.NFTForwardRules(network),
		kernel.NFTMasqRules(network6, env1.IPv6Subnet, fr), kernel.NFTForwardRules(network6)}
	waitFor(t, 10*time.Second, "nftables rules restored on "+n1.Name, func() (bool, string) {
		var bad []string
		for _, c := range want {
			if got := nftChain(n1, c); got != c.Listing() {
				bad = append(bad, got)
			}
		}
		return len(bad) == 0, strings.Join(bad, "\n")
	})
	expectMasq(t, ctx, out, n1, nil)
}

// TestE2ENoIPTablesCommand: on a node whose PATH has no iptables command and whose network config does not
// ask for nftables, weftd picks nftables by itself, says so, and masquerades.
func TestE2ENoIPTablesCommand(t *testing.T) {
	requireE2E(t)
	kerneltest.RequireCommand(t, "nft")
	t.Setenv("PATH", pathWithout(t, "iptables", "ip6tables"))
	c := startMasqCluster(t, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	n1 := c.Node(1)
	network := netip.MustParsePrefix(netcluster.DefaultNetwork)
	expectNFT(t, n1, kernel.NFTForwardRules(network), kernel.NFTMasqRules(network, n1.Subnet(), randomPorts(t, n1, true)))
	if log, err := os.ReadFile(n1.LogFile); err != nil || !strings.Contains(string(log), "no iptables command") {
		t.Errorf("node %s: the log does not say why nftables was chosen (%v)", n1.Name, err)
	}
	expectMasq(t, ctx, addOut(t, c), n1, nil)
}

// pathWithout returns a PATH of one directory holding links to every command of the current PATH except
// those whose names start with one of the given prefixes.
func pathWithout(t *testing.T, prefixes ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range filepath.SplitList(os.Getenv("PATH")) {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			name := e.Name()
			skip := false
			for _, p := range prefixes {
				skip = skip || strings.HasPrefix(name, p)
			}
			if skip {
				continue
			}
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				continue // an earlier PATH entry wins
			}
			if err := os.Symlink(filepath.Join(d, name), filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

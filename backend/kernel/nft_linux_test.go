package kernel_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// nftSync runs SyncChain with t (made inside ns) inside ns and returns whether it changed anything.
func nftSync(tb testing.TB, ns *kerneltest.NS, t *kernel.NFTables, c kernel.NFTChain) bool {
	tb.Helper()
	var changed bool
	if err := ns.Do(func() error {
		var err error
		changed, err = t.SyncChain(c)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return changed
}

// newNFT makes an NFTables inside ns.
func newNFT(tb testing.TB, ns *kerneltest.NS, v6 bool) *kernel.NFTables {
	tb.Helper()
	var t *kernel.NFTables
	if err := ns.Do(func() error {
		var err error
		t, err = kernel.NewNFTables(v6)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return t
}

// expectTable checks inside ns that table family/name has Weft's comment and exactly the given chains, each
// as `nft list chain` prints it equal to its plan's Listing. (The chains' order in the table is the order
// they were made in, which replacing a chain changes; it has no effect on packets.)
func expectTable(t *testing.T, ns *kerneltest.NS, family, name string, chains ...kernel.NFTChain) {
	t.Helper()
	table := ns.MustExec(t, "nft", "list", "table", family, name)
	if want := "table " + family + " " + name + " {\n\tcomment \"rules for " + name + "\"\n"; !strings.HasPrefix(table, want) {
		t.Errorf("nft list table %s %s:\n%s\nwant it to start with\n%s", family, name, table, want)
	}
	if n := strings.Count(table, "\tchain "); n != len(chains) {
		t.Errorf("nft list table %s %s: %d chains, want %d:\n%s", family, name, n, len(chains), table)
	}
	for _, c := range chains {
		if got := ns.MustExec(t, "nft", "list", "chain", family, name, c.Name); got != c.Listing() {
			t.Errorf("nft list chain %s %s %s:\n%s\nwant\n%s", family, name, c.Name, got, c.Listing())
		}
	}
}

// TestNFTablesInNetns checks in a throwaway namespace that SyncChain installs flanneld's tables and chains
// for both families exactly, is a no-op the second time and after a restart, restores what was changed
// behind its back (a rule deleted, a foreign rule added, the chain or the whole table deleted, the chain
// re-made with another priority), replaces the old subnet's rules when the subnet changes, and leaves other
// tables alone.
func TestNFTablesInNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "nft")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	const foreign = "table ip other {\n\tchain post {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr 172.17.0.0/16 oifname != \"docker0\" masquerade\n\t}\n}\n"
	if out, err := ns.Command("nft", "-f", "-").CombinedOutput(); err != nil { // sanity: nft runs in ns
		t.Fatalf("nft in %s: %v: %s", ns.Name, err, out)
	}
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(foreign)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("add a foreign table: %v: %s", err, out)
	}

	p := netip.MustParsePrefix
	v4 := newNFT(t, ns, false)
	fr := v4.HasFullyRandom()
	masq := kernel.NFTMasqRules(p("10.5.0.0/16"), p("10.5.72.0/24"), fr)
	fwd := kernel.NFTForwardRules(p("10.5.0.0/16"))
	for _, c := range []kernel.NFTChain{fwd, masq} {
		if !nftSync(t, ns, v4, c) {
			t.Errorf("first sync of %s: changed = false", c.Name)
		}
		if nftSync(t, ns, v4, c) {
			t.Errorf("second sync of %s: changed = true, want a no-op", c.Name)
		}
	}
	expectTable(t, ns, "ip", kernel.NFTTableIPv4, fwd, masq)

	// A restarted agent (a new NFTables) finds its rules in place: no change.
	v4 = newNFT(t, ns, false)
	for _, c := range []kernel.NFTChain{fwd, masq} {
		if nftSync(t, ns, v4, c) {
			t.Errorf("sync of %s after a restart: changed = true, want a no-op", c.Name)
		}
	}

	for _, tamper := range []struct {
		name  string
		chain kernel.NFTChain
		nft   string // run with nft -f -
	}{
		{"rule deleted", masq, "flush chain ip flannel-ipv4 postrtg\nadd rule ip flannel-ipv4 postrtg ip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return"},
		{"foreign rule inserted", masq, "insert rule ip flannel-ipv4 postrtg ip daddr 192.0.2.0/24 return"},
		{"chain deleted", fwd, "delete chain ip flannel-ipv4 forward"},
		{"chain with another priority", masq, "delete chain ip flannel-ipv4 postrtg\nadd chain ip flannel-ipv4 postrtg { type nat hook postrouting priority 50; }"},
		{"table deleted", masq, "delete table ip flannel-ipv4"},
	} {
		cmd := ns.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(tamper.nft)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", tamper.name, err, out)
		}
		if !nftSync(t, ns, v4, tamper.chain) {
			t.Errorf("%s: sync changed = false", tamper.name)
		}
		if tamper.name == "table deleted" {
			nftSync(t, ns, v4, fwd)
		}
		expectTable(t, ns, "ip", kernel.NFTTableIPv4, fwd, masq)
	}

	// The subnet changes: the chain is replaced, no rule of the old subnet stays.
	moved := kernel.NFTMasqRules(p("10.5.0.0/16"), p("10.5.9.0/24"), fr)
	if !nftSync(t, ns, v4, moved) {
		t.Error("sync with a new subnet: changed = false")
	}
	expectTable(t, ns, "ip", kernel.NFTTableIPv4, fwd, moved)
	if got := ns.MustExec(t, "nft", "list", "ruleset"); strings.Contains(got, "10.5.72.0/24") {
		t.Errorf("a rule of the old subnet 10.5.72.0/24 is left:\n%s", got)
	}

	// IPv6: its own table, same rules.
	v6 := newNFT(t, ns, true)
	masq6 := kernel.NFTMasqRules(p("fd00:5::/56"), p("fd00:5:0:7::/64"), v6.HasFullyRandom())
	fwd6 := kernel.NFTForwardRules(p("fd00:5::/56"))
	for _, c := range []kernel.NFTChain{fwd6, masq6} {
		if !nftSync(t, ns, v6, c) {
			t.Errorf("first sync of ip6 %s: changed = false", c.Name)
		}
	}
	expectTable(t, ns, "ip6", kernel.NFTTableIPv6, fwd6, masq6)
	if _, err := v6.SyncChain(masq); err == nil {
		t.Error("an IPv4 plan given to the IPv6 table: no error")
	}

	if got := ns.MustExec(t, "nft", "list", "table", "ip", "other"); got != foreign {
		t.Errorf("the foreign table changed:\n%s\nwant\n%s", got, foreign)
	}
}

// TestNFTablesAdoptsFlanneldTable checks that the tables flanneld's nftables mode leaves (same names, its
// exact-mark rule, an older subnet) are taken over.
func TestNFTablesAdoptsFlanneldTable(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "nft")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(`add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }
add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }
add rule ip flannel-ipv4 postrtg meta mark 0x4000 return
add rule ip flannel-ipv4 postrtg ip saddr 10.5.3.0/24 ip daddr 10.5.0.0/16 return
add chain ip flannel-ipv4 forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }
add rule ip flannel-ipv4 forward ip saddr 10.5.0.0/16 accept
add rule ip flannel-ipv4 forward ip daddr 10.5.0.0/16 accept
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("flanneld's table: %v: %s", err, out)
	}
	v4 := newNFT(t, ns, false)
	masq := kernel.NFTMasqRules(netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.4.0/24"), false)
	fwd := kernel.NFTForwardRules(netip.MustParsePrefix("10.5.0.0/16"))
	if !nftSync(t, ns, v4, masq) {
		t.Error("postrtg: changed = false")
	}
	if nftSync(t, ns, v4, fwd) {
		t.Error("forward (as flanneld left it): changed = true")
	}
	expectTable(t, ns, "ip", kernel.NFTTableIPv4, masq, fwd)
}

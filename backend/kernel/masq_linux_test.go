package kernel_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// syncChain runs SyncChain inside ns and returns whether it changed anything.
func syncChain(t *testing.T, ns *kerneltest.NS, c kernel.Chain) bool {
	t.Helper()
	return syncChainFamily(t, ns, false, c)
}

// syncChainFamily runs SyncChain of iptables (v6: ip6tables) inside ns.
func syncChainFamily(t *testing.T, ns *kerneltest.NS, v6 bool, c kernel.Chain) bool {
	t.Helper()
	var changed bool
	err := ns.Do(func() error {
		ipt, err := kernel.NewIPTables(v6)
		if err != nil {
			return err
		}
		changed, err = ipt.SyncChain(c)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return changed
}

// iptS returns `iptables -t table -S chain` inside ns, as lines.
func iptS(t *testing.T, ns *kerneltest.NS, table, chain string) []string {
	t.Helper()
	out := ns.MustExec(t, "iptables", "-t", table, "-S", chain)
	return strings.Split(strings.TrimSpace(out), "\n")
}

// expectChain checks that chain holds exactly want (after its -N line) and that parent holds exactly
// parentWant (after its -P line).
func expectChain(t *testing.T, ns *kerneltest.NS, c kernel.Chain, parentWant ...string) {
	t.Helper()
	want := append([]string{"-N " + c.Name}, c.Lines()...)
	if got := iptS(t, ns, c.Table, c.Name); !slices.Equal(got, want) {
		t.Errorf("iptables -t %s -S %s:\n%s\nwant\n%s", c.Table, c.Name, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	got := iptS(t, ns, c.Table, c.Jump.Chain)
	if len(got) > 0 && strings.HasPrefix(got[0], "-P ") {
		got = got[1:]
	}
	if !slices.Equal(got, parentWant) {
		t.Errorf("iptables -t %s -S %s:\n%s\nwant\n%s", c.Table, c.Jump.Chain, strings.Join(got, "\n"), strings.Join(parentWant, "\n"))
	}
}

// TestSyncChainInNetns checks in a throwaway namespace that SyncChain installs the masquerade and forward
// chains and their jumps exactly, is a no-op the second time, restores a rule deleted behind its back,
// removes a foreign rule inside its own chain, replaces the old subnet's rules when the subnet changes,
// removes a duplicate jump, and leaves foreign rules in POSTROUTING and FORWARD alone.
func TestSyncChainInNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "iptables")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	const foreignNAT = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
	const foreignFwd = "-A FORWARD -i docker0 -j ACCEPT"
	ns.MustExec(t, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0", "-j", "MASQUERADE")
	ns.MustExec(t, "iptables", "-t", "filter", "-A", "FORWARD", "-i", "docker0", "-j", "ACCEPT")

	network := netip.MustParsePrefix("10.5.0.0/16")
	masq := kernel.MasqRules(network, netip.MustParsePrefix("10.5.72.0/24"), true)
	fwd := kernel.ForwardRules(network)

	for i, c := range []kernel.Chain{masq, fwd} {
		if !syncChain(t, ns, c) {
			t.Errorf("first sync of %s: changed = false", c.Name)
		}
		if syncChain(t, ns, c) {
			t.Errorf("second sync of %s: changed = true, want a no-op", c.Name)
		}
		foreign := []string{foreignNAT, foreignFwd}[i]
		expectChain(t, ns, c, foreign, c.Jump.String())
	}

	// A rule deleted behind our back (the masquerade rule in the middle) and a foreign rule in our chain.
	ns.MustExec(t, "iptables", "-t", "nat", "-D", masq.Name, "4")
	ns.MustExec(t, "iptables", "-t", "nat", "-I", masq.Name, "2", "-d", "192.0.2.0/24", "-j", "RETURN")
	if !syncChain(t, ns, masq) {
		t.Error("sync after tampering: changed = false")
	}
	expectChain(t, ns, masq, foreignNAT, masq.Jump.String())

	// Jump deleted, then duplicated.
	ns.MustExec(t, "iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment", "flanneld forward", "-j", fwd.Name)
	if !syncChain(t, ns, fwd) {
		t.Error("sync after the jump was deleted: changed = false")
	}
	expectChain(t, ns, fwd, foreignFwd, fwd.Jump.String())
	ns.MustExec(t, "iptables", "-t", "filter", "-I", "FORWARD", "1", "-m", "comment", "--comment", "flanneld forward", "-j", fwd.Name)
	if !syncChain(t, ns, fwd) {
		t.Error("sync after the jump was duplicated: changed = false")
	}
	if got := iptS(t, ns, "filter", "FORWARD"); strings.Count(strings.Join(got, "\n"), fwd.Jump.String()) != 1 {
		t.Errorf("FORWARD after removing the duplicate jump:\n%s", strings.Join(got, "\n"))
	}

	// The subnet changes: no rule of the old subnet may stay.
	moved := kernel.MasqRules(network, netip.MustParsePrefix("10.5.9.0/24"), true)
	if !syncChain(t, ns, moved) {
		t.Error("sync with a new subnet: changed = false")
	}
	expectChain(t, ns, moved, foreignNAT, moved.Jump.String())
	if got := ns.MustExec(t, "iptables", "-t", "nat", "-S"); strings.Contains(got, "10.5.72.0/24") {
		t.Errorf("a rule of the old subnet 10.5.72.0/24 is left:\n%s", got)
	}
}

// TestSyncChainAdoptsFlanneldChain checks that chains as flanneld leaves them (same names, same jump, an
// older subnet) are taken over: one jump, not two, and the content rewritten.
func TestSyncChainAdoptsFlanneldChain(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "iptables")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	for _, args := range [][]string{
		{"-t", "nat", "-N", "FLANNEL-POSTRTG"},
		{"-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq", "-j", "FLANNEL-POSTRTG"},
		{"-t", "nat", "-A", "FLANNEL-POSTRTG", "-m", "mark", "--mark", "0x4000/0x4000", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"},
		{"-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.5.3.0/24", "-d", "10.5.0.0/16", "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"},
	} {
		ns.MustExec(t, append([]string{"iptables"}, args...)...)
	}
	masq := kernel.MasqRules(netip.MustParsePrefix("10.5.0.0/16"), netip.MustParsePrefix("10.5.4.0/24"), false)
	if !syncChain(t, ns, masq) {
		t.Error("changed = false")
	}
	expectChain(t, ns, masq, masq.Jump.String())
}

// TestSyncChainIPv6InNetns checks the IPv6 chains through ip6tables in a throwaway namespace: flanneld's
// chain names and rules with IPv6 prefixes and ff00::/8, as ip6tables-save prints them; a rule deleted
// behind its back is restored, and a new subnet replaces the old one's rules. The IPv4 tables stay empty.
func TestSyncChainIPv6InNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "ip6tables", "ip6tables-save", "iptables-save")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	network := netip.MustParsePrefix("fd00:5::/56")
	masq := kernel.MasqRules(network, netip.MustParsePrefix("fd00:5:0:7::/64"), false)
	fwd := kernel.ForwardRules(network)
	for _, c := range []kernel.Chain{masq, fwd} {
		if !syncChainFamily(t, ns, true, c) {
			t.Errorf("first sync of %s: changed = false", c.Name)
		}
		if syncChainFamily(t, ns, true, c) {
			t.Errorf("second sync of %s: changed = true, want a no-op", c.Name)
		}
	}
	save := func() string {
		var lines []string
		for _, l := range strings.Split(ns.MustExec(t, "ip6tables-save"), "\n") {
			if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, "*") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "\n")
	}
	want := `*filter
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A FLANNEL-FWD -s fd00:5::/56 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d fd00:5::/56 -m comment --comment "flanneld forward" -j ACCEPT
*nat
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5:0:7::/64 -d fd00:5::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5::/56 -d fd00:5:0:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s fd00:5::/56 -d fd00:5:0:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s fd00:5::/56 -d fd00:5::/56 -m comment --comment "flanneld masq" -j MASQUERADE`
	if got := save(); got != want {
		t.Errorf("ip6tables-save:\n%s\nwant\n%s", got, want)
	}
	if got := ns.MustExec(t, "iptables-save"); strings.Contains(got, "FLANNEL") {
		t.Errorf("IPv4 rules appeared:\n%s", got)
	}

	ns.MustExec(t, "ip6tables", "-t", "nat", "-D", masq.Name, "5")
	if !syncChainFamily(t, ns, true, masq) {
		t.Error("sync after a rule was deleted: changed = false")
	}
	if got := save(); got != want {
		t.Errorf("ip6tables-save after the repair:\n%s\nwant\n%s", got, want)
	}

	moved := kernel.MasqRules(network, netip.MustParsePrefix("fd00:5:0:9::/64"), false)
	if !syncChainFamily(t, ns, true, moved) {
		t.Error("sync with a new subnet: changed = false")
	}
	if got := save(); strings.Contains(got, "fd00:5:0:7::/64") || !strings.Contains(got, "fd00:5:0:9::/64") {
		t.Errorf("ip6tables-save after the subnet moved to fd00:5:0:9::/64:\n%s", got)
	}
}

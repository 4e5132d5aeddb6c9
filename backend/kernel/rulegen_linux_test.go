package kernel_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestRuleGeneration checks in a throwaway namespace, with iptables-nft and with iptables-legacy, for IPv4
// and IPv6, that the packet filter generation stays put while nothing changes and moves with every change
// of a rule or chain (so the periodic rule check may skip its listing when it has not moved). NFTables
// reads the same nf_tables generation as iptables-nft.
func TestRuleGeneration(t *testing.T) {
	kerneltest.RequireRoot(t)
	for _, mode := range []string{"nft", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			for _, cmd := range []string{"iptables", "ip6tables"} {
				bin, err := exec.LookPath(cmd + "-" + mode)
				if err != nil {
					t.Fatalf("%s-%s (Debian package iptables): %v", cmd, mode, err)
				}
				if err := os.Symlink(bin, filepath.Join(dir, cmd)); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
			for _, v6 := range []bool{false, true} {
				cmd := "iptables"
				if v6 {
					cmd = "ip6tables"
				}
				ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-g")
				var ipt *kernel.IPTables
				if err := ns.Do(func() (err error) { ipt, err = kernel.NewIPTables(v6); return err }); err != nil {
					t.Fatal(err)
				}
				gen := func() uint64 {
					t.Helper()
					var g uint64
					if err := ns.Do(func() (err error) { g, err = ipt.Generation(); return err }); err != nil {
						t.Fatalf("%s: Generation: %v", cmd, err)
					}
					return g
				}
				ns.MustExec(t, cmd, "-t", "nat", "-S") // the tables exist from here on
				ns.MustExec(t, cmd, "-t", "filter", "-S")
				last := gen()
				for _, change := range []string{
					"-t nat -N WEFT-T",
					"-t nat -A WEFT-T -j RETURN",
					"-t nat -A POSTROUTING -j WEFT-T",
					"-t filter -A FORWARD -j ACCEPT",
					"-t filter -D FORWARD 1",
					"-t nat -F WEFT-T",
				} {
					if g := gen(); g != last {
						t.Fatalf("%s: generation moved from %d to %d with no change", cmd, last, g)
					}
					ns.MustExec(t, append([]string{cmd}, strings.Fields(change)...)...)
					g := gen()
					if g == last {
						t.Errorf("%s %s: generation stayed %d", cmd, change, g)
					}
					last = g
				}
				if mode == "nft" {
					var nft *kernel.NFTables
					var g uint64
					if err := ns.Do(func() (err error) {
						if nft, err = kernel.NewNFTables(v6); err != nil {
							return err
						}
						g, err = nft.Generation()
						return err
					}); err != nil {
						t.Fatal(err)
					}
					if g != last {
						t.Errorf("NFTables generation %d, iptables-nft's %d: want the same nf_tables generation", g, last)
					}
				}
			}
		})
	}
}

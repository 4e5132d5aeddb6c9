package kubetest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// fakeMulti stands in for xtables-legacy-multi and xtables-nft-multi: it logs its arguments and prints the
// file named after itself and its command (xtables-nft-multi.iptables-save), or fails when that file is
// "FAIL" (a kernel without that mode).
const fakeMulti = `#!/bin/sh
echo "${0##*/} $*" >>"$(dirname "$0")/calls"
f="$(dirname "$0")/${0##*/}.$1"
[ -f "$f" ] || exit 0
if [ "$(cat "$f")" = FAIL ]; then echo "iptables: no such table" >&2; exit 1; fi
cat "$f"
`

// TestIPTablesWrapperMode runs dist/iptables-wrapper's choice (`iptables-wrapper mode`) against fake
// iptables-save outputs: kubelet's hint chains first (nft, then legacy), else the mode with more rules,
// else nft. The image test (cmd/agent TestE2EKube, 9-image-with-podman) runs it for real.
func TestIPTablesWrapperMode(t *testing.T) {
	wrapper, err := filepath.Abs("../iptables-wrapper")
	if err != nil {
		t.Fatal(err)
	}
	const (
		kubeProxy = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\nCOMMIT\n"
		oneRule   = "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\nCOMMIT\n"
		hint      = "*mangle\n:PREROUTING ACCEPT [0:0]\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
	)
	// Files are named <mode>.<command>: nft.iptables-save is what xtables-nft-multi iptables-save prints.
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"nothing anywhere", nil, "nft"},
		{"legacy rules only", map[string]string{"legacy.iptables-save": kubeProxy}, "legacy"},
		{"nft rules only", map[string]string{"nft.iptables-save": kubeProxy}, "nft"},
		{"more legacy rules", map[string]string{"legacy.iptables-save": kubeProxy, "nft.iptables-save": oneRule}, "legacy"},
		{"more nft rules", map[string]string{"legacy.iptables-save": oneRule, "nft.iptables-save": kubeProxy}, "nft"},
		{"as many in each", map[string]string{"legacy.iptables-save": oneRule, "nft.ip6tables-save": oneRule}, "nft"},
		{"legacy rules in ip6tables only", map[string]string{"legacy.ip6tables-save": kubeProxy}, "legacy"},
		{"kubelet's hint in nft beats more legacy rules", map[string]string{"nft.iptables-save": hint, "legacy.iptables-save": kubeProxy}, "nft"},
		{"kubelet's hint in legacy beats more nft rules", map[string]string{"legacy.ip6tables-save": hint, "nft.iptables-save": kubeProxy}, "legacy"},
		{"nft failing, legacy rules", map[string]string{"nft.iptables-save": "FAIL", "nft.ip6tables-save": "FAIL", "legacy.iptables-save": oneRule}, "legacy"},
		{"legacy failing", map[string]string{"legacy.iptables-save": "FAIL", "legacy.ip6tables-save": "FAIL"}, "nft"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, m := range []string{"legacy", "nft"} {
				if err := os.WriteFile(filepath.Join(dir, "xtables-"+m+"-multi"), []byte(fakeMulti), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for name, content := range tc.files {
				mode, cmd, _ := strings.Cut(name, ".")
				if err := os.WriteFile(filepath.Join(dir, "xtables-"+mode+"-multi."+cmd), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(wrapper, "mode")
			cmd.Env = append(os.Environ(), "XTABLES_SBIN="+dir)
			out, err := cmd.Output()
			if got := strings.TrimSpace(string(out)); err != nil || got != tc.want {
				t.Errorf("iptables-wrapper mode with %v = %q, %v; want %q", tc.files, got, err, tc.want)
			}
			calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
			for _, c := range strings.Split(strings.TrimSpace(string(calls)), "\n") {
				if strings.HasPrefix(c, "xtables-legacy-multi ") && strings.Contains(c, " -t ") {
					t.Errorf("called %q: naming a table makes iptables-legacy create it", c)
				}
			}
		})
	}
	// Called by its own name with anything but "mode" it only prints its usage: it never changes the
	// alternatives of the machine it runs on.
	out, err := exec.Command(wrapper, "-S").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "usage") {
		t.Errorf("iptables-wrapper -S = %q, %v; want the usage and exit status 2", out, err)
	}
}

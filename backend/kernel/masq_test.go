package kernel

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// TestRulePlans compares the rule plans with golden `iptables -S` text (flanneld's rule text, compat §8).
func TestRulePlans(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name  string
		chain Chain
		table string
		jump  string
		want  string
	}{
		{
			name:  "masq v4 random-fully",
			chain: MasqRules(p("10.5.0.0/16"), p("10.5.72.0/24"), true),
			table: "nat",
			jump:  `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`,
			want: `
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.72.0/24 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.72.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully`,
		},
		{
			name: "masq v4 without random-fully, unmasked input",
			// The subnet as the env file has it (first address); the plan names the network address.
			chain: MasqRules(p("10.244.0.0/16"), p("10.244.3.1/24"), false),
			table: "nat",
			jump:  `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`,
			want: `
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.3.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE`,
		},
		{
			name:  "masq v6 excludes ff00::/8",
			chain: MasqRules(p("fd00:5::/56"), p("fd00:5:0:7::/64"), false),
			table: "nat",
			jump:  `-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG`,
			want: `
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5:0:7::/64 -d fd00:5::/56 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5::/56 -d fd00:5:0:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s fd00:5::/56 -d fd00:5:0:7::/64 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s fd00:5::/56 ! -d ff00::/8 -m comment --comment "flanneld masq" -j MASQUERADE
-A FLANNEL-POSTRTG ! -s fd00:5::/56 -d fd00:5::/56 -m comment --comment "flanneld masq" -j MASQUERADE`,
		},
		{
			name:  "forward",
			chain: ForwardRules(p("10.5.0.0/16")),
			table: "filter",
			jump:  `-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD`,
			want: `
-A FLANNEL-FWD -s 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.5.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.chain.Table != tc.table {
				t.Errorf("table = %q, want %q", tc.chain.Table, tc.table)
			}
			if got := tc.chain.Jump.String(); got != tc.jump {
				t.Errorf("jump:\n got %s\nwant %s", got, tc.jump)
			}
			want := strings.Split(strings.TrimPrefix(tc.want, "\n"), "\n")
			if got := tc.chain.Lines(); !slices.Equal(got, want) {
				t.Errorf("rules:\n got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, r := range tc.chain.Rules {
				if r.Chain != tc.chain.Name {
					t.Errorf("rule %q is in chain %s, want %s", r, r.Chain, tc.chain.Name)
				}
			}
		})
	}
}

func TestRuleStringQuotes(t *testing.T) {
	r := Rule{Chain: "X", Spec: []string{"-m", "comment", "--comment", `say "hi"\now`, "-j", "RETURN"}}
	if got, want := r.String(), `-A X -m comment --comment "say \"hi\"\\now" -j RETURN`; got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

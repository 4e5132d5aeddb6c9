package kernel

import (
	"net/netip"
	"testing"
)

// TestNFTPlans compares the nftables plans with golden `nft list chain` text (flanneld's nftables tables,
// chains and rules; the kube-proxy rule tests the mark bit, see NFTMasqRules).
func TestNFTPlans(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name  string
		chain NFTChain
		want  string
	}{
		{
			name:  "masq v4 fully-random, unmasked subnet",
			chain: NFTMasqRules(p("10.5.0.0/16"), p("10.5.72.1/24"), true),
			want: `table ip flannel-ipv4 {
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return
		ip saddr 10.5.72.0/24 ip daddr 10.5.0.0/16 return
		ip saddr 10.5.0.0/16 ip daddr 10.5.72.0/24 return
		ip saddr != 10.5.0.0/16 ip daddr 10.5.72.0/24 return
		ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
		ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random
	}
}
`,
		},
		{
			name:  "masq v6 without fully-random",
			chain: NFTMasqRules(p("fd00:5::/56"), p("fd00:5:0:7::/64"), false),
			want: `table ip6 flannel-ipv6 {
	chain postrtg {
		comment "chain to manage traffic masquerading by flannel"
		type nat hook postrouting priority srcnat; policy accept;
		meta mark & 0x00004000 == 0x00004000 return
		ip6 saddr fd00:5:0:7::/64 ip6 daddr fd00:5::/56 return
		ip6 saddr fd00:5::/56 ip6 daddr fd00:5:0:7::/64 return
		ip6 saddr != fd00:5::/56 ip6 daddr fd00:5:0:7::/64 return
		ip6 saddr fd00:5::/56 ip6 daddr != ff00::/8 masquerade
		ip6 saddr != fd00:5::/56 ip6 daddr fd00:5::/56 masquerade
	}
}
`,
		},
		{
			name:  "forward v4",
			chain: NFTForwardRules(p("10.5.0.0/16")),
			want: `table ip flannel-ipv4 {
	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip saddr 10.5.0.0/16 accept
		ip daddr 10.5.0.0/16 accept
	}
}
`,
		},
		{
			name:  "forward v6",
			chain: NFTForwardRules(p("fd00:5::/56")),
			want: `table ip6 flannel-ipv6 {
	chain forward {
		comment "chain to accept flannel traffic"
		type filter hook forward priority filter; policy accept;
		ip6 saddr fd00:5::/56 accept
		ip6 daddr fd00:5::/56 accept
	}
}
`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.chain.Listing(); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

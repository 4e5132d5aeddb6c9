package kernel

import (
	"fmt"
	"net/netip"
)

// The nftables form of the packet filter rules (compat.md §8), for hosts without the iptables command and
// networks with EnableNFTables. Weft uses flanneld's table and chain names (flanneld's nftables mode), so a
// node that moves from flanneld to weftd finds the tables it left and takes them over: each chain is
// replaced as a whole when its content differs from the plan.
const (
	// NFTTableIPv4 and NFTTableIPv6 are the tables, of family ip and ip6; nothing but Weft's chains is in them.
	NFTTableIPv4 = "flannel-ipv4"
	NFTTableIPv6 = "flannel-ipv6"
	// NFTMasqChainName is the base chain of the masquerade rules (nat, hook postrouting, priority srcnat).
	NFTMasqChainName = "postrtg"
	// NFTForwardChainName is the base chain of the forward rules (filter, hook forward, priority filter).
	NFTForwardChainName = "forward"
)

// NFTChain is the complete desired state of one base chain in one of Weft's tables: its hook and its rules
// in order, as `nft list chain` prints them (the rule text is nft syntax; it is also what is applied).
type NFTChain struct {
	Family   string // "ip" or "ip6"
	Table    string // NFTTableIPv4 or NFTTableIPv6
	Name     string
	Type     string // "nat" or "filter"
	Hook     string // "postrouting" or "forward"
	Priority string // "srcnat" or "filter"
	Comment  string // the chain's comment
	Rules    []string
}

// nftFamily returns the nftables family, table and address match keyword for p's address family.
func nftFamily(p netip.Prefix) (family, table, match string) {
	if p.Addr().Is6() {
		return "ip6", NFTTableIPv6, "ip6"
	}
	return "ip", NFTTableIPv4, "ip"
}

// NFTMasqRules returns the nftables form of MasqRules: the same six rules, in the same order, in the
// base chain postrtg of the network's family table. fullyRandom adds fully-random to the masquerade rules
// (where the kernel supports it), as --random-fully does for iptables.
//
// The kube-proxy rule tests the mark bit as iptables' --mark 0x4000/0x4000 does (meta mark & 0x4000 ==
// 0x4000); flanneld's nftables mode tests the whole mark for equality (meta mark 0x4000), which misses
// packets on which another component set a second bit.
func NFTMasqRules(network, own netip.Prefix, fullyRandom bool) NFTChain {
	family, table, ip := nftFamily(network)
	nw, sn := network.Masked().String(), own.Masked().String()
	multicast := "224.0.0.0/4"
	if network.Addr().Is6() {
		multicast = "ff00::/8"
	}
	masq := "masquerade"
	if fullyRandom {
		masq += " fully-random"
	}
	return NFTChain{
		Family: family, Table: table, Name: NFTMasqChainName,
		Type: "nat", Hook: "postrouting", Priority: "srcnat",
		Comment: "chain to manage traffic masquerading by flannel",
		Rules: []string{
			"meta mark & 0x00004000 == 0x00004000 return",
			fmt.Sprintf("%s saddr %s %s daddr %s return", ip, sn, ip, nw),
			fmt.Sprintf("%s saddr %s %s daddr %s return", ip, nw, ip, sn),
			fmt.Sprintf("%s saddr != %s %s daddr %s return", ip, nw, ip, sn),
			fmt.Sprintf("%s saddr %s %s daddr != %s %s", ip, nw, ip, multicast, masq),
			fmt.Sprintf("%s saddr != %s %s daddr %s %s", ip, nw, ip, nw, masq),
		},
	}
}

// NFTForwardRules returns the nftables form of ForwardRules: accept what comes from or goes to the
// network, in the base chain forward of the network's family table.
//
// Unlike an ACCEPT in iptables' FORWARD chain, an accept here does not override a drop in another table's
// forward chain (every base chain on a hook sees the packet): the chain helps only where nothing else drops.
// flanneld's nftables mode has the same limit.
func NFTForwardRules(network netip.Prefix) NFTChain {
	family, table, ip := nftFamily(network)
	nw := network.Masked().String()
	return NFTChain{
		Family: family, Table: table, Name: NFTForwardChainName,
		Type: "filter", Hook: "forward", Priority: "filter",
		Comment: "chain to accept flannel traffic",
		Rules: []string{
			fmt.Sprintf("%s saddr %s accept", ip, nw),
			fmt.Sprintf("%s daddr %s accept", ip, nw),
		},
	}
}

// Listing returns the chain as `nft list chain <family> <table> <name>` prints it (nftables 1.0), for tests
// and messages.
func (c NFTChain) Listing() string {
	s := fmt.Sprintf("table %s %s {\n\tchain %s {\n", c.Family, c.Table, c.Name)
	if c.Comment != "" {
		s += fmt.Sprintf("\t\tcomment %q\n", c.Comment)
	}
	s += fmt.Sprintf("\t\ttype %s hook %s priority %s; policy accept;\n", c.Type, c.Hook, c.Priority)
	for _, r := range c.Rules {
		s += "\t\t" + r + "\n"
	}
	return s + "\t}\n}\n"
}

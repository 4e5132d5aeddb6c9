package kernel

import (
	"net/netip"
	"strings"
)

// Packet filter rules (compat.md §8). Weft uses flanneld's chain names, rule text and comments, so a node
// that moves from flanneld to weftd finds the chains it left and takes them over instead of adding a second
// set: the jumps match flanneld's byte for byte, and the chains' content is rewritten only if it differs.
const (
	// MasqChainName is the nat chain of the masquerade rules, jumped to from POSTROUTING.
	MasqChainName = "FLANNEL-POSTRTG"
	// ForwardChainName is the filter chain of the forward rules, jumped to from FORWARD.
	ForwardChainName = "FLANNEL-FWD"
	// KubeProxyMark is the mark kube-proxy sets on packets it masquerades itself; they are left alone so
	// they are not NATed twice.
	KubeProxyMark = "0x4000/0x4000"

	masqComment    = "flanneld masq"
	forwardComment = "flanneld forward"
)

// Rule is one iptables rule: Spec is what follows "-A <Chain>", as iptables takes it as arguments.
type Rule struct {
	Chain string
	Spec  []string
}

// String renders the rule as `iptables -S` prints it: arguments holding a blank or a quote are
// double-quoted (the comments), the others are printed as they are.
func (r Rule) String() string {
	var b strings.Builder
	b.WriteString("-A ")
	b.WriteString(r.Chain)
	for _, a := range r.Spec {
		b.WriteByte(' ')
		if strings.ContainsAny(a, " \t\"'\\") {
			b.WriteByte('"')
			b.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(a))
			b.WriteByte('"')
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// Chain is the complete desired state of one of Weft's chains: its rules in order, and the rule of a
// built-in chain that jumps to it (present exactly once there; where is not ours to choose, so it is
// appended when missing, as flanneld does).
type Chain struct {
	Table string // "nat" or "filter"
	Name  string
	Jump  Rule // in a built-in chain (POSTROUTING, FORWARD)
	Rules []Rule
}

// Lines returns the rules as `iptables -S <Name>` prints them after its "-N <Name>" line.
func (c Chain) Lines() []string {
	out := make([]string, len(c.Rules))
	for i, r := range c.Rules {
		out[i] = r.String()
	}
	return out
}

// MasqRules returns the nat chain that masquerades traffic leaving the overlay network and nothing else
// (compat.md §8), for the overlay network and this node's subnet of the same family:
//
//  1. RETURN what kube-proxy marked (it masquerades that itself);
//  2. RETURN own subnet → network and 3. network → own subnet: overlay traffic keeps its addresses;
//  4. RETURN !network → own subnet: traffic from outside reaching a local container is not NATed;
//  5. MASQUERADE network → anything but multicast: containers reaching the outside;
//  6. MASQUERADE !network → network: the host (or the outside) reaching remote containers.
//
// randomFully adds --random-fully to the MASQUERADE rules (where iptables supports it).
func MasqRules(network, own netip.Prefix, randomFully bool) Chain {
	nw, sn := network.Masked().String(), own.Masked().String()
	multicast := "224.0.0.0/4"
	if network.Addr().Is6() {
		multicast = "ff00::/8"
	}
	rule := func(target string, spec ...string) Rule {
		spec = append(spec, "-m", "comment", "--comment", masqComment, "-j", target)
		if target == "MASQUERADE" && randomFully {
			spec = append(spec, "--random-fully")
		}
		return Rule{Chain: MasqChainName, Spec: spec}
	}
	return Chain{
		Table: "nat",
		Name:  MasqChainName,
		Jump:  Rule{Chain: "POSTROUTING", Spec: []string{"-m", "comment", "--comment", masqComment, "-j", MasqChainName}},
		Rules: []Rule{
			rule("RETURN", "-m", "mark", "--mark", KubeProxyMark),
			rule("RETURN", "-s", sn, "-d", nw),
			rule("RETURN", "-s", nw, "-d", sn),
			rule("RETURN", "!", "-s", nw, "-d", sn),
			rule("MASQUERADE", "-s", nw, "!", "-d", multicast),
			rule("MASQUERADE", "!", "-s", nw, "-d", nw),
		},
	}
}

// ForwardRules returns the filter chain that accepts forwarding to and from the overlay network
// (compat.md §8), for hosts whose FORWARD policy is DROP (as Docker sets it).
func ForwardRules(network netip.Prefix) Chain {
	nw := network.Masked().String()
	rule := func(dir string) Rule {
		return Rule{Chain: ForwardChainName, Spec: []string{dir, nw, "-m", "comment", "--comment", forwardComment, "-j", "ACCEPT"}}
	}
	return Chain{
		Table: "filter",
		Name:  ForwardChainName,
		Jump:  Rule{Chain: "FORWARD", Spec: []string{"-m", "comment", "--comment", forwardComment, "-j", ForwardChainName}},
		Rules: []Rule{rule("-s"), rule("-d")},
	}
}

package kubestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/weft-net/weft/subnet"
)

// DefaultAnnotationPrefix is flannel's default --kube-annotation-prefix.
const DefaultAnnotationPrefix = "flannel.alpha.coreos.com"

// Annotations are the full names of flannel's Node annotations for one prefix.
type Annotations struct {
	KubeSubnetManager   string // "true" on every node a kube subnet manager runs on; other nodes are ignored
	BackendType         string // the lease's BackendType
	BackendData         string // the lease's BackendData JSON ("null" for none)
	BackendV6Data       string // the lease's BackendV6Data JSON
	PublicIP            string // the lease's PublicIP, written by the agent
	PublicIPv6          string // the lease's PublicIPv6
	PublicIPOverwrite   string // set by an admin: published instead of the agent's own address
	PublicIPv6Overwrite string
	NodePublicIP        string // set by an admin: the node's --public-ip
	NodePublicIPv6      string
}

var prefixRE = regexp.MustCompile(`^(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$`)

// NewAnnotations derives the annotation names from a --kube-annotation-prefix as flannel does: a prefix
// without a slash gets "/" appended; one whose slash is not at the end gets "-" appended (unless it ends in
// "-"). The result must be a DNS name, a slash and an optional dash-terminated word.
func NewAnnotations(prefix string) (Annotations, error) {
	p := prefix
	switch strings.Count(p, "/") {
	case 0:
		p += "/"
	case 1:
	default:
		return Annotations{}, fmt.Errorf("annotation prefix %q: at most one slash", prefix)
	}
	if !strings.HasSuffix(p, "/") && !strings.HasSuffix(p, "-") {
		p += "-"
	}
	if !prefixRE.MatchString(p) {
		return Annotations{}, fmt.Errorf("annotation prefix %q: want a DNS name, optionally followed by /word (e.g. %s)", prefix, DefaultAnnotationPrefix)
	}
	return Annotations{
		KubeSubnetManager:   p + "kube-subnet-manager",
		BackendType:         p + "backend-type",
		BackendData:         p + "backend-data",
		BackendV6Data:       p + "backend-v6-data",
		PublicIP:            p + "public-ip",
		PublicIPv6:          p + "public-ipv6",
		PublicIPOverwrite:   p + "public-ip-overwrite",
		PublicIPv6Overwrite: p + "public-ipv6-overwrite",
		NodePublicIP:        p + "node-public-ip",
		NodePublicIPv6:      p + "node-public-ipv6",
	}, nil
}

func (a Annotations) names() []string {
	return []string{a.KubeSubnetManager, a.BackendType, a.BackendData, a.BackendV6Data, a.PublicIP, a.PublicIPv6,
		a.PublicIPOverwrite, a.PublicIPv6Overwrite, a.NodePublicIP, a.NodePublicIPv6}
}

// trim reduces a Node to what the store reads: its name, resource version, flannel's annotations, the pod
// CIDRs and the NetworkUnavailable condition. The informer keeps only trimmed Nodes, and two trimmed Nodes
// that are equal (ignoring the resource version) mean the same lease: a status heartbeat changes nothing.
func (a Annotations) trim(n *node) *node {
	out := &node{}
	out.Name, out.ResourceVersion, out.UID = n.Name, n.ResourceVersion, n.UID
	for _, k := range a.names() {
		if v, ok := n.Annotations[k]; ok {
			if out.Annotations == nil {
				out.Annotations = map[string]string{}
			}
			out.Annotations[k] = v
		}
	}
	out.Spec.PodCIDR = n.Spec.PodCIDR
	out.Spec.PodCIDRs = n.Spec.PodCIDRs
	for _, c := range n.Status.Conditions {
		if c.Type == condNetworkUnavailable {
			out.Status.Conditions = []nodeCondition{{Type: c.Type, Status: c.Status, Reason: c.Reason}}
		}
	}
	return out
}

// sameLeaseView reports whether two trimmed Nodes carry the same lease-relevant content.
func sameLeaseView(a, b *node) bool {
	if a.Name != b.Name || a.UID != b.UID || a.Spec.PodCIDR != b.Spec.PodCIDR || len(a.Spec.PodCIDRs) != len(b.Spec.PodCIDRs) ||
		len(a.Annotations) != len(b.Annotations) {
		return false
	}
	for i := range a.Spec.PodCIDRs {
		if a.Spec.PodCIDRs[i] != b.Spec.PodCIDRs[i] {
			return false
		}
	}
	for k, v := range a.Annotations {
		if w, ok := b.Annotations[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// errNoPodCIDR means the Node has no pod CIDR yet.
var errNoPodCIDR = errors.New("pod CIDR not assigned")

// podCIDRs returns the Node's IPv4 and IPv6 pod CIDRs (spec.podCIDRs, else spec.podCIDR), masked. Either
// may be zero; both zero is errNoPodCIDR.
func podCIDRs(n *node) (v4, v6 netip.Prefix, err error) {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	if len(cidrs) == 0 {
		return v4, v6, fmt.Errorf("node %s: %w", n.Name, errNoPodCIDR)
	}
	if len(cidrs) > 2 {
		return v4, v6, fmt.Errorf("node %s: spec.podCIDRs %v: want at most one IPv4 and one IPv6 CIDR", n.Name, cidrs)
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: pod CIDR %q: %w", n.Name, c, err)
		}
		p = p.Masked()
		if p.Addr().Is4() {
			if v4.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: spec.podCIDRs %v: two IPv4 CIDRs", n.Name, cidrs)
			}
			v4 = p
		} else {
			if v6.IsValid() {
				return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("node %s: spec.podCIDRs %v: two IPv6 CIDRs", n.Name, cidrs)
			}
			v6 = p
		}
	}
	return v4, v6, nil
}

// inNetwork checks that the pod CIDRs the network enables lie inside its networks: the IPv4 CIDR inside
// Network (required with IPv4), the IPv6 CIDR (if any) inside IPv6Network.
func inNetwork(name string, cfg *subnet.Config, v4, v6 netip.Prefix) error {
	if cfg.EnableIPv4 {
		if !v4.IsValid() {
			return fmt.Errorf("node %s: no IPv4 pod CIDR, but the network config enables IPv4 (Network %s)", name, cfg.Network)
		}
		if !contains(cfg.Network, v4) {
			return fmt.Errorf("node %s: pod CIDR %s: not inside the network config's Network %s", name, v4, cfg.Network)
		}
	}
	if !cfg.EnableIPv4 && !v6.IsValid() {
		return fmt.Errorf("node %s: no IPv6 pod CIDR, but the network config is IPv6 only (IPv6Network %s)", name, cfg.IPv6Network)
	}
	if cfg.EnableIPv6 && v6.IsValid() && !contains(cfg.IPv6Network, v6) {
		return fmt.Errorf("node %s: IPv6 pod CIDR %s: not inside the network config's IPv6Network %s", name, v6, cfg.IPv6Network)
	}
	return nil
}

func contains(outer, inner netip.Prefix) bool {
	return outer.IsValid() && outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// errUnmanaged means the Node lacks the kube-subnet-manager marker: no agent announced a lease on it.
var errUnmanaged = errors.New("not managed by a kube subnet manager")

// nodeLease reads a peer's lease from its Node as flannel does: the marker must be "true", the subnet is the
// pod CIDR (inside the network), PublicIP the public-ip annotation (an IPv4 address when IPv4 is enabled),
// and the backend type and data their annotations ("null" data is none). In a network without IPv6 the
// IPv6 CIDR and annotations are ignored.
func (a Annotations) nodeLease(n *node, cfg *subnet.Config) (subnet.Lease, error) {
	ann := n.Annotations
	if ann[a.KubeSubnetManager] != "true" {
		return subnet.Lease{}, fmt.Errorf("node %s: %w", n.Name, errUnmanaged)
	}
	v4, v6, err := podCIDRs(n)
	if err != nil {
		return subnet.Lease{}, err
	}
	if err := inNetwork(n.Name, cfg, v4, v6); err != nil {
		return subnet.Lease{}, err
	}
	var l subnet.Lease
	if cfg.EnableIPv4 {
		l.Subnet = v4
		ip, err := netip.ParseAddr(ann[a.PublicIP])
		if err != nil || !ip.Is4() {
			return subnet.Lease{}, fmt.Errorf("node %s: annotation %s %q: want an IPv4 address", n.Name, a.PublicIP, ann[a.PublicIP])
		}
		l.Attrs.PublicIP = ip
		l.Attrs.BackendData = rawData(ann[a.BackendData])
	}
	if cfg.EnableIPv6 && v6.IsValid() {
		l.IPv6Subnet = v6
		if s := ann[a.PublicIPv6]; s != "" {
			ip, err := netip.ParseAddr(s)
			if err != nil || !ip.Is6() || ip.Is4In6() {
				return subnet.Lease{}, fmt.Errorf("node %s: annotation %s %q: want an IPv6 address", n.Name, a.PublicIPv6, s)
			}
			l.Attrs.PublicIPv6 = ip
		}
		l.Attrs.BackendV6Data = rawData(ann[a.BackendV6Data])
	}
	l.Attrs.BackendType = ann[a.BackendType]
	return l, nil
}

// rawData is an annotation's JSON as BackendData: empty and "null" are none.
func rawData(s string) json.RawMessage {
	if s == "" || s == "null" {
		return nil
	}
	return json.RawMessage(s)
}

// dataString is BackendData as flannel writes it into an annotation: "null" for none.
func dataString(d json.RawMessage) string {
	if len(d) == 0 {
		return "null"
	}
	return string(d)
}

// published returns the PublicIP (and PublicIPv6) this node advertises: the public-ip-overwrite annotation
// when an admin set it (and it parses), else the agent's own. It also returns what to log when an overwrite
// is ignored.
func (a Annotations) published(n *node, attrs subnet.Attrs) (v4, v6 netip.Addr, problems []string) {
	v4, v6 = attrs.PublicIP, attrs.PublicIPv6
	if s := n.Annotations[a.PublicIPOverwrite]; s != "" {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is4() {
			v4 = ip
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s %q: not an IPv4 address; ignored", a.PublicIPOverwrite, s))
		}
	}
	if s := n.Annotations[a.PublicIPv6Overwrite]; s != "" && attrs.PublicIPv6.IsValid() {
		if ip, err := netip.ParseAddr(s); err == nil && ip.Is6() && !ip.Is4In6() {
			v6 = ip
		} else {
			problems = append(problems, fmt.Sprintf("annotation %s %q: not an IPv6 address; ignored", a.PublicIPv6Overwrite, s))
		}
	}
	return v4, v6, problems
}

// wantAnnotations returns the annotations this node's lease needs, byte for byte as flanneld writes them,
// and the subset that the Node does not carry yet (nil: nothing to patch). v6 ones only with a PublicIPv6.
func (a Annotations) wantAnnotations(n *node, attrs subnet.Attrs, pub4, pub6 netip.Addr) (want, patch map[string]string) {
	want = map[string]string{
		a.KubeSubnetManager: "true",
		a.BackendType:       attrs.BackendType,
	}
	if pub4.IsValid() { // none IPv6 only
		want[a.BackendData], want[a.PublicIP] = dataString(attrs.BackendData), pub4.String()
	}
	if pub6.IsValid() {
		want[a.BackendV6Data] = dataString(attrs.BackendV6Data)
		want[a.PublicIPv6] = pub6.String()
	}
	for k, v := range want {
		if have, ok := n.Annotations[k]; !ok || have != v {
			if patch == nil {
				patch = map[string]string{}
			}
			patch[k] = v
		}
	}
	return want, patch
}

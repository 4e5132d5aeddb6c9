package kubestore

import (
	"encoding/json"
	"errors"
	"maps"
	"net/netip"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/subnet"
)

func TestNewAnnotations(t *testing.T) {
	for _, tc := range []struct {
		prefix, wantData, wantErr string
	}{
		{"flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-data", ""},
		{"flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-data", ""},
		{"example.com/weft", "example.com/weft-backend-data", ""},
		{"example.com/weft-", "example.com/weft-backend-data", ""},
		{"example.com/a/b", "", "at most one slash"},
		{"Example.com", "", "want a DNS name"},
		{"nodots", "", "want a DNS name"},
	} {
		a, err := NewAnnotations(tc.prefix)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("NewAnnotations(%q) error %v, want one containing %q", tc.prefix, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("NewAnnotations(%q): %v", tc.prefix, err)
		case a.BackendData != tc.wantData:
			t.Errorf("NewAnnotations(%q).BackendData = %q, want %q", tc.prefix, a.BackendData, tc.wantData)
		}
	}
}

func mustConfig(t *testing.T, js string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// flannelNode is a Node as kube-flannel (vxlan) leaves it.
func flannelNode(name, podCIDR string, extra map[string]string) *node {
	ann := map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.0.2.12",
		"node.alpha.kubernetes.io/ttl":                 "0",
	}
	maps.Copy(ann, extra)
	for k, v := range extra {
		if v == "" {
			delete(ann, k)
		}
	}
	n := &node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if podCIDR != "" {
		n.Spec.PodCIDR = podCIDR
		n.Spec.PodCIDRs = strings.Split(podCIDR, ",")
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	return n
}

func TestNodeLease(t *testing.T) {
	a, _ := NewAnnotations(DefaultAnnotationPrefix)
	v4 := mustConfig(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	dual := mustConfig(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`)
	for _, tc := range []struct {
		name    string
		node    *node
		cfg     *subnet.Config
		want    string // subnet, ipv6 subnet, public ip, type, data
		wantErr string
		is      error
	}{
		{"kube-flannel vxlan node", flannelNode("n2", "10.244.2.0/24", nil), v4,
			`10.244.2.0/24 invalid Prefix 192.0.2.12 vxlan {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "", nil},
		{"spec.podCIDR only", func() *node { n := flannelNode("n2", "10.244.2.0/24", nil); n.Spec.PodCIDRs = nil; return n }(), v4,
			`10.244.2.0/24 invalid Prefix 192.0.2.12 vxlan {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "", nil},
		{"host-gw writes null data", flannelNode("n2", "10.244.2.0/24", map[string]string{a.BackendType: "host-gw", a.BackendData: "null"}), v4,
			`10.244.2.0/24 invalid Prefix 192.0.2.12 host-gw `, "", nil},
		{"dual stack", flannelNode("n2", "10.244.2.0/24,fd00:10:244:2::/64", map[string]string{a.PublicIPv6: "2001:db8::12"}), dual,
			`10.244.2.0/24 fd00:10:244:2::/64 192.0.2.12 vxlan {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "", nil},
		{"IPv6 CIDR ignored without EnableIPv6", flannelNode("n2", "10.244.2.0/24,fd00:10:244:2::/64", nil), v4,
			`10.244.2.0/24 invalid Prefix 192.0.2.12 vxlan {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "", nil},
		{"no marker", flannelNode("n2", "10.244.2.0/24", map[string]string{a.KubeSubnetManager: ""}), v4, "", "", errUnmanaged},
		{"no pod CIDR", flannelNode("n2", "", nil), v4, "", "", errNoPodCIDR},
		{"pod CIDR outside Network", flannelNode("n2", "10.9.2.0/24", nil), v4, "", "not inside the network config's Network 10.244.0.0/16", nil},
		{"bad public-ip", flannelNode("n2", "10.244.2.0/24", map[string]string{a.PublicIP: "2001:db8::1"}), v4, "", `public-ip "2001:db8::1": want an IPv4 address`, nil},
		{"three pod CIDRs", flannelNode("n2", "10.244.2.0/24,fd00::/64,10.244.3.0/24", nil), v4, "", "at most one IPv4 and one IPv6", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := a.nodeLease(tc.node, tc.cfg)
			if tc.wantErr != "" || tc.is != nil {
				if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q (is %v)", err, tc.wantErr, tc.is)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join([]string{l.Subnet.String(), l.IPv6Subnet.String(), l.Attrs.PublicIP.String(), l.Attrs.BackendType, string(l.Attrs.BackendData)}, " ")
			if got != tc.want {
				t.Errorf("lease %q, want %q", got, tc.want)
			}
		})
	}
}

// TestWantAnnotations checks the annotations weftd writes, byte for byte as flanneld writes them, and that
// only what differs is patched.
func TestWantAnnotations(t *testing.T) {
	a, _ := NewAnnotations(DefaultAnnotationPrefix)
	attrs := subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`)}
	fresh := &node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: map[string]string{"other": "x"}}}
	pub4, pub6, problems := a.published(fresh, attrs)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	want, patch := a.wantAnnotations(fresh, attrs, pub4, pub6)
	golden := map[string]string{
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`,
		"flannel.alpha.coreos.com/public-ip":           "192.0.2.11",
	}
	if !maps.Equal(want, golden) || !maps.Equal(patch, golden) {
		t.Errorf("fresh node: want %v, patch %v; want both %v", want, patch, golden)
	}

	done := &node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: maps.Clone(golden)}}
	if _, patch := a.wantAnnotations(done, attrs, pub4, pub6); patch != nil {
		t.Errorf("annotated node: patch %v, want none", patch)
	}

	// An admin's public-ip-overwrite is published instead; a bad one is ignored and reported.
	over := &node{ObjectMeta: metav1.ObjectMeta{Name: "n1", Annotations: maps.Clone(golden)}}
	over.Annotations[a.PublicIPOverwrite] = "203.0.113.7"
	pub4, _, _ = a.published(over, attrs)
	if _, patch := a.wantAnnotations(over, attrs, pub4, netip.Addr{}); !maps.Equal(patch, map[string]string{a.PublicIP: "203.0.113.7"}) {
		t.Errorf("public-ip-overwrite: patch %v, want only public-ip 203.0.113.7", patch)
	}
	over.Annotations[a.PublicIPOverwrite] = "not-an-ip"
	if pub4, _, problems := a.published(over, attrs); pub4 != attrs.PublicIP || len(problems) != 1 {
		t.Errorf("bad overwrite: published %s, problems %v; want %s and one problem", pub4, problems, attrs.PublicIP)
	}

	// host-gw has no backend data: flanneld writes "null".
	hg := subnet.Attrs{PublicIP: attrs.PublicIP, BackendType: "host-gw"}
	if want, _ := a.wantAnnotations(fresh, hg, hg.PublicIP, netip.Addr{}); want[a.BackendData] != "null" {
		t.Errorf("host-gw backend-data = %q, want null", want[a.BackendData])
	}
}

// TestTrimIgnoresHeartbeats checks that what a kubelet heartbeat changes (status, resource version, other
// annotations) leaves the trimmed Node's lease view equal, and that pod CIDR and annotation changes do not.
func TestTrimIgnoresHeartbeats(t *testing.T) {
	a, _ := NewAnnotations(DefaultAnnotationPrefix)
	base := flannelNode("n2", "10.244.2.0/24", nil)
	base.ResourceVersion = "100"
	beat := base.DeepCopy()
	beat.ResourceVersion = "101"
	beat.Annotations["node.alpha.kubernetes.io/ttl"] = "15"
	beat.Status.Conditions = []nodeCondition{{Type: "Ready", Status: "True", LastHeartbeatTime: metav1.Now()}}
	if !sameLeaseView(a.trim(base), a.trim(beat)) {
		t.Error("a heartbeat changed the lease view")
	}
	for name, mod := range map[string]func(n *node){
		"backend-data": func(n *node) { n.Annotations[a.BackendData] = `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}` },
		"public-ipv6":  func(n *node) { n.Annotations[a.PublicIPv6] = "2001:db8::12" },
		"marker gone":  func(n *node) { delete(n.Annotations, a.KubeSubnetManager) },
		"pod CIDRs":    func(n *node) { n.Spec.PodCIDRs = append(n.Spec.PodCIDRs, "fd00::/64") },
		"recreated":    func(n *node) { n.UID = "other" },
	} {
		n := base.DeepCopy()
		mod(n)
		if sameLeaseView(a.trim(base), a.trim(n)) {
			t.Errorf("%s: change not seen in the lease view", name)
		}
	}
	if got := a.trim(beat); len(got.Annotations) != 4 || got.Status.Conditions != nil {
		t.Errorf("trimmed node keeps %v and conditions %v; want the 4 flannel annotations and no Ready condition", got.Annotations, got.Status.Conditions)
	}
}

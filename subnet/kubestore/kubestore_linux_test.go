package kubestore_test

// The kube tier: the store against a real kube-apiserver (and etcd) in a throwaway network namespace
// (dist/kubetest). Skipped unless root and the apiserver is built; with WEFT_E2E=1 a missing prerequisite
// fails.

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/dist/kubetest"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/kubestore"
)

const (
	pfx     = "flannel.alpha.coreos.com/"
	netConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
)

// kube is one test's API server, admin client and network config file.
type kube struct {
	env        *kubetest.Env
	cli        *kubernetes.Clientset
	netConf    string
	kubeconfig string
}

func newKube(t *testing.T) *kube {
	kubetest.Require(t)
	env := kubetest.NewEnv(t)
	cli, err := env.Client()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(p, []byte(netConf), 0o644); err != nil {
		t.Fatal(err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kc); err != nil {
		t.Fatal(err)
	}
	return &kube{env: env, cli: cli, netConf: p, kubeconfig: kc}
}

func (k *kube) store(t *testing.T, node string) *kubestore.Store {
	t.Helper()
	s, err := kubestore.New(t.Context(), kubestore.Config{
		Kubeconfig: k.kubeconfig, NodeName: node, NetConfPath: k.netConf, SetNodeNetworkUnavailable: true, Dial: k.env.Dial,
	}, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.Config(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

// createNode creates a Node with the given pod CIDRs (comma-separated; "" for none) and annotations.
func (k *kube) createNode(t *testing.T, name, cidrs string, ann map[string]string) *corev1.Node {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	if cidrs != "" {
		n.Spec.PodCIDRs = strings.Split(cidrs, ",")
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	n, err := k.cli.CoreV1().Nodes().Create(t.Context(), n, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	return n
}

func (k *kube) patchNode(t *testing.T, name, patch string, sub ...string) {
	t.Helper()
	if _, err := k.cli.CoreV1().Nodes().Patch(t.Context(), name, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}, sub...); err != nil {
		t.Fatalf("patch node %s with %s: %v", name, patch, err)
	}
}

func (k *kube) getNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := k.cli.CoreV1().Nodes().Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get node %s: %v", name, err)
	}
	return n
}

// flannelAnn returns the annotations kube-flannel (vxlan) writes for a node with public IP ip.
func flannelAnn(ip, mac string) map[string]string {
	return map[string]string{
		pfx + "kube-subnet-manager": "true",
		pfx + "backend-type":        "vxlan",
		pfx + "backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		pfx + "public-ip":           ip,
	}
}

// holdEvent is one call of Hold's callback.
type holdEvent struct {
	lease subnet.Lease
	held  bool
}

func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
	var zero T
	return zero
}

func expectNone[T any](t *testing.T, ch <-chan T, d time.Duration, what string) {
	t.Helper()
	select {
	case v := <-ch:
		t.Fatalf("unexpected %s: %+v", what, v)
	case <-time.After(d):
	}
}

func startHold(t *testing.T, s *kubestore.Store, attrs subnet.Attrs) <-chan holdEvent {
	ch := make(chan holdEvent, 16)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Hold(ctx, subnet.AcquireRequest{Attrs: attrs}, func(l subnet.Lease, held bool) { ch <- holdEvent{l, held} }); err != nil {
			t.Errorf("Hold: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ch
}

// startWatch runs Watch until the test ends and returns the sets it delivers.
func startWatch(t *testing.T, s *kubestore.Store) <-chan []subnet.Lease {
	sets := make(chan []subnet.Lease, 16)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Watch(ctx, func(ls []subnet.Lease) { sets <- ls }); err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return sets
}

// TestHold follows one node through its life: no pod CIDR yet (Hold waits), the CIDR assigned (the lease,
// flanneld's annotations byte for byte, NetworkUnavailable=False), an admin removing an annotation
// (written again), public-ip-overwrite (published instead), the Node deleted (lease lost) and created again
// with another CIDR (the new lease).
func TestHold(t *testing.T) {
	k := newKube(t)
	k.createNode(t, "n1", "", map[string]string{"other.example.com/keep": "yes"})
	s := k.store(t, "n1")
	attrs := subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`)}
	ev := startHold(t, s, attrs)

	expectNone(t, ev, 2*time.Second, "lease before the pod CIDR is assigned")
	if ann := k.getNode(t, "n1").Annotations; ann[pfx+"kube-subnet-manager"] != "" {
		t.Errorf("annotations written before the pod CIDR was assigned: %v", ann)
	}

	k.patchNode(t, "n1", `{"spec":{"podCIDR":"10.244.1.0/24","podCIDRs":["10.244.1.0/24"]}}`)
	e := waitFor(t, ev, "the lease after the pod CIDR was assigned")
	if !e.held || e.lease.Subnet != netip.MustParsePrefix("10.244.1.0/24") || e.lease.Attrs.PublicIP != attrs.PublicIP {
		t.Fatalf("hold event %+v, want held 10.244.1.0/24 with PublicIP 192.0.2.11", e)
	}
	n := k.getNode(t, "n1")
	want := map[string]string{
		"other.example.com/keep":    "yes",
		pfx + "kube-subnet-manager": "true",
		pfx + "backend-type":        "vxlan",
		pfx + "backend-data":        `{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`,
		pfx + "public-ip":           "192.0.2.11",
	}
	if !maps.Equal(n.Annotations, want) {
		t.Errorf("node annotations\n got %v\nwant %v", n.Annotations, want)
	}
	var cond *corev1.NodeCondition
	for i := range n.Status.Conditions {
		if n.Status.Conditions[i].Type == corev1.NodeNetworkUnavailable {
			cond = &n.Status.Conditions[i]
		}
	}
	if cond == nil || cond.Status != corev1.ConditionFalse || cond.Reason != "FlannelIsUp" {
		t.Errorf("NetworkUnavailable condition %+v, want False, reason FlannelIsUp", cond)
	}

	// An admin removes the backend data: written again, no new lease event.
	k.patchNode(t, "n1", `{"metadata":{"annotations":{"`+pfx+`backend-data":null}}}`)
	deadline := time.Now().Add(10 * time.Second)
	for k.getNode(t, "n1").Annotations[pfx+"backend-data"] != want[pfx+"backend-data"] {
		if time.Now().After(deadline) {
			t.Fatal("backend-data removed by an admin was not written again within 10s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	expectNone(t, ev, 500*time.Millisecond, "hold event after rewriting an annotation")

	// public-ip-overwrite: published as public-ip, and the lease carries it.
	k.patchNode(t, "n1", `{"metadata":{"annotations":{"`+pfx+`public-ip-overwrite":"203.0.113.7"}}}`)
	e = waitFor(t, ev, "the lease after public-ip-overwrite")
	if !e.held || e.lease.Attrs.PublicIP != netip.MustParseAddr("203.0.113.7") {
		t.Errorf("after public-ip-overwrite: %+v, want held with PublicIP 203.0.113.7", e)
	}
	if got := k.getNode(t, "n1").Annotations[pfx+"public-ip"]; got != "203.0.113.7" {
		t.Errorf("public-ip annotation %q after the overwrite, want 203.0.113.7", got)
	}

	// The Node is deleted: the lease is lost. Created again with another CIDR: the new lease.
	if err := k.cli.CoreV1().Nodes().Delete(t.Context(), "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if e = waitFor(t, ev, "lease loss after the node was deleted"); e.held {
		t.Fatalf("after deleting the node: %+v, want a lost lease", e)
	}
	k.createNode(t, "n1", "10.244.9.0/24", nil)
	e = waitFor(t, ev, "the lease of the recreated node")
	if !e.held || e.lease.Subnet != netip.MustParsePrefix("10.244.9.0/24") {
		t.Errorf("recreated node: %+v, want held 10.244.9.0/24", e)
	}
	if got := k.getNode(t, "n1").Annotations[pfx+"public-ip"]; got != "192.0.2.11" {
		t.Errorf("recreated node's public-ip %q, want 192.0.2.11", got)
	}
}

// TestWatch checks the complete peer set: kube-flannel nodes and this node count, an unmanaged node and one
// without a pod CIDR do not; a status heartbeat delivers nothing; annotation (also IPv6-only) changes and
// deletions are delivered.
func TestWatch(t *testing.T) {
	k := newKube(t)
	k.createNode(t, "n1", "10.244.1.0/24", flannelAnn("192.0.2.11", "82:1f:5e:aa:01:01"))
	k.createNode(t, "n2", "10.244.2.0/24,fd00:10:244:2::/64", maps.Collect(func(yield func(string, string) bool) {
		for k, v := range flannelAnn("192.0.2.12", "82:1f:5e:aa:01:02") {
			yield(k, v)
		}
		yield(pfx+"public-ipv6", "2001:db8::12")
		yield(pfx+"backend-v6-data", `{"VNI":1,"VtepMAC":"82:1f:5e:aa:06:02"}`)
	}))
	k.createNode(t, "plain", "10.244.3.0/24", nil)
	k.createNode(t, "waiting", "", flannelAnn("192.0.2.14", "82:1f:5e:aa:01:04"))
	s := k.store(t, "n1")

	sets := startWatch(t, s)
	// The same store's WatchChanges, applied to a map, must give the same sets, each change alone.
	batches := make(chan subnet.Changes, 16)
	go s.WatchChanges(t.Context(), func(c subnet.Changes) { batches <- c })
	applied := map[string]subnet.Lease{}
	str := func(ls []subnet.Lease) string {
		var b []string
		for _, l := range ls {
			b = append(b, l.Subnet.String()+"/"+l.IPv6Subnet.String()+"@"+l.Attrs.PublicIP.String()+"/"+l.Attrs.PublicIPv6.String()+"="+string(l.Attrs.BackendData)+"|"+string(l.Attrs.BackendV6Data))
		}
		return strings.Join(b, " ")
	}
	expect := func(what, want string) {
		t.Helper()
		if got := str(waitFor(t, sets, what)); got != want {
			t.Errorf("%s:\n got %s\nwant %s", what, got, want)
		}
		c := waitFor(t, batches, what+" (changes)")
		if c.Full != (len(applied) == 0 && what == "first set") {
			t.Errorf("%s: changes batch Full=%v", what, c.Full)
		}
		if !c.Full && len(c.Put)+len(c.Deleted) > 2 {
			t.Errorf("%s: a one-node change gave %d puts and %d deletes", what, len(c.Put), len(c.Deleted))
		}
		for _, l := range c.Deleted {
			delete(applied, l.Key())
		}
		for _, l := range c.Put {
			applied[l.Key()] = l
		}
		set := slices.SortedFunc(maps.Values(applied), subnet.CompareLeases)
		if got := str(set); got != want {
			t.Errorf("%s, from WatchChanges:\n got %s\nwant %s", what, got, want)
		}
	}
	n1 := `10.244.1.0/24/invalid Prefix@192.0.2.11/invalid IP={"VNI":1,"VtepMAC":"82:1f:5e:aa:01:01"}|`
	n2 := `10.244.2.0/24/fd00:10:244:2::/64@192.0.2.12/2001:db8::12={"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}|{"VNI":1,"VtepMAC":"82:1f:5e:aa:06:02"}`
	expect("first set", n1+" "+n2)

	// A kubelet heartbeat: status and an unrelated annotation change; nothing is delivered.
	hb := k.getNode(t, "n2")
	hb.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now()}}
	if _, err := k.cli.CoreV1().Nodes().UpdateStatus(t.Context(), hb, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.patchNode(t, "n2", `{"metadata":{"annotations":{"node.alpha.kubernetes.io/ttl":"0"}}}`)
	expectNone(t, sets, time.Second, "delivery after a heartbeat")
	expectNone(t, batches, 100*time.Millisecond, "changes after a heartbeat")

	// An IPv6-only annotation change (flanneld misses it in dual stack).
	k.patchNode(t, "n2", `{"metadata":{"annotations":{"`+pfx+`backend-v6-data":"{\"VNI\":1,\"VtepMAC\":\"82:1f:5e:aa:06:22\"}"}}}`)
	expect("after an IPv6 backend data change", n1+" "+strings.Replace(n2, "06:02", "06:22", 1))
	n2 = strings.Replace(n2, "06:02", "06:22", 1)

	// The waiting node gets its pod CIDR: it joins.
	k.patchNode(t, "waiting", `{"spec":{"podCIDR":"10.244.4.0/24","podCIDRs":["10.244.4.0/24"]}}`)
	n4 := `10.244.4.0/24/invalid Prefix@192.0.2.14/invalid IP={"VNI":1,"VtepMAC":"82:1f:5e:aa:01:04"}|`
	expect("after a pod CIDR was assigned", n1+" "+n2+" "+n4)

	// A node is deleted.
	if err := k.cli.CoreV1().Nodes().Delete(t.Context(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("after deleting n2", n1+" "+n4)
}

// TestNodeInfo reads an admin's node-public-ip and the backend data published before (the VtepMAC a
// restarted vxlan backend keeps).
func TestNodeInfo(t *testing.T) {
	k := newKube(t)
	ann := flannelAnn("192.0.2.11", "82:1f:5e:aa:01:01")
	ann[pfx+"node-public-ip"] = "198.51.100.11"
	k.createNode(t, "n1", "10.244.1.0/24", ann)
	info, err := k.store(t, "n1").NodeInfo(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if info.PublicIP != netip.MustParseAddr("198.51.100.11") || info.BackendType != "vxlan" || string(info.BackendData) != ann[pfx+"backend-data"] {
		t.Errorf("NodeInfo %+v, want node-public-ip 198.51.100.11 and the vxlan backend data", info)
	}
}

// TestWatchResumesAfterAPIServerRestart stops the API server under a running Watch: nothing is delivered
// while it is away (the last set stays), and after its return the informer lists and watches again, so a
// later deletion is delivered.
func TestWatchResumesAfterAPIServerRestart(t *testing.T) {
	k := newKube(t)
	k.createNode(t, "n1", "10.244.1.0/24", flannelAnn("192.0.2.11", "82:1f:5e:aa:01:01"))
	k.createNode(t, "n2", "10.244.2.0/24", flannelAnn("192.0.2.12", "82:1f:5e:aa:01:02"))
	s := k.store(t, "n1")
	sets := startWatch(t, s)
	if ls := waitFor(t, sets, "first set"); len(ls) != 2 {
		t.Fatalf("first set %v, want 2 leases", ls)
	}
	k.env.StopAPIServer()
	expectNone(t, sets, 3*time.Second, "delivery while the API server is down")
	k.env.StartAPIServer()
	if err := k.cli.CoreV1().Nodes().Delete(t.Context(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ls := waitFor(t, sets, "the set after the API server came back and n2 was deleted")
	if len(ls) != 1 || ls[0].Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Errorf("set %v, want only n1's 10.244.1.0/24", ls)
	}
}

// TestLeastPrivilege runs the store as kube-weft.yml's service account, with exactly that manifest's
// ClusterRole (pods get, nodes get/list/watch, nodes/status patch) and no NODE_NAME: the node is found from
// the pod, the lease is announced with the condition set, and the peer set is watched.
func TestLeastPrivilege(t *testing.T) {
	k := newKube(t)
	ctx := t.Context()
	manifest, err := os.ReadFile("../../dist/kubernetes/kube-weft.yml")
	if err != nil {
		t.Fatal(err)
	}
	var role *rbacv1.ClusterRole
	for _, doc := range strings.Split(string(manifest), "\n---\n") {
		if strings.Contains(doc, "\nkind: ClusterRole\n") { // not roleRef's indented kind
			role = &rbacv1.ClusterRole{}
			if err := yaml.Unmarshal([]byte(doc), role); err != nil {
				t.Fatal(err)
			}
		}
	}
	if role == nil || role.Name != "flannel" || len(role.Rules) != 3 {
		t.Fatalf("no ClusterRole flannel in kube-weft.yml: %+v", role)
	}
	const ns = "kube-flannel"
	core, rbac := k.cli.CoreV1(), k.cli.RbacV1()
	if _, err := core.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "flannel"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "flannel"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "flannel"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "flannel", Namespace: ns}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := core.ServiceAccounts(ns).CreateToken(ctx, "flannel", &authv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A pod bound to n1, as the DaemonSet's would be (no controllers run here, so it is created bound).
	if _, err := core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := core.Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds-x"},
		Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "kube-flannel", Image: "weftd"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k.createNode(t, "n1", "10.244.1.0/24", nil)
	k.createNode(t, "n2", "10.244.2.0/24", flannelAnn("192.0.2.12", "82:1f:5e:aa:01:02"))

	kc := filepath.Join(t.TempDir(), "sa-kubeconfig")
	if err := k.env.WriteKubeconfigToken(kc, tok.Status.Token); err != nil {
		t.Fatal(err)
	}
	// The RBAC authorizer sees a new binding after a moment; weftd retries opening its store the same way.
	var s *kubestore.Store
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		s, err = kubestore.New(ctx, kubestore.Config{
			Kubeconfig: kc, PodName: "kube-flannel-ds-x", PodNamespace: ns, NetConfPath: k.netConf,
			SetNodeNetworkUnavailable: true, Dial: k.env.Dial,
		}, slog.New(slog.NewTextHandler(t.Output(), nil)))
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("store as the flannel service account: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	if s.NodeName() != "n1" {
		t.Fatalf("node name %q from the pod, want n1", s.NodeName())
	}
	if _, err := s.NodeInfo(ctx); err != nil {
		t.Errorf("NodeInfo as the service account: %v", err)
	}
	ev := startHold(t, s, subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "host-gw"})
	if e := waitFor(t, ev, "the lease as the service account"); !e.held || e.lease.Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("hold event %+v, want held 10.244.1.0/24", e)
	}
	n := k.getNode(t, "n1")
	if n.Annotations[pfx+"backend-data"] != "null" || n.Annotations[pfx+"backend-type"] != "host-gw" {
		t.Errorf("annotations %v, want host-gw with backend-data null", n.Annotations)
	}
	if !slicesContainsCondition(n.Status.Conditions) {
		t.Errorf("no NetworkUnavailable=False condition: %+v", n.Status.Conditions)
	}
	sets := startWatch(t, s)
	if ls := waitFor(t, sets, "the peer set as the service account"); len(ls) != 2 {
		t.Errorf("peer set %v, want n1 and n2", ls)
	}
}

func slicesContainsCondition(cs []corev1.NodeCondition) bool {
	for _, c := range cs {
		if c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp" {
			return true
		}
	}
	return false
}

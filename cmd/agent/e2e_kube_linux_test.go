package main_test

// The kube-mode end-to-end scenarios: real weftd binaries with --kube-subnet-mgr in a netns cluster against a
// real kube-apiserver (dist/kubetest) that runs in the cluster's etcd namespace (192.0.2.2:6443) on the
// cluster's etcd. Gate: as the e2e tier, plus the built apiserver (kubetest.Require).

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/dist/kubetest"
)

// kubeE2E is the kube-mode cluster under test.
type kubeE2E struct {
	*netcluster.Cluster
	flanneld   map[string]bool // nodes that run flannel's flanneld instead of weftd
	image      map[string]bool // nodes that run the weftd image with podman
	podmanConf string          // CONTAINERS_CONF for podman (from build-image.sh)
	dir        string
	kubeconfig string
	netConf    string
	netConfs   map[string]string // a node's own net-conf.json in place of netConf (image nodes)
	srv        *kubetest.Server
	cli        *kubernetes.Clientset
	// conf is net-conf.json ("": IPv4 10.244.0.0/16, vxlan); podCIDRs gives node i's pod CIDRs (nil:
	// 10.244.<i>.0/24).
	conf     string
	podCIDRs func(i int) []string
}

func TestE2EKube(t *testing.T) {
	requireE2E(t)
	kubetest.Require(t)
	dir := t.TempDir()
	k := &kubeE2E{dir: dir, kubeconfig: filepath.Join(dir, "kubeconfig"), netConf: filepath.Join(dir, "net-conf.json"), flanneld: map[string]bool{}, image: map[string]bool{}, netConfs: map[string]string{}}
	k.Cluster = startCluster(t, netcluster.Options{
		Backend:    "vxlan",
		Network:    "10.244.0.0/16",
		Nodes:      3,
		Dir:        dir,
		AgentStore: k.agentStore,
		ReadyPath:  k.readyPath,
		Setup:      k.setup,
		Timeout:    90 * time.Second,
	}, func() {
		b, _ := os.ReadFile(filepath.Join(dir, "kube-apiserver.log"))
		lines := strings.Split(string(b), "\n")
		t.Logf("===== kube-apiserver.log (last 40 lines) =====\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
	})
	t.Run("1-traffic", k.traffic)
	t.Run("2-annotations", k.annotations)
	t.Run("3-join-later", k.joinLater)
	t.Run("4-node-deleted", k.nodeDeleted)
	t.Run("5-node-deleted-while-down", k.deletedWhileDown)
	t.Run("6-api-server-down-at-start", k.apiServerDownAtStart)
	t.Run("7-flanneld-node", k.flanneldNode)
	t.Run("8-flanneld-replaced-by-weftd", k.migrate)
	t.Run("9-image-with-podman", k.imageNode)
	t.Run("10-weftd-replaced-by-flanneld", k.rollback)
}

// agentStore is the start of a node's agent command line in kube mode, with kube-flannel.yml's (and
// kube-weft.yml's) --ip-masq: weftd, or flannel's flanneld with the same flags (they share their names).
func (k *kubeE2E) agentStore(n *netcluster.Node) []string {
	if k.image[n.Name] {
		return k.podmanAgent(n)
	}
	bin := weftdBin
	if k.flanneld[n.Name] {
		bin = kubetest.FlanneldBin()
	}
	return []string{"env", "NODE_NAME=" + n.Name, bin, "--ip-masq", "--kube-subnet-mgr", "--kubeconfig-file", k.kubeconfig, "--net-config-path", cmp.Or(k.netConfs[n.Name], k.netConf)}
}

// readyPath is /readyz for weftd; flanneld serves only /healthz.
func (k *kubeE2E) readyPath(n *netcluster.Node) string {
	if k.flanneld[n.Name] {
		return "/healthz"
	}
	return "/readyz"
}

// setup starts kube-apiserver in the etcd namespace, writes the kubeconfig and net-conf.json, and creates a
// Node with pod CIDR 10.244.<i>.0/24 for each node.
func (k *kubeE2E) setup(ctx context.Context, c *netcluster.Cluster, nodes []*netcluster.Node) error {
	srv, err := kubetest.NewServer(filepath.Join(k.dir, "apiserver"), c.Etcd, netip.AddrPortFrom(netcluster.EtcdAddr, 6443), c.EtcdURL)
	if err != nil {
		return err
	}
	k.srv = srv
	if err := c.StartService("kube-apiserver", c.Etcd, srv.Argv()...); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := srv.WaitReady(wctx, nil); err != nil {
		return err
	}
	if k.cli, err = srv.Client(); err != nil {
		return err
	}
	if err := srv.WriteKubeconfig(k.kubeconfig); err != nil {
		return err
	}
	conf := k.conf
	if conf == "" {
		conf = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	}
	if err := os.WriteFile(k.netConf, []byte(conf), 0o644); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := k.createNode(ctx, n.Name, n.Index, nil); err != nil {
			return err
		}
	}
	return nil
}

func (k *kubeE2E) createNode(ctx context.Context, name string, i int, ann map[string]string) error {
	cidrs := []string{fmt.Sprintf("10.244.%d.0/24", i)}
	if k.podCIDRs != nil {
		cidrs = k.podCIDRs(i)
	}
	_, err := k.cli.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec:       corev1.NodeSpec{PodCIDR: cidrs[0], PodCIDRs: cidrs},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	return nil
}

func (k *kubeE2E) ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// pair checks ICMP and TCP from one node's container to another's.
func (k *kubeE2E) pair(t *testing.T, ctx context.Context, from, to *netcluster.Node) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := k.WaitPing(wctx, from, to.ContainerIP()); err != nil {
		t.Errorf("%s → %s: %v", from.Name, to.Name, err)
		return
	}
	if err := k.TCP(ctx, from, to, 256<<10); err != nil {
		t.Error(err)
	}
}

// Scenario 1: every node took its Node's pod CIDR; ICMP and TCP between the containers of every ordered pair.
func (k *kubeE2E) traffic(t *testing.T) {
	ctx := k.ctx(t, 3*time.Minute)
	nodes := k.Nodes()
	for _, n := range nodes {
		if want := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", n.Index)); n.Subnet() != want {
			t.Errorf("node %s: subnet %s, want its pod CIDR %s", n.Name, n.Subnet(), want)
		}
	}
	for _, from := range nodes {
		for _, to := range nodes {
			if from != to {
				k.pair(t, ctx, from, to)
			}
		}
	}
}

// Scenario 2: each Node carries flanneld's annotations byte for byte (the VtepMAC is the device's) and
// NetworkUnavailable=False.
func (k *kubeE2E) annotations(t *testing.T) {
	ctx := k.ctx(t, time.Minute)
	for _, n := range k.Nodes() {
		node, err := k.cli.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		mac := deviceMAC(t, n.NS, "flannel.1")
		want := map[string]string{
			"flannel.alpha.coreos.com/kube-subnet-manager": "true",
			"flannel.alpha.coreos.com/backend-type":        "vxlan",
			"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
			"flannel.alpha.coreos.com/public-ip":           n.Addr.String(),
		}
		if !maps.Equal(node.Annotations, want) {
			t.Errorf("node %s annotations\n got %v\nwant %v", n.Name, node.Annotations, want)
		}
		ok := false
		for _, c := range node.Status.Conditions {
			ok = ok || (c.Type == corev1.NodeNetworkUnavailable && c.Status == corev1.ConditionFalse && c.Reason == "FlannelIsUp")
		}
		if !ok {
			t.Errorf("node %s: no NetworkUnavailable=False (FlannelIsUp) condition: %+v", n.Name, node.Status.Conditions)
		}
	}
}

// deviceMAC returns the MAC of dev in ns.
func deviceMAC(t *testing.T, ns *kerneltest.NS, dev string) string {
	t.Helper()
	f := strings.Fields(ns.MustIP(t, "-o", "link", "show", dev))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC for %s in %s", dev, ns.Name)
	return ""
}

// Scenario 3: a node whose Node is created later joins, and every node reaches it.
func (k *kubeE2E) joinLater(t *testing.T) {
	ctx := k.ctx(t, 3*time.Minute)
	i := len(k.Nodes()) + 1
	if err := k.createNode(ctx, fmt.Sprintf("n%d", i), i, nil); err != nil {
		t.Fatal(err)
	}
	n, err := k.AddNode(ctx)
	if err != nil {
		t.Fatalf("add node: %v", err)
	}
	for _, m := range k.Nodes()[:i-1] {
		k.pair(t, ctx, n, m)
		k.pair(t, ctx, m, n)
	}
}

// hasRoute reports whether ns has a route to dst (its text for the failure message).
func hasRoute(ns *kerneltest.NS, dst netip.Prefix) (bool, string) {
	out, err := ns.IP("route", "show", dst.String())
	return err == nil && strings.TrimSpace(out) != "", out
}

// Scenario 4: a deleted Node's subnet disappears from every other node's kernel.
func (k *kubeE2E) nodeDeleted(t *testing.T) {
	ctx := k.ctx(t, time.Minute)
	gone := k.Node(3)
	if err := k.cli.CoreV1().Nodes().Delete(ctx, gone.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range k.Nodes() {
		if n == gone {
			continue
		}
		waitFor(t, 20*time.Second, fmt.Sprintf("node %s drops the route to deleted %s", n.Name, gone.Name), func() (bool, string) {
			ok, out := hasRoute(n.NS, gone.Subnet())
			return !ok, out
		})
	}
	if err := gone.StopAgent(syscall.SIGTERM); err != nil {
		t.Error(err)
	}
}

// Scenario 5: a Node deleted while a weftd is stopped (flannel #2554): the restarted weftd removes its route,
// and traffic to the others still flows.
func (k *kubeE2E) deletedWhileDown(t *testing.T) {
	ctx := k.ctx(t, 2*time.Minute)
	n1, n2, n4 := k.Node(1), k.Node(2), k.Node(4)
	if err := n1.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := n2.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := k.cli.CoreV1().Nodes().Delete(ctx, n2.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := hasRoute(n1.NS, n2.Subnet()); !ok {
		t.Fatalf("node %s had no route to %s before its restart; the scenario proves nothing", n1.Name, n2.Subnet())
	}
	if err := n1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "restarted n1 drops the route of a Node deleted while it was down", func() (bool, string) {
		ok, out := hasRoute(n1.NS, n2.Subnet())
		return !ok, out
	})
	k.pair(t, ctx, n1, n4)
	k.pair(t, ctx, n4, n1)
}

// Scenario 6: weftd starts while the API server is down: /healthz answers 200 and /readyz 503 at once and
// weftd keeps waiting (a liveness probe never kills it); the kernel state it left keeps carrying traffic;
// once the API server is back weftd becomes ready.
func (k *kubeE2E) apiServerDownAtStart(t *testing.T) {
	ctx := k.ctx(t, 3*time.Minute)
	n1, n4 := k.Node(1), k.Node(4)
	if err := k.StopService("kube-apiserver"); err != nil {
		t.Logf("stop kube-apiserver: %v", err) // its graceful shutdown may outlast the grace period
	}
	if err := n1.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := n1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	probe := func(path string) (int, string) {
		code, body, err := k.HTTPGet(ctx, n1, path)
		return code, fmt.Sprintf("%s: %d %q %v", path, code, body, err)
	}
	waitFor(t, 10*time.Second, "/healthz 200 soon after start with the API server down", func() (bool, string) {
		code, d := probe("/healthz")
		return code == 200, d
	})
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if code, d := probe("/healthz"); code != 200 {
			t.Errorf("while the API server is down: %s, want 200", d)
		}
		if code, d := probe("/readyz"); code != 503 {
			t.Errorf("while the API server is down: %s, want 503", d)
		}
		if !n1.AgentRunning() {
			t.Fatalf("weftd exited while the API server is down: %v", n1.AgentExit())
		}
	}
	k.pair(t, ctx, n4, n1)
	k.pair(t, ctx, n1, n4)

	if err := k.StartService("kube-apiserver", k.Etcd, k.srv.Argv()...); err != nil {
		t.Fatal(err)
	}
	if err := k.srv.WaitReady(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitReady(ctx); err != nil {
		t.Fatalf("weftd not ready after the API server came back: %v", err)
	}
}

// Scenario 7: a node running flannel's own flanneld (v0.28.10, --kube-subnet-mgr, vxlan) joins the weftd
// nodes: each side reads the other's annotations, and containers exchange ICMP and TCP both ways.
func (k *kubeE2E) flanneldNode(t *testing.T) {
	if _, err := os.Stat(kubetest.FlanneldBin()); err != nil {
		if kerneltest.E2E() {
			t.Fatalf("WEFT_E2E=1 but flanneld is missing (dist/kubetest/build-flanneld.sh): %v", err)
		}
		t.Skipf("flanneld is missing (dist/kubetest/build-flanneld.sh): %v", err)
	}
	ctx := k.ctx(t, 3*time.Minute)
	i := len(k.Nodes()) + 1
	name := fmt.Sprintf("n%d", i)
	k.flanneld[name] = true
	// A kubelet-registered Node always has annotations; flanneld v0.28.10 panics on a Node without any.
	if err := k.createNode(ctx, name, i, map[string]string{"node.alpha.kubernetes.io/ttl": "0"}); err != nil {
		t.Fatal(err)
	}
	f, err := k.AddNode(ctx)
	if err != nil {
		t.Fatalf("add the flanneld node: %v", err)
	}
	node, err := k.cli.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"node.alpha.kubernetes.io/ttl":                 "0",
		"flannel.alpha.coreos.com/kube-subnet-manager": "true",
		"flannel.alpha.coreos.com/backend-type":        "vxlan",
		"flannel.alpha.coreos.com/backend-data":        `{"VNI":1,"VtepMAC":"` + deviceMAC(t, f.NS, "flannel.1") + `"}`,
		"flannel.alpha.coreos.com/public-ip":           f.Addr.String(),
	}
	if !maps.Equal(node.Annotations, want) {
		t.Errorf("flanneld's annotations differ from weftd's form:\n got %v\nwant %v", node.Annotations, want)
	}
	for _, w := range []*netcluster.Node{k.Node(1), k.Node(4)} {
		k.pair(t, ctx, w, f)
		k.pair(t, ctx, f, w)
	}
}

// Scenario 8: the migration step of a rolling update: the flanneld node's agent is replaced by weftd. weftd
// keeps the subnet, the vxlan device and its VtepMAC, so the annotations stay byte for byte as flanneld left
// them, and containers keep exchanging traffic with the other nodes.
func (k *kubeE2E) migrate(t *testing.T) {
	var f *netcluster.Node
	for _, n := range k.Nodes() {
		if k.flanneld[n.Name] {
			f = n
		}
	}
	if f == nil {
		t.Skip("no flanneld node (scenario 7 skipped)")
	}
	k.switchAgent(t, f, false)
}

// switchAgent replaces node f's agent, flanneld by weftd or (toFlanneld) weftd by flanneld, as a
// DaemonSet update does, and checks that the new agent keeps what the old one left: the subnet, the vxlan
// device's VtepMAC, the Node's annotations and the FLANNEL-* iptables rules, and that containers keep
// exchanging traffic with nodes 1 and 4.
func (k *kubeE2E) switchAgent(t *testing.T, f *netcluster.Node, toFlanneld bool) {
	ctx := k.ctx(t, 3*time.Minute)
	from, to := "flanneld", "weftd"
	if toFlanneld {
		from, to = to, from
	}
	before, err := k.cli.CoreV1().Nodes().Get(ctx, f.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mac := deviceMAC(t, f.NS, "flannel.1")
	rules := flannelRules(t, f.NS)
	if err := f.StopAgent(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	k.flanneld[f.Name] = toFlanneld
	start := time.Now()
	if err := f.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if toFlanneld {
		// flanneld's /healthz says nothing of its progress: wait until it has written the env file, then
		// for one period of its rule check (--iptables-resync, 5 s), so the chains are the ones it keeps.
		waitFor(t, 60*time.Second, "flanneld writes the env file", func() (bool, string) {
			fi, err := os.Stat(f.EnvFile)
			return err == nil && fi.ModTime().After(start), fmt.Sprint(fi, err)
		})
		time.Sleep(6 * time.Second)
		if !f.AgentRunning() {
			t.Fatalf("flanneld exited: %v", f.AgentExit())
		}
	} else if err := f.WaitReady(ctx); err != nil { // weftd is ready once its rules are in place
		t.Fatal(err)
	}
	if env, err := f.Lease(); err != nil || env.Subnet.Masked() != f.Subnet() {
		t.Errorf("env file after the switch to %s: %+v, %v; want subnet %s", to, env, err, f.Subnet())
	}
	if got := deviceMAC(t, f.NS, "flannel.1"); got != mac {
		t.Errorf("VtepMAC %s after the switch to %s, want %s's %s kept", got, to, from, mac)
	}
	after, err := k.cli.CoreV1().Nodes().Get(ctx, f.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after.Annotations, before.Annotations) {
		t.Errorf("annotations changed by the switch to %s:\n%s %v\n%s %v", to, from, before.Annotations, to, after.Annotations)
	}
	if got := flannelRules(t, f.NS); !slices.Equal(got, rules) {
		t.Errorf("iptables rules after the switch to %s differ from %s's (want them taken over as they are):\n%s %q\n%s %q", to, from, from, rules, to, got)
	}
	for _, w := range []*netcluster.Node{k.Node(1), k.Node(4)} {
		k.pair(t, ctx, w, f)
		k.pair(t, ctx, f, w)
	}
}

// flannelRules returns the rules of ns's iptables (the host's mode, as both agents use it) that belong to
// flanneld's chains or jump to them, in iptables-save order. The test fails if there are none.
func flannelRules(t *testing.T, ns *kerneltest.NS) []string {
	t.Helper()
	rules, err := flannelRulesIn(ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) == 0 {
		t.Fatalf("no FLANNEL-* rules in %s (agents run with --ip-masq)", ns.Name)
	}
	return rules
}

func flannelRulesIn(ns *kerneltest.NS) ([]string, error) {
	out, err := ns.Exec("iptables-save")
	var rules []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A ") && strings.Contains(l, "FLANNEL-") {
			rules = append(rules, l)
		}
	}
	return rules, err
}

// Scenario 10: going back, the migration step in reverse: the node that moved from flanneld to weftd runs
// flanneld again. flanneld takes over what weftd left (subnet, vxlan device and VtepMAC, annotations,
// iptables chains) as weftd took over flanneld's, and containers keep exchanging traffic.
func (k *kubeE2E) rollback(t *testing.T) {
	var f *netcluster.Node
	for _, n := range k.Nodes() {
		if _, ok := k.flanneld[n.Name]; ok { // the node scenario 8 moved to weftd
			f = n
		}
	}
	if f == nil || k.flanneld[f.Name] {
		t.Skip("no node moved from flanneld to weftd (scenario 8 skipped)")
	}
	k.switchAgent(t, f, true)
}

// podmanAgent runs the weftd image as the DaemonSet in kube-weft.yml runs it (its arguments, NET_ADMIN and
// NET_RAW instead of privileged, /run/xtables.lock, the env file folder, the kubeconfig and net-conf.json)
// with podman, the container in the node's namespace. podman itself runs in the test's mount and network
// namespaces (ip netns exec remounts /sys and hides the cgroups; runc refuses --sysctl for a container
// sharing its own network namespace), hence nsenter; it creates no network (--network ns:). --sysctl
// stands in for a node's ip_forward=1.
func (k *kubeE2E) podmanAgent(n *netcluster.Node) []string {
	self := fmt.Sprintf("/proc/%d/ns/", os.Getpid())
	return []string{"nsenter", "--mount=" + self + "mnt", "--net=" + self + "net", "--",
		"env", "CONTAINERS_CONF=" + k.podmanConf,
		"podman", "run", "--rm", "--name", n.NS.Name + "-weftd", "--network", "ns:/run/netns/" + n.NS.Name,
		"--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--sysctl", "net.ipv4.ip_forward=1",
		"-e", "NODE_NAME=" + n.Name, "-v", k.dir + ":" + k.dir, "-v", filepath.Join(k.dir, "xtables.lock") + ":/run/xtables.lock",
		"localhost/weftd:test", "--ip-masq", "--kube-subnet-mgr", "--kubeconfig-file", k.kubeconfig, "--net-config-path", cmp.Or(k.netConfs[n.Name], k.netConf)}
}

// Scenario 9: the image built from dist/Dockerfile (no registry: build-image.sh) runs as a node's agent with
// the DaemonSet's arguments, mounts and capabilities: it writes the env file, programs the data path and
// carries traffic to nodes running the plain binary. Its iptables is the host's: on a node whose namespace
// already holds kube-proxy's rules made with iptables-legacy, weftd's chains go to legacy beside them; with
// iptables-nft, to nft; on a node with no rules at all, to nft (dist/iptables-wrapper). With EnableNFTables
// they go to nftables (the image's nft), whatever iptables holds.
func (k *kubeE2E) imageNode(t *testing.T) {
	kerneltest.RequireCommand(t, "podman", "mmdebstrap", "nsenter", "iptables-legacy", "iptables-nft", "nft")
	// The first build on a machine also makes the base image with mmdebstrap (a minute or two; more on a
	// loaded machine).
	out, err := exec.CommandContext(k.ctx(t, 10*time.Minute), "../../dist/kubetest/build-image.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("build the image: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	k.podmanConf = lines[len(lines)-1]
	ctx := k.ctx(t, 5*time.Minute)
	if err := os.WriteFile(filepath.Join(k.dir, "xtables.lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		plant string // the iptables mode the node's existing rules are in; empty: none
		want  string // where weftd's rules must land: iptables "legacy" or "nft", or "nftables" (its own tables)
	}{
		{"no-rules-yet", "", "nft"},
		{"legacy-host", "legacy", "legacy"},
		{"nft-host", "nft", "nft"},
		{"enable-nftables", "legacy", "nftables"},
	} {
		t.Run(tc.name, func(t *testing.T) { k.imageNodeOn(t, ctx, tc.plant, tc.want) })
	}
}

// kubeProxyRules are rules as kube-proxy keeps them, planted in a node's namespace before its agent starts.
var kubeProxyRules = [][]string{
	{"-t", "nat", "-N", "KUBE-SERVICES"},
	{"-t", "nat", "-A", "PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
	{"-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"},
	{"-t", "filter", "-N", "KUBE-FORWARD"},
	{"-t", "filter", "-A", "FORWARD", "-m", "comment", "--comment", "kubernetes forwarding rules", "-j", "KUBE-FORWARD"},
}

// imageNodeOn adds a node running the image, its namespace first given kube-proxy's rules in iptables mode
// plant (none when empty), and checks that weftd's rules are where want says, and only there. want
// "nftables" gives the node a net-conf.json with EnableNFTables.
func (k *kubeE2E) imageNodeOn(t *testing.T, ctx context.Context, plant, want string) {
	i := len(k.Nodes()) + 1
	name := fmt.Sprintf("n%d", i)
	k.image[name] = true
	t.Cleanup(func() {
		// If the test process dies, podman is killed but not its container: remove it by name.
		if n := k.Node(i); n != nil {
			exec.Command("env", "CONTAINERS_CONF="+k.podmanConf, "podman", "rm", "-f", "--ignore", n.NS.Name+"-weftd").Run()
		}
	})
	if want == "nftables" {
		k.netConfs[name] = filepath.Join(k.dir, name+"-net-conf.json")
		if err := os.WriteFile(k.netConfs[name], []byte(`{"Network":"10.244.0.0/16","EnableNFTables":true,"Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := k.createNode(ctx, name, i, map[string]string{"node.alpha.kubernetes.io/ttl": "0"}); err != nil {
		t.Fatal(err)
	}
	n, err := k.AddNodeWith(ctx, func(n *netcluster.Node) error {
		if plant == "" {
			return nil
		}
		for _, r := range kubeProxyRules {
			if _, err := n.NS.Exec(append([]string{"iptables-" + plant, "-w"}, r...)...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("add the node running the image: %v", err)
	}
	if n.Subnet() != netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)) || n.MTU() != 1450 {
		t.Errorf("env file of the image's node: subnet %s MTU %d, want 10.244.%d.0/24 and 1450", n.Subnet(), n.MTU(), i)
	}
	if out, err := n.NS.IP("-d", "link", "show", "flannel.1"); err != nil || !strings.Contains(out, "vxlan id 1") {
		t.Errorf("no vxlan device made by the image: %v %s", err, out)
	}
	// AddNodeWith returned once the node was ready, so its packet filter rules are in place.
	if want == "nftables" {
		for _, m := range []string{"legacy", "nft"} {
			if o := n.NS.MustExec(t, "iptables-"+m+"-save"); strings.Contains(o, "FLANNEL") {
				t.Errorf("iptables-%s-save in %s shows weftd's chains; with EnableNFTables want them in nftables only:\n%s", m, n.NS.Name, o)
			}
		}
		got := n.NS.MustExec(t, "nft", "list", "table", "ip", "flannel-ipv4")
		for _, c := range []string{"chain postrtg", "chain forward", "masquerade"} {
			if !strings.Contains(got, c) {
				t.Errorf("nft list table ip flannel-ipv4 in %s has no %q:\n%s", n.NS.Name, c, got)
			}
		}
	} else {
		k.checkIPTablesMode(t, ctx, n, plant, want)
	}
	for _, w := range []*netcluster.Node{k.Node(1), k.Node(4)} {
		k.pair(t, ctx, w, n)
		k.pair(t, ctx, n, w)
	}
}

// checkIPTablesMode checks that weftd's chains on the image's node n are in iptables mode want only, beside
// the rules planted in mode plant, and that the container's iptables runs in that mode.
func (k *kubeE2E) checkIPTablesMode(t *testing.T, ctx context.Context, n *netcluster.Node, plant, want string) {
	t.Helper()
	other := map[string]string{"legacy": "nft", "nft": "legacy"}[want]
	got := n.NS.MustExec(t, "iptables-"+want+"-save")
	for _, c := range []string{"-A FLANNEL-POSTRTG ", "-A FLANNEL-FWD ", "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG"} {
		if !strings.Contains(got, c) {
			t.Errorf("iptables-%s-save in %s has no %q: weftd's rules are not in the host's mode\n%s", want, n.NS.Name, c, got)
		}
	}
	if plant != "" && !strings.Contains(got, "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
		t.Errorf("iptables-%s-save in %s lost kube-proxy's rules:\n%s", want, n.NS.Name, got)
	}
	if o := n.NS.MustExec(t, "iptables-"+other+"-save"); strings.Contains(o, "FLANNEL") {
		t.Errorf("iptables-%s-save in %s shows weftd's chains too; want them in %s only:\n%s", other, n.NS.Name, want, o)
	}
	ver, err := exec.CommandContext(ctx, "env", "CONTAINERS_CONF="+k.podmanConf, "podman", "exec", n.NS.Name+"-weftd", "iptables", "--version").CombinedOutput()
	if wantVer := map[string]string{"legacy": "(legacy)", "nft": "(nf_tables)"}[want]; err != nil || !strings.Contains(string(ver), wantVer) {
		t.Errorf("iptables --version in the container: %q, %v; want %s", ver, err, wantVer)
	}
}

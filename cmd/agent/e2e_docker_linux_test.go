package main_test

// End-to-end test of Docker hosts (issue 12): on each node of a netns cluster weftd (--ip-masq), then
// weft-docker-opts and dockerd exactly as the units in dist/systemd run them, and a container from a
// busybox image imported from a root filesystem the harness builds (no registry). One cluster per backend.
// Uses TestMain, buildBins, waitFor, dumpLogs and expectRules of the other e2e files; the harness is
// cmd/internal/netcluster (DockerOptions describes how dockerd is kept off the host).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/dist/systemd"
)

var (
	dockerOptsOnce sync.Once
	dockerOptsBin  string
	dockerOptsErr  error
)

// buildDockerOpts builds weft-docker-opts into binDir, once.
func buildDockerOpts(t *testing.T) {
	t.Helper()
	dockerOptsOnce.Do(func() {
		dockerOptsBin = filepath.Join(binDir, "weft-docker-opts")
		if out, err := exec.Command("go", "build", "-o", dockerOptsBin, "github.com/weft-net/weft/docker-opts").CombinedOutput(); err != nil {
			dockerOptsErr = fmt.Errorf("go build docker-opts: %w\n%s", err, out)
		}
	})
	if dockerOptsErr != nil {
		t.Fatal(dockerOptsErr)
	}
}

func TestE2EDocker(t *testing.T) {
	requireE2E(t)
	kerneltest.RequireCommand(t, "iptables", "nsenter", "unshare", "dockerd", "docker", "docker-init", "busybox")
	buildDockerOpts(t)
	// What dockerd would write on the host if it were not kept in its own mount namespace.
	var hostPaths []string
	for _, p := range []string{"/run/docker", "/run/containerd", "/opt/containerd", "/etc/docker/key.json", "/var/lib/docker", "/run/mount"} {
		if _, err := os.Lstat(p); err != nil {
			hostPaths = append(hostPaths, p)
		}
	}
	// And its packet filter rules in the host's namespace (read only: iptables -S).
	hostRules := func() map[string]bool {
		rules := map[string]bool{}
		for _, table := range []string{"filter", "nat"} {
			out, _ := exec.Command("iptables", "-t", table, "-S").Output()
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(strings.ToLower(l), "docker") {
					rules[table+": "+l] = true
				}
			}
		}
		return rules
	}
	rulesBefore := hostRules()
	t.Cleanup(func() {
		for _, p := range hostPaths {
			if _, err := os.Lstat(p); err == nil {
				t.Errorf("the docker test created %s on the host", p)
			}
		}
		for r := range hostRules() {
			if !rulesBefore[r] {
				t.Errorf("a Docker rule appeared in the host's namespace: %s", r)
			}
		}
	})
	for _, backend := range []string{"host-gw", "vxlan", "udp"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			testDocker(t, backend)
		})
	}
}

type dockerE2E struct {
	*netcluster.Cluster
	backend, prefix, dir string
	hostDocker0          bool // the host's namespace had a docker0 before the test (read only)
}

func testDocker(t *testing.T, backend string) {
	e := &dockerE2E{backend: backend, prefix: kerneltest.Prefix(), dir: t.TempDir()}
	if out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput(); err == nil {
		e.hostDocker0 = strings.Contains(string(out), "docker0")
	}
	start := time.Now()
	e.Cluster = startCluster(t, netcluster.Options{
		Prefix:          e.prefix,
		Backend:         backend,
		Nodes:           3,
		Dir:             e.dir,
		ExtraAgentFlags: []string{"--ip-masq", "--iptables-resync=1s"},
		Docker:          &netcluster.DockerOptions{DockerOpts: dockerOptsBin},
		Timeout:         60 * time.Second,
	}, func() {
		logs, _ := filepath.Glob(filepath.Join(e.dir, "*", "docker", "dockerd.log"))
		for _, f := range logs {
			t.Logf("===== %s (last lines) =====\n%s", strings.TrimPrefix(f, e.dir+"/"), lastLines(f, 40))
		}
	})
	t.Logf("%s cluster with dockerd on 3 nodes up in %s", backend, time.Since(start).Round(100*time.Millisecond))
	t.Run("1-options-and-mtu", e.options)
	t.Run("1-traffic", e.traffic)
	t.Run("1-masquerade", e.masquerade)
	t.Run("2-dockerd-restart", e.dockerdRestart)
	t.Run("2-weftd-restart", e.weftdRestart)
	t.Run("3-dockerd-killed", e.dockerdKilled)
	t.Run("teardown", e.teardown)
}

func lastLines(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (e *dockerE2E) ctx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// docker0 returns the address of docker0 in n's namespace.
func docker0(n *netcluster.Node) (netip.Prefix, error) {
	out, err := n.NS.IP("-4", "-o", "addr", "show", "dev", "docker0")
	if err != nil {
		return netip.Prefix{}, err
	}
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "inet" && i+1 < len(f) {
			return netip.ParsePrefix(f[i+1])
		}
	}
	return netip.Prefix{}, fmt.Errorf("node %s: no IPv4 address on docker0: %q", n.Name, out)
}

// The options file is what weft-docker-opts makes of the env file; dockerd runs with the drop-in's
// options from it; docker0 holds FLANNEL_SUBNET; the container has the next address and FLANNEL_MTU.
func (e *dockerE2E) options(t *testing.T) {
	ctx := e.ctx(t, 60*time.Second)
	for _, n := range e.Nodes() {
		d := n.Dockerd()
		env, err := n.Lease()
		if err != nil {
			t.Fatal(err)
		}
		if env.MTU != expectMTU[e.backend] || !env.IPMasq {
			t.Errorf("node %s: env file MTU %d IPMasq %t, want %d true", n.Name, env.MTU, env.IPMasq, expectMTU[e.backend])
		}
		text, err := d.Opts()
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`DOCKER_NETWORK_OPTIONS=" --bip=%s --ip-masq=false --mtu=%d"`, env.Subnet, env.MTU)
		if !strings.Contains(text, want+"\n") {
			t.Errorf("node %s: docker options file:\n%s\nwant the line %s", n.Name, text, want)
		}
		// dockerd's command line: the drop-in's ExecStart with the file's options, verbatim.
		unit, _, err := systemd.DockerdCommand(text)
		if err != nil {
			t.Fatal(err)
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.PID()))
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		for _, opt := range unit[1:] {
			if strings.HasPrefix(opt, "--bip") || strings.HasPrefix(opt, "--mtu") || strings.HasPrefix(opt, "--ip-masq") {
				if !contains(args, opt) {
					t.Errorf("node %s: dockerd runs as %q, without the drop-in's %s", n.Name, args, opt)
				}
			}
		}
		if got, err := docker0(n); err != nil || got != env.Subnet {
			t.Errorf("node %s: docker0 %s (%v), want FLANNEL_SUBNET %s", n.Name, got, err, env.Subnet)
		}
		ip, err := d.ContainerIP(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ip != n.ContainerIP() {
			t.Errorf("node %s: container address %s, want %s (the first after docker0's)", n.Name, ip, n.ContainerIP())
		}
		if out, err := d.Exec(ctx, "cat", "/sys/class/net/eth0/mtu"); err != nil || strings.TrimSpace(out) != fmt.Sprint(env.MTU) {
			t.Errorf("node %s: container eth0 MTU %q (%v), want FLANNEL_MTU %d", n.Name, strings.TrimSpace(out), err, env.MTU)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkPairs checks ICMP (3 echoes, and 2 of 4000 bytes, fragmented) and TCP (a 256 KiB HTTP transfer)
// between the containers of every ordered node pair, the pairs in parallel.
func (e *dockerE2E) checkPairs(t *testing.T, ctx context.Context, big bool) {
	t.Helper()
	nodes := e.Nodes()
	var wg sync.WaitGroup
	for _, from := range nodes {
		for _, to := range nodes {
			if from != to {
				wg.Go(func() { checkPair(t, ctx, from, to, big) })
			}
		}
	}
	wg.Wait()
}

func checkPair(t *testing.T, ctx context.Context, from, to *netcluster.Node, big bool) {
	d, dst := from.Dockerd(), to.ContainerIP()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	err := d.WaitPing(wctx, dst)
	cancel()
	if err != nil {
		t.Errorf("%s → %s: %v", from.Name, to.Name, err)
		return
	}
	if r, err := d.Ping(ctx, dst, 3); err != nil || r.Received != 3 {
		t.Errorf("%s → %s: ping: %v %v", from.Name, to.Name, r, err)
	}
	if big {
		if out, err := d.Exec(ctx, "ping", "-A", "-c", "2", "-W", "1", "-s", "4000", dst.String()); err != nil {
			t.Errorf("%s → %s: 4000-byte ping: %v %s", from.Name, to.Name, err, out)
		}
	}
	if err := d.Fetch(ctx, dst); err != nil {
		t.Errorf("%s → %s: %v", from.Name, to.Name, err)
	}
}

func (e *dockerE2E) traffic(t *testing.T) {
	e.checkPairs(t, e.ctx(t, 120*time.Second), true)
}

// With weftd's --ip-masq, dockerd runs with --ip-masq=false: its MASQUERADE rule is absent and weftd's
// chain masquerades what leaves the overlay, while container-to-container traffic keeps its addresses.
func (e *dockerE2E) masquerade(t *testing.T) {
	ctx := e.ctx(t, 60*time.Second)
	network := netip.MustParsePrefix(netcluster.DefaultNetwork)
	n1, n2 := e.Node(1), e.Node(2)
	randomFully := hasRandomFully(t, n1)
	for _, n := range e.Nodes() {
		nat, err := n.NS.Exec("iptables", "-t", "nat", "-S")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(nat, "docker0 -j MASQUERADE") {
			t.Errorf("node %s: dockerd added its own masquerading despite --ip-masq=false:\n%s", n.Name, nat)
		}
		expectRules(t, n, kernel.MasqRules(network, n.Subnet(), randomFully))
		expectRules(t, n, kernel.ForwardRules(network))
	}

	// A plain host on the underlay answers with the client address it sees.
	out, err := e.AddHost("out", netip.MustParseAddr("192.0.2.99"))
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := out.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "192.0.2.99:8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintln(w, host)
	})}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	defer func() {
		srv.Close()
		wg.Wait()
	}()
	for _, n := range []*netcluster.Node{n1, n2} {
		o, err := n.Dockerd().Exec(ctx, "wget", "-q", "-O", "-", "http://192.0.2.99:8080/")
		if err != nil {
			t.Errorf("container of %s → host 192.0.2.99: %v", n.Name, err)
		} else if got := strings.TrimSpace(o); got != n.Addr.String() {
			t.Errorf("host 192.0.2.99 sees the container of %s as %s, want %s (masqueraded by weftd's rules)", n.Name, got, n.Addr)
		}
	}
	if got, err := n1.Dockerd().SeenAs(ctx, n2.ContainerIP()); err != nil {
		t.Errorf("container of %s → container of %s: %v", n1.Name, n2.Name, err)
	} else if got != n1.ContainerIP() {
		t.Errorf("container of %s sees the container of %s as %s, want %s (not masqueraded)", n2.Name, n1.Name, got, n1.ContainerIP())
	}
}

// snapshot is what must survive a restart: docker0's address and the container's.
func snapshot(t *testing.T, ctx context.Context, n *netcluster.Node) (netip.Prefix, netip.Addr) {
	t.Helper()
	br, err := docker0(n)
	if err != nil {
		t.Fatal(err)
	}
	ip, err := n.Dockerd().WaitContainer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return br, ip
}

func expectSame(t *testing.T, ctx context.Context, n *netcluster.Node, br netip.Prefix, ip netip.Addr) {
	t.Helper()
	br2, ip2 := snapshot(t, ctx, n)
	if br2 != br || ip2 != ip {
		t.Errorf("node %s: docker0 %s, container %s; before the restart %s, %s", n.Name, br2, ip2, br, ip)
	}
}

// Scenario 2a: dockerd stopped (it stops its container) and started again: the container comes back
// (--restart=always) with the same address, docker0 with the same subnet, and traffic flows.
func (e *dockerE2E) dockerdRestart(t *testing.T) {
	ctx := e.ctx(t, 120*time.Second)
	n := e.Node(1)
	br, ip := snapshot(t, ctx, n)
	d := n.Dockerd()
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectSame(t, ctx, n, br, ip)
	e.checkPairs(t, ctx, false)
}

// Scenario 2b: weftd restarted. On node 2 as systemd does it: SIGTERM, start, ExecStartPost
// (weft-docker-opts) again, which writes the same options, and dockerd restarted with it (the drop-in's
// Requires= propagates the restart). On node 3 weftd is killed and restarted alone (Restart=always after
// a crash, dockerd untouched). Addresses stay, and traffic flows.
func (e *dockerE2E) weftdRestart(t *testing.T) {
	ctx := e.ctx(t, 120*time.Second)
	n2, n3 := e.Node(2), e.Node(3)
	br2, ip2 := snapshot(t, ctx, n2)
	br3, ip3 := snapshot(t, ctx, n3)
	d2 := n2.Dockerd()
	before, err := d2.Opts()
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := n2.StopAgent(syscall.SIGTERM); err != nil {
		t.Error(err)
	}
	if err := n3.StopAgent(syscall.SIGKILL); err != nil {
		t.Error(err)
	}
	for _, n := range []*netcluster.Node{n2, n3} {
		if err := n.StartAgent(ctx); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := d2.WriteOpts(ctx); err != nil {
		t.Fatal(err)
	}
	if after, err := d2.Opts(); err != nil || after != before {
		t.Errorf("node %s: docker options after the weftd restart:\n%s(%v)\nbefore:\n%s", n2.Name, after, err, before)
	}
	if err := d2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	expectSame(t, ctx, n2, br2, ip2)
	expectSame(t, ctx, n3, br3, ip3)
	e.checkPairs(t, ctx, false)
}

// cgroupPIDs returns the processes in the cgroup parent (every controller, every container below it).
func cgroupPIDs(parent string) map[int]bool {
	pids := map[int]bool{}
	for _, pattern := range []string{"/sys/fs/cgroup/*/" + parent, "/sys/fs/cgroup/" + parent} {
		roots, _ := filepath.Glob(pattern)
		for _, root := range roots {
			filepath.WalkDir(root, func(path string, e os.DirEntry, err error) error {
				if err != nil || e.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(path)
				for _, f := range strings.Fields(string(b)) {
					var pid int
					if _, err := fmt.Sscan(f, &pid); err == nil {
						pids[pid] = true
					}
				}
				return nil
			})
		}
	}
	return pids
}

// Scenario 3: dockerd's parent killed as the kernel kills it when the harness dies (Pdeathsig): dockerd,
// its containerd, the shim and the container's processes (found by the cgroup) all go with it (dockerd's
// PID namespace), and no mount of its is left in the host's mount namespace.
func (e *dockerE2E) dockerdKilled(t *testing.T) {
	d := e.Node(3).Dockerd()
	procs := cgroupPIDs(d.CgroupParent)
	if len(procs) == 0 {
		t.Fatalf("no processes in cgroup %s: the container is not running", d.CgroupParent)
	}
	dockerd := d.PID()
	if err := d.Kill(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "dockerd's processes gone", func() (bool, string) {
		var left []string
		for pid := range procs {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
				left = append(left, fmt.Sprintf("%d %s", pid, strings.ReplaceAll(string(b), "\x00", " ")))
			}
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", dockerd)); err == nil {
			left = append(left, fmt.Sprintf("%d (unshare)", dockerd))
		}
		// dockerd, containerd and the shim name the daemon's folder on their command lines.
		cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
		for _, f := range cmdlines {
			if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), d.Dir) {
				left = append(left, f+": "+strings.ReplaceAll(string(b), "\x00", " "))
			}
		}
		return len(left) == 0, strings.Join(left, "; ")
	})
	if b, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		t.Error(err)
	} else if strings.Contains(string(b), d.Dir) {
		t.Errorf("mounts of %s in the host's mount namespace:\n%s", d.Dir, b)
	}
}

// After Close: what the other e2e tests check (see e2e.teardown), and no mount of the cluster's directory
// in the host's mount namespace, no cgroup of the containers, no docker0 in the host's namespace.
func (e *dockerE2E) teardown(t *testing.T) {
	var cgroups []string
	for _, n := range e.Nodes() {
		cgroups = append(cgroups, n.Dockerd().CgroupParent)
	}
	(&e2e{Cluster: e.Cluster, backend: e.backend, prefix: e.prefix, dir: e.dir}).teardown(t)
	if b, err := os.ReadFile("/proc/self/mountinfo"); err != nil {
		t.Error(err)
	} else if strings.Contains(string(b), e.dir) {
		t.Errorf("mounts of %s left in the host's mount namespace:\n%s", e.dir, b)
	}
	for _, cg := range cgroups {
		if left, _ := filepath.Glob("/sys/fs/cgroup/*/" + cg); len(left) > 0 {
			t.Errorf("cgroups left: %v", left)
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").CombinedOutput(); err != nil {
		t.Error(err)
	} else if strings.Contains(string(out), "docker0") && !e.hostDocker0 {
		t.Errorf("the host namespace has a docker0 now:\n%s", out)
	}
}

package main_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/subnet"
)

// TestE2ETwoNetworksOneNode runs two weftd per node, as flannel runs several networks: the cluster's own
// (10.5.0.0/16 under the default prefix) and a second one (10.6.0.0/16 under /weft/net2, its own subnet
// file), both host-gw, so both sets of routes carry weft's route protocol on the same interface. Each
// agent reconciles every second; the routes of both networks must stay in place throughout, and the first
// network keeps carrying traffic.
func TestE2ETwoNetworksOneNode(t *testing.T) {
	requireE2E(t)
	t.Parallel()
	c := startHostGW2(t)
	ctx := t.Context()
	const prefix2 = "/weft/net2"
	if _, err := c.Weftd(ctx, c.Node(1).NS, "config", "set", "--etcd-prefix", prefix2, "--network", "10.6.0.0/16", "--backend", "host-gw"); err != nil {
		t.Fatal(err)
	}
	envs := map[string]string{}
	for _, n := range c.Nodes() {
		envs[n.Name] = filepath.Join(n.Dir, "net2.env")
		startExtraAgent(t, n, filepath.Join(n.Dir, "net2.log"), c.EtcdURL,
			"--etcd-prefix", prefix2, "--iface", "eth0", "--subnet-file", envs[n.Name], "--reconcile-interval=1s")
	}
	net2 := map[string]subnet.Env{}
	waitFor(t, 30*time.Second, "second network's env files", func() (bool, string) {
		for name, f := range envs {
			env, err := subnet.ReadEnvFile(f)
			if err != nil {
				return false, err.Error()
			}
			net2[name] = env
		}
		return true, ""
	})
	if t.Failed() {
		return
	}
	n1, n2 := c.Node(1), c.Node(2)
	want := []string{
		fmt.Sprintf("%s via %s dev eth0", n2.Subnet(), n2.Addr),
		fmt.Sprintf("%s via %s dev eth0", net2[n2.Name].Subnet.Masked(), n2.Addr),
	}
	routes := func() string { out, _ := n1.NS.IP("route", "show", "proto", "87"); return out }
	waitFor(t, 20*time.Second, "n1 has the routes of both networks", func() (bool, string) {
		out := routes()
		for _, w := range want {
			if !strings.Contains(out, w) {
				return false, out
			}
		}
		return true, ""
	})
	// Several reconciles of each agent: neither network's route may go missing.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		out := routes()
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("n1 lost route %q; routes of ours:\n%s", w, out)
			}
		}
	}
	if err := c.WaitPing(ctx, n1, n2.ContainerIP()); err != nil {
		t.Errorf("first network's containers n1 → n2: %v", err)
	}
}

// startExtraAgent starts another weftd in n's namespace with args (after --etcd-endpoints), logging to
// logPath, and stops it (SIGTERM, then SIGKILL) when the test ends.
func startExtraAgent(t *testing.T, n *netcluster.Node, logPath, etcdURL string, args ...string) {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"netns", "exec", n.NS.Name, weftdBin, "--etcd-endpoints", etcdURL}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		defer logf.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

// startHostGW2 starts a 2-node host-gw cluster whose agents reconcile every second, closed (and its logs
// printed if the test failed) when the test ends.
func startHostGW2(t *testing.T) *netcluster.Cluster {
	t.Helper()
	return startCluster(t, netcluster.Options{
		Backend: "host-gw", Nodes: 2, ExtraAgentFlags: []string{"--reconcile-interval=1s"},
	})
}

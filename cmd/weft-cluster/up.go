package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// stateDir holds one state file per cluster prefix and, below <prefix>/, the cluster's logs and data.
const stateDir = "/run/weft-cluster"

func stateFile(prefix string) string { return filepath.Join(stateDir, prefix+".json") }

// tcpProbeSize is what the TCP probe sends each way.
const tcpProbeSize = 256 << 10

type upConfig struct {
	backend string
	nodes   int
	keep    bool
	weftd   string
	prefix  string
	network string
	verbose bool
	docker  bool
}

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg upConfig
	fs := flag.NewFlagSet("weft-cluster up", flag.ContinueOnError)
	fs.StringVar(&cfg.backend, "backend", "vxlan", "backend: vxlan, udp or host-gw")
	fs.IntVar(&cfg.nodes, "nodes", 3, "number of nodes (2 to 20)")
	fs.BoolVar(&cfg.keep, "keep", false, "leave the cluster running; remove it later with `weft-cluster down`")
	fs.StringVar(&cfg.weftd, "weftd", "", "weftd binary (default: weftd next to weft-cluster, else on PATH)")
	fs.StringVar(&cfg.prefix, "prefix", "weft", "name prefix of the cluster's namespaces")
	fs.StringVar(&cfg.network, "network", netcluster.DefaultNetwork, "overlay network")
	fs.BoolVar(&cfg.verbose, "v", false, "log each setup step")
	fs.BoolVar(&cfg.docker, "docker", false, "make every node a Docker host: weft-docker-opts and dockerd as dist/systemd runs them, a busybox container")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	switch cfg.backend {
	case "vxlan", "udp", "host-gw":
	default:
		return fmt.Errorf("--backend %q: want vxlan, udp or host-gw", cfg.backend)
	}
	if cfg.nodes < 2 || cfg.nodes > 20 {
		return fmt.Errorf("--nodes %d: want 2 to 20", cfg.nodes)
	}
	if err := checkPrereqs(); err != nil {
		return err
	}
	weftd, err := findWeftd(cfg.weftd)
	if err != nil {
		return err
	}
	var docker *netcluster.DockerOptions
	if cfg.docker {
		if err := checkDockerPrereqs(); err != nil {
			return err
		}
		opts, err := findBin("weft-docker-opts", "")
		if err != nil {
			return err
		}
		docker = &netcluster.DockerOptions{DockerOpts: opts}
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	if _, err := os.Stat(stateFile(cfg.prefix)); err == nil {
		return fmt.Errorf("a cluster %q is already up (state %s); remove it with `weft-cluster down`", cfg.prefix, stateFile(cfg.prefix))
	}
	if left, err := kerneltest.ListNS(cfg.prefix + "-"); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("namespaces with prefix %q already exist: %s\nIs a cluster still up? Remove it with `weft-cluster down%s`.",
			cfg.prefix, strings.Join(left, " "), prefixFlag(cfg.prefix))
	}
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	what := ""
	if cfg.docker {
		what = " (a dockerd on each node)"
	}
	fmt.Fprintf(stdout, "Starting a %d-node %s cluster%s (namespaces %s-*) ...\n", cfg.nodes, cfg.backend, what, cfg.prefix)
	start := time.Now()
	c, err := netcluster.Start(ctx, netcluster.Options{
		Prefix:     cfg.prefix,
		Backend:    cfg.backend,
		Network:    cfg.network,
		Nodes:      cfg.nodes,
		Weftd:      weftd,
		ClusterBin: self,
		Dir:        filepath.Join(stateDir, cfg.prefix),
		RemoveDir:  true,
		Detach:     cfg.keep,
		StateFile:  stateFile(cfg.prefix),
		Docker:     docker,
		Log:        log,
	})
	if errors.Is(err, netcluster.ErrExists) {
		return fmt.Errorf("%w\nIs a cluster still up? Remove it with `weft-cluster down%s`.", err, prefixFlag(cfg.prefix))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Cluster up in %s.\n\n", time.Since(start).Round(100*time.Millisecond))
	keep := cfg.keep
	defer func() {
		if keep {
			return
		}
		fmt.Fprintln(stdout, "\nRemoving the cluster ...")
		if err := c.Close(); err != nil {
			fmt.Fprintf(stderr, "weft-cluster up: clean up: %v\n", err)
		}
	}()

	nodes := c.Nodes()
	out, err := c.Weftd(ctx, nodes[0].NS, "leases")
	if err != nil {
		return fmt.Errorf("list leases: %w", err)
	}
	fmt.Fprintf(stdout, "$ weftd leases\n%s\n", out)

	probe := containerProbe(c)
	if cfg.docker {
		if err := showDocker(ctx, nodes, stdout); err != nil {
			return err
		}
		probe = dockerProbe()
	}
	failed := probeAll(ctx, nodes, probe, stdout)
	if ctx.Err() != nil {
		keep = false
		return errors.New("interrupted")
	}
	if failed > 0 {
		for _, n := range nodes {
			fmt.Fprintf(stderr, "\n--- %s weftd log (last lines) ---\n%s\n", n.Name, lastLines(c.AgentLog(n), 25))
		}
		keep = false
		return fmt.Errorf("%d of %d probes failed", failed, len(nodes)*(len(nodes)-1))
	}
	fmt.Fprintln(stdout, "\nAll probes passed.")
	if cfg.keep && cfg.docker {
		d1 := nodes[0].Dockerd()
		fmt.Fprintf(stdout, `
The cluster keeps running. Explore it:
  docker -H unix://%s ps
  docker -H unix://%s exec %s ping %s
  ip -n %s route; ip -n %s addr show docker0
Logs: %s/n*/weftd.log, %s/n*/docker/dockerd.log
Remove it: %s down%s
`, d1.Sock, d1.Sock, netcluster.Container, nodes[len(nodes)-1].ContainerIP(), nodes[0].NS.Name, nodes[0].NS.Name,
			filepath.Join(stateDir, cfg.prefix), filepath.Join(stateDir, cfg.prefix), self, prefixFlag(cfg.prefix))
	} else if cfg.keep {
		n1 := nodes[0]
		to := nodes[len(nodes)-1].ContainerIP()
		fmt.Fprintf(stdout, `
The cluster keeps running. Explore it:
  ip netns exec %s ping %s
  ip netns exec %s %s leases --etcd-endpoints %s
  ip -n %s route; ip -n %s link
Logs: %s/n*/weftd.log, etcd: %s/etcd/etcd.log
Remove it: %s down%s
`, n1.Container().Name, to, n1.NS.Name, weftd, c.EtcdURL, n1.NS.Name, n1.NS.Name,
			filepath.Join(stateDir, cfg.prefix), filepath.Join(stateDir, cfg.prefix), self, prefixFlag(cfg.prefix))
	}
	return nil
}

// prefixFlag returns " --prefix P" unless P is the default.
func prefixFlag(p string) string {
	if p == "weft" {
		return ""
	}
	return " --prefix " + p
}

// prober checks one node's container against another's: wait until ping answers, ping count times, and a
// TCP transfer (tcpText says what it is, for the table's header).
type prober struct {
	wait    func(ctx context.Context, from, to *netcluster.Node) error
	ping    func(ctx context.Context, from, to *netcluster.Node, count int) (netcluster.PingResult, error)
	tcp     func(ctx context.Context, from, to *netcluster.Node) error
	tcpText string
}

// containerProbe probes the nodes' container namespaces: iputils ping, and an echo of 256 KiB each way.
func containerProbe(c *netcluster.Cluster) prober {
	return prober{
		wait: func(ctx context.Context, from, to *netcluster.Node) error {
			return c.WaitPing(ctx, from, to.ContainerIP())
		},
		ping: func(ctx context.Context, from, to *netcluster.Node, count int) (netcluster.PingResult, error) {
			out, err := c.Ping(ctx, from, to.ContainerIP(), "-c", strconv.Itoa(count))
			r, perr := netcluster.ParsePing(out)
			if perr != nil {
				return r, errors.Join(perr, err)
			}
			return r, err
		},
		tcp:     func(ctx context.Context, from, to *netcluster.Node) error { return c.TCP(ctx, from, to, tcpProbeSize) },
		tcpText: "TCP (256 KiB each way)",
	}
}

// dockerProbe probes the nodes' Docker containers from inside them (docker exec): busybox ping, and wget
// of the other container's 256 KiB /blob from its httpd, checked by MD5.
func dockerProbe() prober {
	return prober{
		wait: func(ctx context.Context, from, to *netcluster.Node) error {
			return from.Dockerd().WaitPing(ctx, to.ContainerIP())
		},
		ping: func(ctx context.Context, from, to *netcluster.Node, count int) (netcluster.PingResult, error) {
			return from.Dockerd().Ping(ctx, to.ContainerIP(), count)
		},
		tcp: func(ctx context.Context, from, to *netcluster.Node) error {
			return from.Dockerd().Fetch(ctx, to.ContainerIP())
		},
		tcpText: "HTTP (256 KiB, md5 checked)",
	}
}

// showDocker prints each node's docker0, its docker options and its container.
func showDocker(ctx context.Context, nodes []*netcluster.Node, stdout io.Writer) error {
	for _, n := range nodes {
		d := n.Dockerd()
		opts, err := d.Opts()
		if err != nil {
			return err
		}
		argv, err := d.Command()
		if err != nil {
			return err
		}
		ps, err := d.Docker(ctx, "ps", "--format", "{{.Names}}  {{.Image}}  {{.Status}}")
		if err != nil {
			return err
		}
		br, _ := n.NS.IP("-4", "-br", "addr", "show", "dev", "docker0")
		fmt.Fprintf(stdout, "%s: weft-docker-opts wrote %s\n%s  dockerd %s\n  docker0: %s\n  container: %s  %s\n\n",
			n.Name, d.OptsFile, indent(opts), strings.Join(argv[1:], " "), strings.TrimSpace(br), n.ContainerIP(), strings.TrimSpace(ps))
	}
	return nil
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Fprintf(&b, "    %s\n", l)
	}
	return b.String()
}

// probeAll checks ICMP and TCP from every node's container to every other's and prints a table. It
// returns the number of failed pairs.
func probeAll(ctx context.Context, nodes []*netcluster.Node, p prober, stdout io.Writer) int {
	// Peers learn about each other through etcd watches: give the routes a moment to converge.
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	for _, from := range nodes {
		for _, to := range nodes {
			if from != to {
				p.wait(wctx, from, to)
			}
		}
	}
	cancel()
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FROM\tTO\tPING (5 echoes)\t%s\n", p.tcpText)
	failed := 0
	for _, from := range nodes {
		for _, to := range nodes {
			if from == to || ctx.Err() != nil {
				continue
			}
			ok := true
			pingCol := ""
			r, perr := p.ping(ctx, from, to, 5)
			if r.Transmitted == 0 {
				pingCol, ok = "FAIL: "+firstLine(perr), false
			} else {
				loss := 100 * r.Lost() / max(r.Transmitted, 1)
				pingCol = fmt.Sprintf("%d%% loss, rtt %.3f ms", loss, float64(r.RTTAvg.Microseconds())/1000)
				if r.Received == 0 || perr != nil {
					pingCol, ok = "FAIL: "+pingCol, false
				}
			}
			tcpCol := "ok"
			if err := p.tcp(ctx, from, to); err != nil {
				tcpCol, ok = "FAIL: "+err.Error(), false
			}
			if ctx.Err() != nil {
				break // interrupted: this row's failures mean nothing
			}
			if !ok {
				failed++
			}
			fmt.Fprintf(tw, "%s %s\t%s %s\t%s\t%s\n", from.Name, from.ContainerIP(), to.Name, to.ContainerIP(), pingCol, tcpCol)
		}
	}
	tw.Flush()
	return failed
}

func firstLine(err error) string {
	if err == nil {
		return ""
	}
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// checkPrereqs requires root and the ip, ping and iptables commands (weftd keeps flannel's forward rules).
func checkPrereqs() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces): run it with sudo")
	}
	for cmd, pkg := range map[string]string{"ip": "iproute2", "ping": "iputils-ping", "iptables": "iptables"} {
		if _, err := exec.LookPath(cmd); err != nil {
			return fmt.Errorf("needs the %s command: install %s (apt-get install %s)", cmd, pkg, pkg)
		}
	}
	return nil
}

// checkDockerPrereqs requires what --docker runs: dockerd and docker (docker.io), docker-init (docker.io's
// tini, for docker run --init), a static busybox (busybox-static), nsenter and unshare (util-linux).
func checkDockerPrereqs() error {
	for _, c := range []struct{ cmd, pkg string }{
		{"dockerd", "docker.io"}, {"docker", "docker.io"}, {"docker-init", "docker.io"},
		{"busybox", "busybox-static"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"},
	} {
		if _, err := exec.LookPath(c.cmd); err != nil {
			return fmt.Errorf("--docker needs the %s command: install %s (apt-get install %s)", c.cmd, c.pkg, c.pkg)
		}
	}
	return nil
}

// findWeftd returns the weftd binary to run: flag, else next to this executable, else on PATH.
func findWeftd(flagValue string) (string, error) { return findBin("weftd", flagValue) }

// findBin returns the binary name to run: flagValue if set, else name next to this executable, else on PATH.
func findBin(name, flagValue string) (string, error) {
	if flagValue != "" {
		if _, err := os.Stat(flagValue); err != nil {
			return "", fmt.Errorf("--%s: %w", name, err)
		}
		return filepath.Abs(flagValue)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	return "", fmt.Errorf("no %s binary: build it (make build) or pass --%s PATH", name, name)
}

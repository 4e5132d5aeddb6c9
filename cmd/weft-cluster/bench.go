package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"golang.org/x/sys/unix"
)

const (
	benchPort = 5201
	// benchStreams is the parallel streams (iperf3 -P) of the multi-stream runs.
	benchStreams      = 4
	benchPings        = 200
	benchPingInterval = 10 * time.Millisecond
	// benchRef is the reference path: two namespaces joined by one veth pair, no overlay.
	benchRef = "veth"
	// benchBaseline is the path --baseline-weftd adds: udp with another weftd binary.
	benchBaseline = "udp-before"
	// bench6Network is the clusters' IPv6 network with --ipv6.
	bench6Network = "fd00:5::/48"
)

// benchPath says how a path is built: the veth reference, or a 2-node cluster on a backend.
type benchPath struct {
	// ns names the path's namespaces: <prefix>-<ns>-n1 ...; no ns is a prefix of another.
	ns       string
	backend  string   // "": the veth reference
	flags    []string // weftd flags on every node; nil: none
	baseline bool     // run the --baseline-weftd binary instead of --weftd
}

var benchPathSpecs = map[string]benchPath{
	benchRef:        {ns: "ref"},
	"host-gw":       {ns: "hostgw", backend: "host-gw"},
	"vxlan":         {ns: "vxlan", backend: "vxlan"},
	"udp":           {ns: "udp", backend: "udp"},
	"udp-nooffload": {ns: "noff", backend: "udp", flags: []string{"--udp-offload=off"}},
	benchBaseline:   {ns: "before", backend: "udp", baseline: true},
}

// benchPaths are the paths measured by default, in this order (--baseline-weftd adds benchBaseline before
// udp).
var benchPaths = []string{benchRef, "host-gw", "vxlan", "udp", "udp-nooffload"}

type benchConfig struct {
	prefix   string
	seconds  int
	reps     int
	weftd    string
	baseline string // --baseline-weftd; empty: none
	verbose  bool
	ipv6     bool // --ipv6: the clusters dual stack, their traffic to the containers' IPv6 addresses
	paths    []string
}

// cmdBench measures container-to-container TCP throughput (1 and benchStreams streams), round-trip time and
// the agents' CPU over a plain veth pair (the reference) and over each backend in a 2-node cluster, taking
// turns in one run, and prints tables with the ratios to the reference and to vxlan.
func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg benchConfig
	fs := flag.NewFlagSet("weft-cluster bench", flag.ContinueOnError)
	fs.StringVar(&cfg.prefix, "prefix", "wbench", "name prefix of the bench's namespaces")
	fs.IntVar(&cfg.seconds, "time", 3, "seconds per iperf3 run")
	fs.IntVar(&cfg.reps, "reps", 3, "iperf3 runs per path and stream count (the median is reported)")
	fs.StringVar(&cfg.weftd, "weftd", "", "weftd binary (default: weftd next to weft-cluster, else on PATH)")
	fs.StringVar(&cfg.baseline, "baseline-weftd", "",
		"another weftd binary (e.g. an older build) measured on udp as the path "+benchBaseline+", side by side")
	fs.BoolVar(&cfg.verbose, "v", false, "log each setup step")
	fs.BoolVar(&cfg.ipv6, "ipv6", false, "run the clusters dual stack (IPv6 network "+bench6Network+") and measure them with "+
		"traffic to the containers' IPv6 addresses; the veth reference stays IPv4")
	known := append(slices.Clone(benchPaths), benchBaseline)
	only := fs.String("paths", strings.Join(benchPaths, ","), "paths to measure, comma-separated: "+strings.Join(known, ", "))
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if cfg.seconds < 1 || cfg.seconds > 60 {
		return fmt.Errorf("--time %d: want 1 to 60", cfg.seconds)
	}
	if cfg.reps < 1 || cfg.reps > 20 {
		return fmt.Errorf("--reps %d: want 1 to 20", cfg.reps)
	}
	var err error
	if cfg.paths, err = pathList(*only, known, benchBaseline, cfg.baseline != ""); err != nil {
		return err
	}
	if cfg.baseline != "" {
		if _, err := os.Stat(cfg.baseline); err != nil {
			return fmt.Errorf("--baseline-weftd: %w", err)
		}
		abs, err := filepath.Abs(cfg.baseline)
		if err != nil {
			return fmt.Errorf("--baseline-weftd: %w", err)
		}
		cfg.baseline = abs
	}
	if err := checkPrereqs(); err != nil {
		return err
	}
	iperfPath, err := exec.LookPath("iperf3")
	if err != nil {
		return errors.New("needs the iperf3 command: install iperf3 (apt-get install iperf3)")
	}
	weftd, err := findWeftd(cfg.weftd)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	if left, err := kerneltest.ListNS(cfg.prefix + "-"); err != nil {
		return err
	} else if len(left) > 0 {
		// Each cluster path has its own prefix and state file, which `weft-cluster down` reads.
		var how []string
		for _, p := range known {
			pre := cfg.prefix + "-" + benchPathSpecs[p].ns
			if l, _ := kerneltest.ListNS(pre + "-"); len(l) > 0 && benchPathSpecs[p].backend != "" {
				how = append(how, "`weft-cluster down --prefix "+pre+"`")
			}
		}
		how = append(how, "`ip netns delete NAME` for any left")
		return fmt.Errorf("namespaces with prefix %q already exist: %s\nIs a bench still running? If not, remove them: %s",
			cfg.prefix, strings.Join(left, " "), strings.Join(how, ", then "))
	}
	level := slog.LevelWarn
	if cfg.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	b := &bench{cfg: cfg, iperf: iperfPath, weftd: weftd, self: self, log: log, stdout: stdout}

	m := machine(iperfPath)
	fmt.Fprintf(stdout, "Benchmarking %s (namespaces %s-*): %d rounds of %d s of iperf3 with 1 and %d streams, then %d pings, each ...\n",
		strings.Join(cfg.paths, ", "), cfg.prefix, cfg.reps, cfg.seconds, benchStreams, benchPings)
	if cfg.ipv6 {
		fmt.Fprintf(stdout, "The clusters are dual stack; their traffic goes to the containers' IPv6 addresses (the veth reference's is IPv4).\n")
	}
	start := time.Now()
	rows := b.run(ctx)
	if ctx.Err() != nil {
		return errors.New("interrupted; everything it created is removed")
	}
	failed := 0
	for _, r := range rows {
		if r.Err != nil {
			failed++
			fmt.Fprintf(stderr, "%s: %v\n", r.Name, r.Err)
		}
	}
	fmt.Fprintf(stdout, "\n")
	writeBench(stdout, benchHeader{Seconds: cfg.seconds, Reps: cfg.reps, Streams: benchStreams, Pings: benchPings,
		PingInterval: benchPingInterval}, m, rows, benchRef)
	if w, err := b.wakeup(ctx); err != nil {
		fmt.Fprintf(stderr, "wake-up probe: %v\n", err)
	} else {
		fmt.Fprintf(stdout, "Wake-ups: a UDP datagram bounced between two Go goroutines over loopback (two wake-ups per round trip)\n"+
			"takes %s when spaced as the pings (idle CPUs in between) and %s back to back. The udp path's round\n"+
			"trip has four such wake-ups (each agent's TUN and socket readers, once each way); kernel paths have none.\n",
			usText(w.Idle), usText(w.Busy))
	}
	fmt.Fprintf(stdout, "Took %s.\n", time.Since(start).Round(time.Second))
	if failed > 0 {
		return fmt.Errorf("%d of %d paths failed", failed, len(rows))
	}
	return nil
}

type bench struct {
	cfg                benchConfig
	iperf, weftd, self string
	log                *slog.Logger
	stdout             io.Writer
}

// endpoints is one measured path: traffic goes from a process in src to dst's address ip. c is the
// cluster, nil for the veth reference.
type endpoints struct {
	src, dst *kerneltest.NS
	ip       netip.Addr
	mtu      int
	c        *netcluster.Cluster
}

// pathRun is one path set up for measuring, and what was measured so far. A path that failed (row.Err set)
// is not measured again.
type pathRun struct {
	row     benchRow
	spec    benchPath
	ep      endpoints
	cleanup func() error // nil once removed
}

// run sets up every path, each in its own namespaces, then measures them in turns, so the load other
// processes put on the machine falls on every path alike: reps rounds in which each path does one iperf3
// run with 1 stream (the agents' CPU time read before and after) and one with benchStreams streams, then
// benchPings echoes per path and, for udp, the offloads each agent reports. It removes everything before it
// returns, also when ctx ends.
func (b *bench) run(ctx context.Context) []benchRow {
	var runs []*pathRun
	defer func() { b.teardown(runs) }() // on an early return; idempotent
	for _, p := range b.cfg.paths {
		r := b.setup(ctx, p)
		runs = append(runs, r)
		if ctx.Err() != nil {
			return nil
		}
	}
	for i := 0; i < b.cfg.reps; i++ {
		fmt.Fprintf(b.stdout, "round %d of %d (Gbit/s, 1 stream / %d streams):", i+1, b.cfg.reps, benchStreams)
		for _, r := range runs {
			if r.row.Err != nil {
				continue
			}
			one, err := b.iperfRun(ctx, r.ep, 1, &r.row)
			if err == nil {
				r.row.Runs = append(r.row.Runs, one.BitsPerSecond)
				r.row.Retrans += one.Retransmits
				r.row.Gbit += float64(one.Bytes) * 8 / 1e9
				var four iperfResult
				if four, err = b.iperfRun(ctx, r.ep, benchStreams, nil); err == nil {
					r.row.Runs4 = append(r.row.Runs4, four.BitsPerSecond)
					r.row.Retrans4 += four.Retransmits
					fmt.Fprintf(b.stdout, "  %s %.2f / %.2f", r.row.Name, one.BitsPerSecond/1e9, four.BitsPerSecond/1e9)
					continue
				}
				err = fmt.Errorf("iperf3 -P %d: %w", benchStreams, err)
			}
			if ctx.Err() != nil {
				fmt.Fprintln(b.stdout, "  interrupted")
				return nil
			}
			r.row.Err = fmt.Errorf("round %d: %w", i+1, err)
			fmt.Fprintf(b.stdout, "  %s FAILED", r.row.Name)
		}
		fmt.Fprintln(b.stdout)
	}
	fmt.Fprintf(b.stdout, "round trip:")
	for _, r := range runs {
		if r.row.Err != nil {
			continue
		}
		b.pings(ctx, r)
		if ctx.Err() != nil {
			fmt.Fprintln(b.stdout, "  interrupted")
			return nil
		}
		if r.spec.backend == "udp" {
			r.row.Offloads = b.offloads(ctx, r.ep.c)
		}
		if r.row.Err != nil {
			fmt.Fprintf(b.stdout, "  %s FAILED", r.row.Name)
			continue
		}
		fmt.Fprintf(b.stdout, "  %s %.3f ms", r.row.Name, r.row.rttMedian())
	}
	fmt.Fprintln(b.stdout)
	b.teardown(runs)
	rows := make([]benchRow, len(runs))
	for i, r := range runs {
		rows[i] = r.row
	}
	return rows
}

// setup creates one path and waits until its endpoints reach each other; a failure is left in row.Err.
func (b *bench) setup(ctx context.Context, path string) *pathRun {
	r := &pathRun{row: benchRow{Name: path}, spec: benchPathSpecs[path]}
	fmt.Fprintf(b.stdout, "%-13s setting up ... ", path)
	t0 := time.Now()
	var err error
	if r.spec.backend == "" {
		r.ep, r.cleanup, err = b.vethPair(r.spec)
	} else {
		r.ep, r.cleanup, err = b.cluster(ctx, r.spec)
	}
	if err == nil {
		err = b.waitReach(ctx, r.ep)
	}
	if err != nil {
		b.failed(ctx)
		r.row.Err = err
		return r
	}
	r.row.MTU = r.ep.mtu
	r.row.Agents = r.ep.c != nil
	fmt.Fprintf(b.stdout, "up in %s\n", time.Since(t0).Round(100*time.Millisecond))
	return r
}

// teardown removes every path still set up; a failure to remove one is added to the path's row.Err.
func (b *bench) teardown(runs []*pathRun) {
	for i := len(runs) - 1; i >= 0; i-- {
		r := runs[i]
		if r.cleanup == nil {
			continue
		}
		if err := r.cleanup(); err != nil {
			fmt.Fprintf(b.stdout, "%s: clean up: %v\n", r.row.Name, err)
			r.row.Err = errors.Join(r.row.Err, fmt.Errorf("clean up: %w", err))
		}
		r.cleanup = nil
	}
}

// pings sends benchPings echoes from the path's source to its destination and records each round trip.
func (b *bench) pings(ctx context.Context, r *pathRun) {
	// Without -q ping prints each reply; it exits non-zero if one is missing, which the REPLIES column shows.
	out, err := runIn(ctx, r.ep.src, benchPings*benchPingInterval+10*time.Second, "ping", "-n", "-c", fmt.Sprint(benchPings),
		"-i", strconv.FormatFloat(benchPingInterval.Seconds(), 'f', -1, 64), "-W", "1", r.ep.ip.String())
	r.row.RTTs = parsePingReplies(out)
	if pr, perr := netcluster.ParsePing(out); perr == nil {
		r.row.Echoes = pr.Transmitted
	}
	if len(r.row.RTTs) == 0 && ctx.Err() == nil {
		if err == nil {
			err = errors.New("no reply lines in its output")
		}
		r.row.Err = fmt.Errorf("ping %s: no replies: %w: %s", r.ep.ip, err, strings.TrimSpace(out))
	}
}

// offloads returns the udp offloads c's agents use, from each one's /metrics or else from its log.
func (b *bench) offloads(ctx context.Context, c *netcluster.Cluster) string {
	var names, per []string
	for _, n := range c.Nodes() {
		off, ok := "", false
		if m, err := c.Metrics(ctx, n); err == nil {
			off, ok = offloadsFromMetrics(m)
		} else {
			b.log.Warn("no metrics; reading the offloads from the log", "node", n.Name, "err", err)
		}
		if !ok {
			off, ok = offloadsFromLog(c.AgentLog(n))
		}
		if !ok {
			off = "not reported"
		}
		names, per = append(names, n.Name), append(per, off)
	}
	return joinOffloads(names, per)
}

// agentCPU returns the CPU time the cluster's agents have used so far (all of them together).
func agentCPU(c *netcluster.Cluster) (time.Duration, error) {
	var sum time.Duration
	for _, n := range c.Nodes() {
		pid := n.AgentPID()
		if pid == 0 || !n.AgentRunning() {
			return 0, fmt.Errorf("node %s: weftd is not running: %v", n.Name, n.AgentExit())
		}
		f := "/proc/" + strconv.Itoa(pid) + "/stat"
		stat, err := os.ReadFile(f)
		if err != nil {
			return 0, fmt.Errorf("node %s: weftd CPU time: %w", n.Name, err)
		}
		d, err := procCPU(string(stat))
		if err != nil {
			return 0, fmt.Errorf("node %s: %s: %w", n.Name, f, err)
		}
		sum += d
	}
	return sum, nil
}

// failed ends the progress line of a path that failed or was interrupted.
func (b *bench) failed(ctx context.Context) {
	if ctx.Err() != nil {
		fmt.Fprintln(b.stdout, "interrupted")
		return
	}
	fmt.Fprintln(b.stdout, "failed")
}

// vethPair creates the reference: <prefix>-ref-a and <prefix>-ref-b joined by one veth pair, 192.0.2.1/24
// and 192.0.2.2/24, MTU 1500.
func (b *bench) vethPair(spec benchPath) (endpoints, func() error, error) {
	var nss []*kerneltest.NS
	cleanup := func() error {
		var errs []error
		for i := len(nss) - 1; i >= 0; i-- {
			errs = append(errs, nss[i].Delete())
		}
		return errors.Join(errs...)
	}
	for _, s := range []string{"a", "b"} {
		ns, err := kerneltest.CreateNS(b.cfg.prefix + "-" + spec.ns + "-" + s)
		if ns != nil {
			nss = append(nss, ns)
		}
		if err != nil {
			return endpoints{}, cleanup, err
		}
	}
	if err := kerneltest.CreateVeth(nss[0], "eth0", "192.0.2.1/24", nss[1], "eth0", "192.0.2.2/24"); err != nil {
		return endpoints{}, cleanup, err
	}
	return endpoints{src: nss[0], dst: nss[1], ip: netip.MustParseAddr("192.0.2.2"), mtu: 1500}, cleanup, nil
}

// cluster starts a 2-node netcluster as spec says, with the prefix <prefix>-<spec.ns>; traffic goes from
// n1's container to n2's (to its IPv6 address with --ipv6).
func (b *bench) cluster(ctx context.Context, spec benchPath) (endpoints, func() error, error) {
	weftd := b.weftd
	if spec.baseline {
		weftd = b.cfg.baseline
	}
	prefix := b.cfg.prefix + "-" + spec.ns
	var configArgs []string
	if b.cfg.ipv6 {
		configArgs = []string{"--ipv6-network", bench6Network}
	}
	c, err := netcluster.Start(ctx, netcluster.Options{
		Prefix:          prefix,
		Backend:         spec.backend,
		ConfigArgs:      configArgs,
		Nodes:           2,
		Weftd:           weftd,
		ExtraAgentFlags: spec.flags,
		ClusterBin:      b.self,
		Dir:             filepath.Join(stateDir, prefix),
		RemoveDir:       true,
		StateFile:       stateFile(prefix), // so `weft-cluster down --prefix` can clean up after a SIGKILL
		Log:             b.log,
	})
	if err != nil {
		return endpoints{}, nil, err
	}
	n1, n2 := c.Node(1), c.Node(2)
	ip := n2.ContainerIP()
	if b.cfg.ipv6 {
		ip = n2.ContainerIP6()
	}
	return endpoints{src: n1.Container(), dst: n2.Container(), ip: ip, mtu: n1.MTU(), c: c}, c.Close, nil
}

// waitReach pings until the first reply (the peers learn of each other through etcd watches), so neither
// convergence nor ARP falls into a measurement.
func (b *bench) waitReach(ctx context.Context, ep endpoints) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	for {
		out, err := runIn(ctx, ep.src, 5*time.Second, "ping", "-n", "-c", "1", "-W", "1", ep.ip.String())
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s → %s: no ping reply: %w: %s", ep.src.Name, ep.ip, ctx.Err(), strings.TrimSpace(out))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// iperfRun runs one test with streams parallel streams: `iperf3 -s -1` in dst (started, and if need be
// killed, by its PID) and `iperf3 -c` in src. With cpu set (and agents on the path), it adds the agents'
// CPU time during the client's run to cpu.AgentCPU and the run's duration to cpu.Wall.
func (b *bench) iperfRun(ctx context.Context, ep endpoints, streams int, cpu *benchRow) (iperfResult, error) {
	srv, err := startServer(ep.dst, b.iperf, "-s", "-1", "-p", fmt.Sprint(benchPort))
	if err != nil {
		return iperfResult{}, err
	}
	defer srv.kill()
	if err := waitListening(ctx, ep.dst, benchPort, srv, 5*time.Second); err != nil {
		return iperfResult{}, err
	}
	if ep.c == nil {
		cpu = nil
	}
	var cpu0 time.Duration
	if cpu != nil {
		if cpu0, err = agentCPU(ep.c); err != nil {
			return iperfResult{}, err
		}
	}
	t0 := time.Now()
	out, cerr := runIn(ctx, ep.src, time.Duration(b.cfg.seconds)*time.Second+20*time.Second,
		b.iperf, "-c", ep.ip.String(), "-p", fmt.Sprint(benchPort), "-t", fmt.Sprint(b.cfg.seconds),
		"-P", strconv.Itoa(streams), "-J")
	wall := time.Since(t0)
	if cpu != nil {
		cpu1, err := agentCPU(ep.c)
		if err != nil {
			return iperfResult{}, err
		}
		cpu.AgentCPU += cpu1 - cpu0
		cpu.Wall += wall
	}
	r, err := parseIperf3([]byte(out))
	if err != nil {
		if cerr != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w (%v)", err, cerr)
		}
		return r, err
	}
	srv.wait(2 * time.Second) // a one-off server exits after its test; kill() covers the rest
	return r, nil
}

// server is a process started in a namespace with `ip netns exec` (which execs in place: the PID is the
// program's own).
type server struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startServer starts argv in ns in its own process group (a terminal's Ctrl-C reaches only weft-cluster,
// which kills it) with PR_SET_PDEATHSIG, so it dies with weft-cluster; the signal is tied to the thread that
// forked, which is locked until the process exits.
func startServer(ns *kerneltest.NS, argv ...string) (*server, error) {
	s := &server{cmd: exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...), done: make(chan struct{})}
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s in netns %s: %w", argv[0], ns.Name, err)
	}
	return s, nil
}

func (s *server) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// wait waits up to d for the exit.
func (s *server) wait(d time.Duration) {
	select {
	case <-s.done:
	case <-time.After(d):
	}
}

// kill SIGKILLs the PID it started, if it still runs, and waits for it.
func (s *server) kill() {
	if s.running() {
		s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
}

// waitListening waits until a TCP socket in ns listens on port (read from the namespace's /proc/net/tcp and
// tcp6, so no connection is made: a one-off iperf3 server would take it for its test).
func waitListening(ctx context.Context, ns *kerneltest.NS, port int, srv *server, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var listening bool
		err := ns.Do(func() error {
			for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				b, err := os.ReadFile(f)
				if err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				listening = listening || tcpListening(string(b), port)
			}
			return nil
		})
		switch {
		case err != nil:
			return err
		case listening:
			return nil
		case !srv.running():
			return fmt.Errorf("iperf3 server in netns %s exited: %v", ns.Name, srv.cmd.ProcessState)
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			return fmt.Errorf("iperf3 server in netns %s: not listening on port %d after %s", ns.Name, port, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runIn runs argv inside ns (ip netns exec) and returns its standard output (with standard error after it
// if it fails). It is killed, by its PID, after timeout or when ctx ends.
func runIn(ctx context.Context, ns *kerneltest.NS, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		return out.String() + errb.String(), fmt.Errorf("in netns %s: %s: %w", ns.Name, strings.Join(argv, " "), err)
	}
	return out.String(), nil
}

// machine describes this host: CPUs usable by this process, the CPU model, the kernel and iperf3's version.
func machine(iperf string) benchMachine {
	m := benchMachine{CPUs: runtime.NumCPU(), Kernel: "?", Iperf: "iperf3"}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.Join(strings.Fields(v), " ")
				break
			}
		}
	}
	if out, err := exec.Command(iperf, "--version").Output(); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 2 {
			m.Iperf = "iperf3 " + f[1]
		}
	}
	return m
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// The scale bench: one real weftd (vxlan) in a namespace of its own, with an embedded etcd in the same
// namespace holding N simulated peer leases. It measures, per N: the time from weftd's start until every
// peer's route is in the kernel; the time from writing one new lease until its route appears (netlink
// route events), p50 and p99 over --samples leases; weftd's CPU at rest and its RSS.
//
// The host side (bench-scale) creates a namespace per N with an eth0 (one end of a veth pair) and runs the measuring side
// (bench-scale-node) inside it with `ip netns exec`, so etcd, weftd and the route events all live there.

const scaleNS = "wscale"

// scaleResult is one row of the table, printed by bench-scale-node as JSON.
type scaleResult struct {
	Peers    int
	Start    time.Duration // weftd start → every peer's route present
	P50, P99 time.Duration // new lease written → its route present
	PutP50   time.Duration // of which the etcd write itself (the bench's own etcd), p50
	Samples  int
	CPURest  float64 // percent of one CPU over the rest interval, weftd with its children
	CPUKids  float64 // of which its children (the iptables and nft commands it runs)
	RSSKiB   int     // VmRSS at the end of the rest interval
	AnonKiB  int     // of which RssAnon: the process's own memory (the rest is the binary's shared file pages)
}

func cmdBenchScale(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft-cluster bench-scale", flag.ContinueOnError)
	peers := fs.String("peers", "100,1000,4000", "peer counts to measure, comma-separated")
	samples := fs.Int("samples", 300, "new leases written per peer count (p50 and p99 over them; p99 is the 3rd slowest of 300)")
	rest := fs.Duration("rest", 330*time.Second, "how long CPU at rest is measured (the default spans one periodic comparison with the kernel, every 10th 30 s reconcile; 10s for a quick look)")
	weftd := fs.String("weftd", "", "weftd binary (default: weftd next to weft-cluster, else on PATH)")
	extra := fs.String("weftd-flags", "", "more weftd flags, space-separated (to compare settings: --iptables-resync=1h)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces)")
	}
	bin, err := findWeftd(*weftd)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var results []scaleResult
	for _, f := range strings.Split(*peers, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 60000 {
			return fmt.Errorf("--peers %q: want counts from 1 to 60000", f)
		}
		fmt.Fprintf(stderr, "measuring %d peers...\n", n)
		r, err := scaleRun(ctx, self, bin, n, *samples, *rest, *extra, stderr)
		if err != nil {
			return fmt.Errorf("%d peers: %w", n, err)
		}
		results = append(results, r)
	}
	printScale(stdout, results)
	return nil
}

// scaleRun measures one peer count in a fresh namespace, removed afterwards.
func scaleRun(ctx context.Context, self, weftd string, peers, samples int, rest time.Duration, extra string, stderr io.Writer) (scaleResult, error) {
	var r scaleResult
	name := fmt.Sprintf("%s-%d", scaleNS, os.Getpid())
	ns, err := kerneltest.CreateNS(name)
	if err != nil {
		return r, err
	}
	defer ns.Delete()
	for _, args := range [][]string{
		{"link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"},
		{"addr", "add", "192.0.2.11/24", "dev", "eth0"},
		{"link", "set", "eth0", "up"},
		{"link", "set", "eth0p", "up"},
		{"link", "set", "lo", "up"},
	} {
		if out, err := ns.IP(args...); err != nil {
			return r, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	dir, err := os.MkdirTemp("", "weft-bench-scale")
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", name, self, "bench-scale-node",
		"--weftd", weftd, "--peers", strconv.Itoa(peers), "--samples", strconv.Itoa(samples),
		"--rest", rest.String(), "--dir", dir, "--weftd-flags", extra)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(dir, "weftd.log")); rerr == nil {
			fmt.Fprintf(stderr, "weftd log:\n%s\n", tailLines(string(b), 40))
		}
		return r, err
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("bench-scale-node output %q: %w", out, err)
	}
	return r, nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func msText(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func printScale(w io.Writer, rs []scaleResult) {
	fmt.Fprintln(w, "One weftd (vxlan) with N simulated peers in a local etcd. New lease: written to etcd until its route is in the kernel.")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PEERS\tSTART (ALL ROUTES)\tNEW LEASE P50\tNEW LEASE P99\t(ETCD PUT P50)\tSAMPLES\tCPU AT REST\t(CHILDREN)\tRSS\t(PRIVATE)")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%.3f %%\t%.3f %%\t%.1f MB\t%.1f MB\n", r.Peers, msText(r.Start), msText(r.P50), msText(r.P99), msText(r.PutP50), r.Samples, r.CPURest, r.CPUKids,
			float64(r.RSSKiB)/1024, float64(r.AnonKiB)/1024)
	}
	tw.Flush()
	if len(rs) > 1 {
		first := rs[0]
		for _, r := range rs[1:] {
			fmt.Fprintf(w, "ratio %d/%d peers: p50 %.2fx, p99 %.2fx\n", r.Peers, first.Peers,
				float64(r.P50)/float64(first.P50), float64(r.P99)/float64(first.P99))
		}
	}
}

// cmdBenchScaleNode is the measuring side, run inside the bench's namespace.
func cmdBenchScaleNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft-cluster bench-scale-node", flag.ContinueOnError)
	weftd := fs.String("weftd", "", "weftd binary")
	peers := fs.Int("peers", 100, "simulated peers")
	samples := fs.Int("samples", 300, "new leases to time")
	rest := fs.Duration("rest", 10*time.Second, "CPU at rest interval")
	dir := fs.String("dir", "", "working directory")
	extra := fs.String("weftd-flags", "", "more weftd flags, space-separated")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// etcd on loopback, in this namespace.
	ready := make(chan string, 1)
	etcdDone := make(chan error, 1)
	go func() {
		etcdDone <- etcdtest.Run(ctx, etcdtest.Options{
			Dir: filepath.Join(*dir, "etcd"), ClientAddr: "127.0.0.1:23790", LogFile: filepath.Join(*dir, "etcd.log"),
			UnsafeNoFsync: true, Fast: true,
		}, func(url string) { ready <- url })
	}()
	var url string
	select {
	case url = <-ready:
	case err := <-etcdDone:
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() { cancel(); <-etcdDone }()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	const prefix = subnet.DefaultPrefix
	if _, err := cli.Put(ctx, prefix+"/config", `{"Network":"10.0.0.0/8","SubnetLen":24,"SubnetMin":"10.1.0.0","Backend":{"Type":"vxlan"}}`); err != nil {
		return err
	}
	grant, err := cli.Grant(ctx, 3600)
	if err != nil {
		return err
	}
	// Peer i: 10.(1+i/256).(i%256).0/24 at 198.18.0.0+1+i with a MAC of its own. Samples live in 10.200.0.0/16.
	lease := func(sub netip.Prefix, i int) (string, string) {
		pub := netip.AddrFrom4([4]byte{198, 18 + byte((i+1)>>16), byte((i + 1) >> 8), byte(i + 1)})
		v, _ := json.Marshal(subnet.Attrs{PublicIP: pub, BackendType: "vxlan",
			BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:%02x:%02x:%02x:%02x:01"}`, byte(i>>16), byte(i>>8), byte(i), byte(sub.Addr().As4()[1])))})
		return prefix + "/subnets/" + subnet.KeyName(sub, netip.Prefix{}), string(v)
	}
	peerSubnet := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(1 + i/256), byte(i % 256), 0}), 24)
	}
	for i := 0; i < *peers; i += 100 {
		var ops []clientv3.Op
		for j := i; j < min(i+100, *peers); j++ {
			k, v := lease(peerSubnet(j), j)
			ops = append(ops, clientv3.OpPut(k, v, clientv3.WithLease(grant.ID)))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("write peer leases: %w", err)
		}
	}

	// Route events, from before weftd starts.
	done := make(chan struct{})
	defer close(done)
	updates, err := kernel.SubscribeRoutes(65536, done)
	if err != nil {
		return err
	}

	logf, err := os.Create(filepath.Join(*dir, "weftd.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	agent := exec.Command(*weftd, append([]string{"--etcd-endpoints", url, "--iface", "eth0", "--subnet-file", filepath.Join(*dir, "subnet.env"),
		"--node-id", "bench", "--subnet-lease-ttl", "1h"}, strings.Fields(*extra)...)...)
	agent.Stdout, agent.Stderr = logf, logf
	agent.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var r scaleResult
	r.Peers = *peers
	start := time.Now()
	if err := agent.Start(); err != nil {
		return err
	}
	defer func() { agent.Process.Signal(syscall.SIGTERM); agent.Wait() }()

	// Start: every peer's route present.
	want := map[netip.Prefix]bool{}
	for i := range *peers {
		want[peerSubnet(i)] = true
	}
	seen := 0
	timeout := time.After(60 * time.Second)
	for seen < len(want) {
		select {
		case u := <-updates:
			if dst, ok := ourNewRoute(u); ok && want[dst] {
				want[dst] = false
				seen++
			}
		case <-timeout:
			return fmt.Errorf("only %d of %d peer routes after 60 s", seen, len(want))
		}
	}
	r.Start = time.Since(start)

	// New leases, one at a time, once weftd has settled after its start (its first complete Sets).
	time.Sleep(3 * time.Second)
	for drained := false; !drained; {
		select {
		case <-updates:
		default:
			drained = true
		}
	}
	var lat, putLat []time.Duration
	for s := range *samples {
		sub := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200 + byte(s/256), byte(s % 256), 0}), 24)
		k, v := lease(sub, 50000+s)
		t0 := time.Now()
		if _, err := cli.Put(ctx, k, v, clientv3.WithLease(grant.ID)); err != nil {
			return err
		}
		putLat = append(putLat, time.Since(t0))
		if err := waitRoute(updates, sub, true, 10*time.Second); err != nil {
			return fmt.Errorf("sample %d: %w", s, err)
		}
		lat = append(lat, time.Since(t0))
		if _, err := cli.Delete(ctx, k); err != nil {
			return err
		}
		if err := waitRoute(updates, sub, false, 10*time.Second); err != nil {
			return fmt.Errorf("sample %d removal: %w", s, err)
		}
	}
	slices.Sort(lat)
	slices.Sort(putLat)
	r.PutP50 = putLat[len(putLat)/2]
	r.Samples = len(lat)
	r.P50 = lat[len(lat)/2]
	r.P99 = lat[min(len(lat)-1, len(lat)*99/100)]

	// At rest.
	time.Sleep(time.Second)
	c0, k0, err := cpuTicks(agent.Process.Pid)
	if err != nil {
		return err
	}
	w0 := time.Now()
	time.Sleep(*rest)
	c1, k1, err := cpuTicks(agent.Process.Pid)
	if err != nil {
		return err
	}
	secs := time.Since(w0).Seconds()
	r.CPURest = float64(c1+k1-c0-k0) / 100 / secs * 100 // USER_HZ is 100
	r.CPUKids = float64(k1-k0) / 100 / secs * 100
	if r.RSSKiB, err = statusKiB(agent.Process.Pid, "VmRSS"); err != nil {
		return err
	}
	if r.AnonKiB, err = statusKiB(agent.Process.Pid, "RssAnon"); err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(r)
}

// ourNewRoute returns the destination of a new route of ours in an event.
func ourNewRoute(e kernel.RouteEvent) (netip.Prefix, bool) {
	return e.Dst, e.Add && e.Ours && e.Dst.IsValid()
}

// waitRoute waits for the route to dst to be added (add true) or deleted.
func waitRoute(updates <-chan kernel.RouteEvent, dst netip.Prefix, add bool, timeout time.Duration) error {
	t := time.After(timeout)
	for {
		select {
		case e := <-updates:
			if e.Add == add && e.Dst == dst {
				return nil
			}
		case <-t:
			return fmt.Errorf("route to %s (add %v): no event within %s", dst, add, timeout)
		}
	}
}

// cpuTicks returns a process's user + system time in clock ticks, with that of its children it waited for
// (weftd's iptables runs): /proc/PID/stat fields 14 to 17.
func cpuTicks(pid int) (self, children int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 15 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var t [4]int64
	for i, v := range f[11:15] { // utime, stime, cutime, cstime
		if t[i], err = strconv.ParseInt(v, 10, 64); err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
	}
	return t[0] + t[1], t[2] + t[3], nil
}

// statusKiB reads a field in kB from /proc/<pid>/status ("VmRSS").
func statusKiB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

package netcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// Fixed addresses of the underlay (RFC 5737 TEST-NET-1).
var (
	// EtcdAddr is the etcd namespace's address, its first member's; etcd's client port is EtcdPort. Further
	// members (Options.EtcdMembers) have the addresses that follow (192.0.2.3, 192.0.2.4).
	EtcdAddr = netip.MustParseAddr("192.0.2.2")
	// UnderlayBits is the underlay's prefix length.
	UnderlayBits = 24
	// UnderlayBits6 is the prefix length of the underlay's IPv6 addresses (2001:db8::/64, RFC 3849).
	UnderlayBits6 = 64
)

const (
	// EtcdPort is etcd's client port; its members talk to each other on EtcdPeerPort.
	EtcdPort     = 2379
	EtcdPeerPort = 2380
	// MaxEtcdMembers bounds Options.EtcdMembers (their addresses stay below the nodes').
	MaxEtcdMembers = 5
	// DefaultNetwork is the overlay network when Options.Network is empty.
	DefaultNetwork = "10.5.0.0/16"
	// DefaultHealthzPort is the agents' health port when Options.HealthzPort is zero.
	DefaultHealthzPort = 9101
	// MaxNodes bounds the node count so node addresses (192.0.2.11 ...) stay below 192.0.2.91.
	MaxNodes = 80
)

// ErrExists is returned by Start when namespaces with the cluster's prefix already exist.
var ErrExists = errors.New("namespaces with this prefix already exist")

// Options configure a cluster.
type Options struct {
	// Prefix names every namespace (<Prefix>-lan, <Prefix>-etcd, <Prefix>-n1 ...); required. Tests use
	// kerneltest.Prefix().
	Prefix string
	// Backend is the backend type written to the network config. Empty: "vxlan".
	Backend string
	// BackendJSON, when set, is the full Backend object of the network config (e.g. {"Type":"vxlan","VNI":1});
	// it overrides Backend. Empty: {"Type": Backend}.
	BackendJSON string
	// Network is the overlay network. Empty: DefaultNetwork.
	Network string
	// SubnetLen is the per-node prefix length. Zero: the network config's default (24 for a /16).
	SubnetLen int
	// ConfigArgs are appended to the `weftd config set` command line that writes the network config (e.g.
	// "--subnet-min", "10.9.0.0"). Nil: none.
	ConfigArgs []string
	// Nodes is the number of nodes Start creates. Zero: 3. At most MaxNodes.
	Nodes int
	// EtcdMembers is the number of etcd members, each a process in the etcd namespace on an address of its
	// own (EtcdAddr and the addresses after it); the agents get every member's client URL. Zero: 1. At
	// most MaxEtcdMembers.
	EtcdMembers int
	// Weftd is the path of the weftd binary; required.
	Weftd string
	// ClusterBin is the path of the weft-cluster binary, which runs etcd (`weft-cluster etcd`); required.
	ClusterBin string
	// Dir holds each node's env file and log (<Dir>/n1/subnet.env, <Dir>/n1/weftd.log), etcd's data and
	// log (<Dir>/etcd/); required. It is created if missing.
	Dir string
	// RemoveDir makes Close remove Dir. False: Dir is left (tests use t.TempDir()).
	RemoveDir bool
	// ExtraAgentFlags are appended to every weftd's command line (e.g. --subnet-lease-ttl=5s). Nil: none.
	ExtraAgentFlags []string
	// AgentStore, when set, returns the start of node n's weftd command line, up to and including the flags
	// that select its store, in place of [Weftd --etcd-endpoints <EtcdURL>]. Kube mode returns
	// [env NODE_NAME=n1 <Weftd> --kube-subnet-mgr --kubeconfig-file ... --net-config-path ...]. Nil: etcd.
	AgentStore func(n *Node) []string
	// ReadyPath, when set, returns the health path that says node n's agent is ready, in place of "/readyz"
	// (flanneld, run as a node's agent in kube mode, serves only /healthz).
	ReadyPath func(n *Node) string
	// Setup, when set, runs once etcd serves and every node's namespace exists, before any agent starts, in
	// place of writing the network config to etcd (kube mode starts the API server as a service and creates
	// the Node objects there). Nil: `weftd config set`.
	Setup func(ctx context.Context, c *Cluster, nodes []*Node) error
	// HealthzPort is the agents' health port on 127.0.0.1 in each node namespace. Zero: DefaultHealthzPort.
	HealthzPort int
	// Timeout bounds each wait (etcd ready, an env file, an agent ready). Zero: 30 s.
	Timeout time.Duration
	// Detach lets the started processes outlive this process (weft-cluster up --keep). False: the kernel
	// kills them if this process dies.
	Detach bool
	// StateFile, when set, is kept up to date with what the cluster created (see State), so Teardown can
	// remove it from another process; Close removes it. Empty: no state file.
	StateFile string
	// Docker, when set, makes every node a Docker host: weft-docker-opts and dockerd as the units in
	// dist/systemd run them, and a busybox container instead of the container namespace (see
	// DockerOptions). Nil: no Docker.
	Docker *DockerOptions
	// Log receives progress messages. Nil: discarded.
	Log *slog.Logger
}

func (o *Options) setDefaults() error {
	if o.Prefix == "" {
		return errors.New("cluster options: Prefix is required")
	}
	if o.Weftd == "" || o.ClusterBin == "" {
		return errors.New("cluster options: Weftd and ClusterBin are required")
	}
	if o.Dir == "" {
		return errors.New("cluster options: Dir is required")
	}
	if o.Backend == "" {
		o.Backend = "vxlan"
	}
	if o.Network == "" {
		o.Network = DefaultNetwork
	}
	if _, err := netip.ParsePrefix(o.Network); err != nil {
		return fmt.Errorf("cluster options: Network %q: %w", o.Network, err)
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Nodes < 1 || o.Nodes > MaxNodes {
		return fmt.Errorf("cluster options: Nodes %d: want 1 to %d", o.Nodes, MaxNodes)
	}
	if o.EtcdMembers == 0 {
		o.EtcdMembers = 1
	}
	if o.EtcdMembers < 1 || o.EtcdMembers > MaxEtcdMembers {
		return fmt.Errorf("cluster options: EtcdMembers %d: want 1 to %d", o.EtcdMembers, MaxEtcdMembers)
	}
	if o.HealthzPort == 0 {
		o.HealthzPort = DefaultHealthzPort
	}
	if o.Timeout == 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	var err error
	if o.Dir, err = filepath.Abs(o.Dir); err != nil {
		return fmt.Errorf("cluster options: Dir: %w", err)
	}
	bins := []*string{&o.Weftd, &o.ClusterBin}
	if o.Docker != nil {
		if o.Docker.DockerOpts == "" {
			return errors.New("cluster options: Docker.DockerOpts is required")
		}
		bins = append(bins, &o.Docker.DockerOpts)
	}
	for _, p := range bins {
		if *p, err = filepath.Abs(*p); err != nil {
			return fmt.Errorf("cluster options: %w", err)
		}
		if _, err := os.Stat(*p); err != nil {
			return fmt.Errorf("cluster options: %w", err)
		}
	}
	return nil
}

// Cluster is a running netns cluster. Its methods are safe for concurrent use.
type Cluster struct {
	opts Options
	log  *slog.Logger

	// LAN is the underlay switch's namespace (bridge br0); Etcd is etcd's namespace.
	LAN, Etcd *kerneltest.NS
	// EtcdURL is etcd's client URL, http://192.0.2.2:2379; with several members (Options.EtcdMembers)
	// every member's, comma-separated, as --etcd-endpoints takes them.
	EtcdURL string

	mu sync.Mutex // guards all following fields
	// nss are the namespaces created, in creation order.
	nss      []*kerneltest.NS
	nodes    []*Node
	etcds    []*proc          // the etcd members, by member index while running (or stopped)
	services map[string]*proc // by name, see StartService
	// cmds are short-lived commands running now (ping, weftd CLI calls), killed by Close.
	cmds   map[*exec.Cmd]struct{}
	closed bool

	imageOnce sync.Once // builds image (the busybox image tar, Options.Docker) once
	image     []byte
	imageErr  error
}

// Start creates the cluster described by o: the underlay, etcd, the network config (written with
// `weftd config set` from the first node), o.Nodes agents and their containers. It returns once every node
// has its container attached and reports ready. On error everything created so far is removed.
func Start(ctx context.Context, o Options) (*Cluster, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	existing, err := kerneltest.ListNS(o.Prefix + "-")
	if err != nil {
		return nil, err
	}
	if len(existing) > 0 {
		return nil, fmt.Errorf("cluster %s: %w: %s", o.Prefix, ErrExists, strings.Join(existing, " "))
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", o.Prefix, err)
	}
	c := &Cluster{opts: o, log: o.Log, cmds: map[*exec.Cmd]struct{}{}}
	var urls []string
	for i := range o.EtcdMembers {
		urls = append(urls, "http://"+netip.AddrPortFrom(etcdMemberAddr(i), EtcdPort).String())
	}
	c.EtcdURL = strings.Join(urls, ",")
	if err := c.start(ctx); err != nil {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
		return nil, err
	}
	return c, nil
}

func (c *Cluster) start(ctx context.Context) error {
	o := c.opts
	c.log.Info("creating underlay", "prefix", o.Prefix)
	var err error
	if c.LAN, err = c.newNS("lan"); err != nil {
		return err
	}
	if err := kerneltest.CreateBridge(c.LAN, "br0"); err != nil {
		return err
	}
	if c.Etcd, err = c.newNS("etcd"); err != nil {
		return err
	}
	if err := c.plug(c.Etcd, "veth-etcd", netip.PrefixFrom(EtcdAddr, UnderlayBits)); err != nil {
		return err
	}
	for i := 1; i < o.EtcdMembers; i++ {
		if _, err := c.Etcd.IP("addr", "add", netip.PrefixFrom(etcdMemberAddr(i), UnderlayBits).String(), "dev", "eth0"); err != nil {
			return err
		}
	}
	if err := c.StartEtcd(ctx); err != nil {
		return err
	}
	nodes := make([]*Node, o.Nodes)
	for i := range nodes {
		if nodes[i], err = c.newNode(); err != nil {
			return err
		}
	}
	if o.Setup != nil {
		if err := o.Setup(ctx, c, nodes); err != nil {
			return err
		}
	} else if err := c.setConfig(ctx, nodes[0].NS); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := n.StartAgent(ctx); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := n.attach(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Options returns the options the cluster runs with (defaults filled in).
func (c *Cluster) Options() Options { return c.opts }

// Nodes returns the cluster's nodes in order of creation.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Node returns node i (1-based, as in the namespace name <p>-n<i>), or nil.
func (c *Cluster) Node(i int) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 1 || i > len(c.nodes) {
		return nil
	}
	return c.nodes[i-1]
}

// AddNode creates one more node (a later joiner), starts its agent and attaches its container.
func (c *Cluster) AddNode(ctx context.Context) (*Node, error) { return c.AddNodeWith(ctx, nil) }

// AddNodeWith is AddNode with prepare run once the node's namespace is on the underlay, before its agent
// starts (a test plants state the agent should find, such as another program's iptables rules). Nil: none.
func (c *Cluster) AddNodeWith(ctx context.Context, prepare func(*Node) error) (*Node, error) {
	n, err := c.newNode()
	if err != nil {
		return nil, err
	}
	if prepare != nil {
		if err := prepare(n); err != nil {
			return n, fmt.Errorf("node %s: prepare: %w", n.Name, err)
		}
	}
	if err := n.StartAgent(ctx); err != nil {
		return n, err
	}
	return n, n.attach(ctx)
}

// AddHost creates a bare namespace <prefix>-<name> on the underlay with address addr on its eth0 (a
// stranger on the LAN, say), removed by Close like everything else.
func (c *Cluster) AddHost(name string, addr netip.Addr) (*kerneltest.NS, error) {
	ns, err := c.newNS(name)
	if err != nil {
		return nil, err
	}
	return ns, c.plug(ns, "veth-"+name, netip.PrefixFrom(addr, UnderlayBits))
}

// newNS creates <prefix>-<suffix> and records it for Close.
func (c *Cluster) newNS(suffix string) (*kerneltest.NS, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("cluster is closed")
	}
	ns, err := kerneltest.CreateNS(c.opts.Prefix + "-" + suffix)
	if ns != nil {
		c.nss = append(c.nss, ns)
		c.saveStateLocked()
	}
	return ns, err
}

// plug connects ns to the underlay switch: a veth named lanName on br0 and eth0 with addr in ns.
func (c *Cluster) plug(ns *kerneltest.NS, lanName string, addr netip.Prefix) error {
	if err := kerneltest.CreateVeth(c.LAN, lanName, "", ns, "eth0", addr.String()); err != nil {
		return err
	}
	_, err := c.LAN.IP("link", "set", lanName, "master", "br0")
	return err
}

func (c *Cluster) newNode() (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes) + 1
	c.mu.Unlock()
	if i > MaxNodes {
		return nil, fmt.Errorf("cluster %s: at most %d nodes", c.opts.Prefix, MaxNodes)
	}
	name := "n" + strconv.Itoa(i)
	ns, err := c.newNS(name)
	if err != nil {
		return nil, err
	}
	n := &Node{
		c:     c,
		Index: i,
		Name:  name,
		NS:    ns,
		Addr:  netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
		Addr6: netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", 10+i)),
		Dir:   filepath.Join(c.opts.Dir, name),
	}
	n.EnvFile = filepath.Join(n.Dir, "subnet.env")
	n.LogFile = filepath.Join(n.Dir, "weftd.log")
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	if err := c.plug(ns, "veth-"+name, netip.PrefixFrom(n.Addr, UnderlayBits)); err != nil {
		return nil, err
	}
	// The underlay is dual stack: an IPv6 network config's data path runs over IPv6 (no DAD: usable at once).
	if _, err := ns.IP("addr", "add", netip.PrefixFrom(n.Addr6, UnderlayBits6).String(), "dev", "eth0", "nodad"); err != nil {
		return nil, err
	}
	return n, nil
}

// setConfig writes the network config with `weftd config set` from ns.
func (c *Cluster) setConfig(ctx context.Context, ns *kerneltest.NS) error {
	o := c.opts
	args := []string{"config", "set", "--network", o.Network, "--backend", o.Backend}
	if o.SubnetLen != 0 {
		args = append(args, "--subnet-len", strconv.Itoa(o.SubnetLen))
	}
	if o.BackendJSON != "" {
		args = append(args, "--backend-json", o.BackendJSON)
	}
	args = append(args, o.ConfigArgs...)
	c.log.Info("writing network config", "network", o.Network, "backend", o.Backend)
	// etcd may still be electing itself right after its start: retry briefly.
	var err error
	for try := 0; try < 20; try++ {
		if _, err = c.Weftd(ctx, ns, args...); err == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	return err
}

// Weftd runs a weftd CLI command (e.g. "leases", "delete", "10.5.3.0/24") inside ns against the cluster's
// etcd (--etcd-endpoints is appended) and returns its standard output; a failure's error carries its
// standard error.
func (c *Cluster) Weftd(ctx context.Context, ns *kerneltest.NS, args ...string) (string, error) {
	out, _, err := c.WeftdStderr(ctx, ns, args...)
	return out, err
}

// WeftdStderr is Weftd that also returns the command's standard error (where weftd writes warnings, such
// as unreadable lease keys).
func (c *Cluster) WeftdStderr(ctx context.Context, ns *kerneltest.NS, args ...string) (stdout, stderr string, err error) {
	argv := append([]string{c.opts.Weftd}, args...)
	argv = append(argv, "--etcd-endpoints", c.EtcdURL)
	var o, e strings.Builder
	if err := c.runTo(ctx, ns, &o, &e, argv...); err != nil {
		return o.String(), e.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(e.String()))
	}
	return o.String(), e.String(), nil
}

// run runs argv inside ns (ip netns exec) and returns its combined output.
func (c *Cluster) run(ctx context.Context, ns *kerneltest.NS, argv ...string) (string, error) {
	var b strings.Builder
	if err := c.runTo(ctx, ns, &b, &b, argv...); err != nil {
		return b.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(b.String()))
	}
	return b.String(), nil
}

// runTo runs argv inside ns (ip netns exec) with the given outputs. Close kills it if it still runs.
func (c *Cluster) runTo(ctx context.Context, ns *kerneltest.NS, stdout, stderr io.Writer, argv ...string) error {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := c.runCmd(cmd); err != nil {
		return fmt.Errorf("in netns %s: %s: %w", ns.Name, strings.Join(argv, " "), err)
	}
	return nil
}

// runCmd runs cmd (in its own process group) to completion. Close kills it if it still runs.
func (c *Cluster) runCmd(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("cluster is closed")
	}
	err := cmd.Start()
	if err == nil {
		c.cmds[cmd] = struct{}{}
	}
	c.mu.Unlock()
	if err == nil {
		err = cmd.Wait()
		c.mu.Lock()
		delete(c.cmds, cmd)
		c.mu.Unlock()
	}
	return err
}

// etcdMemberAddr returns member i's address (from 0: EtcdAddr).
func etcdMemberAddr(i int) netip.Addr {
	a := EtcdAddr
	for range i {
		a = a.Next()
	}
	return a
}

// StartEtcd starts etcd (again) in the etcd namespace, every member that is not running, with the same data
// directories and addresses, and waits until each member serves clients (with several members: once they
// have a leader).
func (c *Cluster) StartEtcd(ctx context.Context) error {
	n := c.opts.EtcdMembers
	var initial []string
	for i := range n {
		initial = append(initial, fmt.Sprintf("m%d=http://%s", i+1, netip.AddrPortFrom(etcdMemberAddr(i), EtcdPeerPort)))
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return errors.New("cluster is closed")
	}
	if c.etcds == nil {
		c.etcds = make([]*proc, n)
	}
	var started []int
	for i := range n {
		if p := c.etcds[i]; p != nil && p.running() {
			continue
		}
		dir := c.etcdDir(i)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			c.mu.Unlock()
			return fmt.Errorf("etcd: %w", err)
		}
		addr := etcdMemberAddr(i)
		argv := []string{"ip", "netns", "exec", c.Etcd.Name, c.opts.ClusterBin, "etcd",
			"--listen", netip.AddrPortFrom(addr, EtcdPort).String(),
			"--data-dir", filepath.Join(dir, "data"), "--unsafe-no-fsync"}
		if n == 1 {
			argv = append(argv, "--fast")
		} else {
			// etcd's own timings: with --fast's 100 ms elections a loaded machine re-elects forever.
			argv = append(argv, "--name", fmt.Sprintf("m%d", i+1), "--peer", netip.AddrPortFrom(addr, EtcdPeerPort).String(),
				"--initial-cluster", strings.Join(initial, ","))
		}
		p, err := startProc(c.etcdName(i), argv, filepath.Join(dir, "etcd.log"), c.opts.Detach)
		if err != nil {
			c.mu.Unlock()
			return err
		}
		c.etcds[i] = p
		c.saveStateLocked()
		started = append(started, i)
		c.log.Info("started etcd", "member", c.etcdName(i), "pid", p.pid(), "url", "http://"+netip.AddrPortFrom(addr, EtcdPort).String())
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	for _, i := range started {
		if err := c.waitEtcd(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// etcdName names member i's process: "etcd", or "etcd1", "etcd2" ... with several members.
func (c *Cluster) etcdName(i int) string {
	if c.opts.EtcdMembers == 1 {
		return "etcd"
	}
	return fmt.Sprintf("etcd%d", i+1)
}

// etcdDir is member i's directory: <Dir>/etcd, or <Dir>/etcd1 ... with several members.
func (c *Cluster) etcdDir(i int) string { return filepath.Join(c.opts.Dir, c.etcdName(i)) }

// waitEtcd waits until member i answers /health with 200.
func (c *Cluster) waitEtcd(ctx context.Context, i int) error {
	c.mu.Lock()
	p := c.etcds[i]
	c.mu.Unlock()
	addr := netip.AddrPortFrom(etcdMemberAddr(i), EtcdPort)
	for {
		status, _, err := c.httpGet(ctx, c.Etcd, addr, "/health")
		if err == nil && status == 200 {
			return nil
		}
		if !p.running() {
			return fmt.Errorf("%s exited: %s", c.etcdName(i), exitText(p.err)+"\n"+tail(filepath.Join(c.etcdDir(i), "etcd.log"), 20))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd at http://%s not healthy: %w (last: status %d, %v)", addr, ctx.Err(), status, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StartService starts argv inside ns (ip netns exec) as the service name, with its output in
// <Dir>/<name>.log. Close stops services after the agents and before etcd. It is an error if a service of
// that name is running.
func (c *Cluster) StartService(name string, ns *kerneltest.NS, argv ...string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster is closed")
	}
	if p := c.services[name]; p != nil && p.running() {
		return fmt.Errorf("service %s is already running (pid %d)", name, p.pid())
	}
	full := append([]string{"ip", "netns", "exec", ns.Name}, argv...)
	p, err := startProc(name, full, filepath.Join(c.opts.Dir, name+".log"), c.opts.Detach)
	if err != nil {
		return err
	}
	if c.services == nil {
		c.services = map[string]*proc{}
	}
	c.services[name] = p
	c.saveStateLocked()
	c.log.Info("started service", "name", name, "pid", p.pid())
	return nil
}

// StopService stops the service name with SIGTERM (SIGKILL after 10 s) and waits for it. Stopping a service
// that is not running is not an error.
func (c *Cluster) StopService(name string) error {
	c.mu.Lock()
	p := c.services[name]
	c.mu.Unlock()
	return c.stopProc(p, 10*time.Second)
}

// stopProc stops p (nil: nothing) with SIGTERM, then SIGKILL after grace, and records the new state.
func (c *Cluster) stopProc(p *proc, grace time.Duration) error {
	if p == nil {
		return nil
	}
	err := p.stop(syscall.SIGTERM, grace)
	c.mu.Lock()
	c.saveStateLocked()
	c.mu.Unlock()
	return err
}

// StopEtcd stops etcd, every member at once, with SIGTERM (SIGKILL after 10 s) and waits for it. Several
// members stopped gracefully at once may need longer (a leader hands over to a member that is stopping
// too): use KillEtcd.
func (c *Cluster) StopEtcd() error { return c.signalEtcd(syscall.SIGTERM, 10*time.Second) }

// KillEtcd kills every etcd member at once (SIGKILL: a crash; the data stays for StartEtcd) and waits for
// them.
func (c *Cluster) KillEtcd() error { return c.signalEtcd(syscall.SIGKILL, 10*time.Second) }

func (c *Cluster) signalEtcd(sig syscall.Signal, grace time.Duration) error {
	c.mu.Lock()
	ps := slices.Clone(c.etcds)
	c.mu.Unlock()
	errs := make([]error, len(ps))
	var wg sync.WaitGroup
	for i, p := range ps {
		if p != nil {
			wg.Go(func() { errs[i] = p.stop(sig, grace) })
		}
	}
	wg.Wait()
	c.mu.Lock()
	c.saveStateLocked()
	c.mu.Unlock()
	c.log.Info("stopped etcd", "signal", sig)
	return errors.Join(errs...)
}

// EtcdLog returns etcd's log: every member's, one after the other.
func (c *Cluster) EtcdLog() string {
	var b strings.Builder
	for i := range c.opts.EtcdMembers {
		l, _ := os.ReadFile(filepath.Join(c.etcdDir(i), "etcd.log"))
		b.Write(l)
	}
	return b.String()
}

// PIDs returns the PIDs of the processes the cluster started that are still running.
func (c *Cluster) PIDs() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var pids []int
	for _, p := range c.procsLocked() {
		if p.running() {
			pids = append(pids, p.pid())
		}
	}
	return pids
}

// Namespaces returns the names of the namespaces the cluster created.
func (c *Cluster) Namespaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for _, ns := range c.nss {
		names = append(names, ns.Name)
	}
	return names
}

func (c *Cluster) procsLocked() []*proc {
	var ps []*proc
	for _, p := range c.etcds {
		if p != nil {
			ps = append(ps, p)
		}
	}
	for _, p := range c.services {
		ps = append(ps, p)
	}
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.agent != nil {
			ps = append(ps, n.agent)
		}
		if n.docker != nil {
			n.docker.mu.Lock()
			if n.docker.proc != nil {
				ps = append(ps, n.docker.proc)
			}
			n.docker.mu.Unlock()
		}
		n.mu.Unlock()
	}
	return ps
}

// dockerdsLocked returns the nodes' Docker daemons (Options.Docker).
func (c *Cluster) dockerdsLocked() []*Dockerd {
	var ds []*Dockerd
	for _, n := range c.nodes {
		n.mu.Lock()
		if n.docker != nil {
			ds = append(ds, n.docker)
		}
		n.mu.Unlock()
	}
	return ds
}

func (c *Cluster) saveStateLocked() {
	if c.opts.StateFile == "" || c.closed {
		return
	}
	s := State{Prefix: c.opts.Prefix, Dir: c.opts.Dir, OwnDir: c.opts.RemoveDir}
	for _, ns := range c.nss {
		s.Namespaces = append(s.Namespaces, ns.Name)
	}
	for _, p := range c.procsLocked() {
		if p.running() {
			s.Procs = append(s.Procs, ProcState{Name: p.name, PID: p.pid(), Start: p.start, Argv: p.argv})
		}
	}
	for _, d := range c.dockerdsLocked() {
		s.Cgroups = append(s.Cgroups, d.CgroupParent)
		d.mu.Lock()
		if d.inner.PID > 0 && d.proc != nil && d.proc.running() {
			s.Procs = append(s.Procs, d.inner) // SIGTERM reaches dockerd itself, not only its unshare
		}
		d.mu.Unlock()
	}
	if err := writeState(c.opts.StateFile, s); err != nil {
		c.log.Warn("cannot save cluster state", "err", err)
	}
}

// Close removes everything the cluster created: it stops the Docker daemons (Options.Docker; see
// Dockerd.Stop) and removes their cgroups, then the agents and etcd (SIGTERM, then SIGKILL; several etcd
// members at once: SIGKILL; only the PIDs it started) and waits for them, kills running helper commands,
// deletes the namespaces (last created first), the state file and, with Options.RemoveDir, the directory. It
// is idempotent.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	dockerds := c.dockerdsLocked()
	var cmds []*exec.Cmd
	for cmd := range c.cmds {
		cmds = append(cmds, cmd)
	}
	nss := slices.Clone(c.nss)
	c.mu.Unlock()

	var errs []error
	for _, cmd := range cmds {
		cmd.Process.Signal(syscall.SIGKILL)
	}
	// Docker daemons first (in parallel): they stop their containers.
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, d := range dockerds {
		wg.Go(func() {
			if err := d.close(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	c.mu.Lock()
	procs := c.procsLocked()
	etcds := slices.Clone(c.etcds)
	c.mu.Unlock()
	// Agents next (in parallel), then services, then etcd, so the agents never see their store vanish
	// before they stop, nor a service its etcd.
	isEtcd := func(p *proc) bool { return slices.Contains(etcds, p) }
	isService := func(p *proc) bool {
		for _, s := range c.services {
			if s == p {
				return true
			}
		}
		return false
	}
	for _, p := range procs {
		if isEtcd(p) || isService(p) {
			continue
		}
		wg.Go(func() {
			if err := p.stop(syscall.SIGTERM, 5*time.Second); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, p := range procs {
		if isService(p) {
			if err := p.stop(syscall.SIGTERM, 10*time.Second); err != nil {
				errs = append(errs, err)
			}
		}
	}
	// Several etcd members stopped gracefully at once wait for each other (a leader hands over to a member
	// that is stopping too): kill them, their data is of no further use.
	etcdSig := syscall.SIGTERM
	if len(etcds) > 1 {
		etcdSig = syscall.SIGKILL
	}
	for _, p := range procs {
		if isEtcd(p) {
			wg.Go(func() {
				if err := p.stop(etcdSig, 5*time.Second); err != nil {
					emu.Lock()
					errs = append(errs, err)
					emu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for i := len(nss) - 1; i >= 0; i-- {
		if err := nss[i].Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.opts.StateFile != "" {
		if err := os.Remove(c.opts.StateFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if c.opts.RemoveDir {
		if err := os.RemoveAll(c.opts.Dir); err != nil {
			errs = append(errs, err)
		}
	}
	c.log.Info("cluster removed", "prefix", c.opts.Prefix)
	return errors.Join(errs...)
}

// httpGet does a raw HTTP/1.0 GET of path from addr, dialled inside ns (so the connection belongs to ns).
func (c *Cluster) httpGet(ctx context.Context, ns *kerneltest.NS, addr netip.AddrPort, path string) (int, string, error) {
	var conn net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return 0, "", fmt.Errorf("dial %s in netns %s: %w", addr, ns.Name, err)
	}
	defer conn.Close()
	deadline, ok := ctx.Deadline()
	if !ok || time.Until(deadline) > 10*time.Second {
		deadline = time.Now().Add(10 * time.Second)
	}
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return 0, "", fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	resp, err := io.ReadAll(conn)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s%s: %w", addr, path, err)
	}
	head, body, _ := strings.Cut(string(resp), "\r\n\r\n")
	status, _, _ := strings.Cut(head, "\r\n")
	f := strings.Fields(status) // HTTP/1.0 200 OK
	if len(f) < 2 {
		return 0, "", fmt.Errorf("GET %s%s: malformed response %q", addr, path, status)
	}
	code, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, "", fmt.Errorf("GET %s%s: malformed status %q", addr, path, status)
	}
	return code, body, nil
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

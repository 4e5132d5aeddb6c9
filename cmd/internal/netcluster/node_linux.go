package netcluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// Node is one cluster node: a namespace with the underlay address Addr running weftd, and a container
// namespace attached to the node's bridge cbr0.
type Node struct {
	c *Cluster

	Index int            // 1-based
	Name  string         // "n1"
	NS    *kerneltest.NS // <prefix>-n1
	Addr  netip.Addr     // underlay address on eth0: 192.0.2.(10+Index)/24
	Addr6 netip.Addr     // IPv6 underlay address on eth0: 2001:db8::(10+Index)/64 (digits as written)
	Dir   string         // <Dir>/n1
	// EnvFile is the agent's --subnet-file; LogFile receives its stdout and stderr (appended across restarts).
	EnvFile, LogFile string

	mu         sync.Mutex // guards all following fields
	extraFlags []string
	agent      *proc
	container  *kerneltest.NS // nil until attached
	docker     *Dockerd       // with Options.Docker, from attach on
	env        subnet.Env     // the env file read when the container was attached
}

// SetExtraFlags sets flags appended to this node's weftd command line after Options.ExtraAgentFlags, from
// the next StartAgent on.
func (n *Node) SetExtraFlags(flags ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.extraFlags = slices.Clone(flags)
}

// AgentArgs returns the weftd command line StartAgent uses (without `ip netns exec`).
func (n *Node) AgentArgs() []string {
	o := n.c.opts
	argv := []string{o.Weftd, "--etcd-endpoints", n.c.EtcdURL}
	if o.AgentStore != nil {
		argv = o.AgentStore(n)
	}
	argv = append(argv,
		"--iface", "eth0",
		"--subnet-file", n.EnvFile,
		"--healthz-ip", "127.0.0.1",
		"--healthz-port", strconv.Itoa(o.HealthzPort),
	)
	if argv[0] == o.Weftd { // not for a node that runs flannel's flanneld (kube tier), which has no such flag
		argv = append(argv, "--node-id", n.NS.Name) // the nodes share the host's machine ID
	}
	argv = append(argv, o.ExtraAgentFlags...)
	n.mu.Lock()
	argv = append(argv, n.extraFlags...)
	n.mu.Unlock()
	return argv
}

// StartAgent starts weftd in the node's namespace. It does not wait for the agent to be ready (see
// WaitLease and WaitReady). It is an error if the agent is running.
func (n *Node) StartAgent(ctx context.Context) error {
	argv := append([]string{"ip", "netns", "exec", n.NS.Name}, n.AgentArgs()...)
	c := n.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("cluster is closed")
	}
	n.mu.Lock()
	if n.agent != nil && n.agent.running() {
		n.mu.Unlock()
		return fmt.Errorf("node %s: weftd is already running (pid %d)", n.Name, n.agent.pid())
	}
	p, err := startProc("weftd "+n.Name, argv, n.LogFile, c.opts.Detach)
	if err == nil {
		n.agent = p
	}
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	c.saveStateLocked()
	c.log.Info("started weftd", "node", n.Name, "pid", p.pid())
	return nil
}

func (n *Node) proc() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// StopAgent sends sig to the agent and waits up to 10 s for it to exit; after that it kills it and returns
// an error. Stopping an agent that is not running is not an error.
func (n *Node) StopAgent(sig syscall.Signal) error {
	p := n.proc()
	if p == nil {
		return nil
	}
	err := p.stop(sig, 10*time.Second)
	n.c.log.Info("stopped weftd", "node", n.Name, "signal", sig.String())
	n.c.mu.Lock()
	n.c.saveStateLocked()
	n.c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	return nil
}

// KillAgent SIGKILLs the agent and waits for it.
func (n *Node) KillAgent() error { return n.StopAgent(syscall.SIGKILL) }

// AgentRunning reports whether the agent process is running.
func (n *Node) AgentRunning() bool {
	p := n.proc()
	return p != nil && p.running()
}

// AgentPID returns the PID of the agent last started, or 0.
func (n *Node) AgentPID() int {
	p := n.proc()
	if p == nil {
		return 0
	}
	return p.pid()
}

// AgentExit returns how the last agent exited: nil while it runs or after a clean exit.
func (n *Node) AgentExit() error {
	p := n.proc()
	if p == nil || p.running() {
		return nil
	}
	return p.err
}

// Lease reads the node's env file now.
func (n *Node) Lease() (subnet.Env, error) { return subnet.ReadEnvFile(n.EnvFile) }

// WaitLease waits until the env file exists and names a subnet, failing early if the agent exits.
func (n *Node) WaitLease(ctx context.Context) (subnet.Env, error) {
	ctx, cancel := context.WithTimeout(ctx, n.c.opts.Timeout)
	defer cancel()
	for {
		env, err := n.Lease()
		if err == nil && (env.Subnet.IsValid() || env.IPv6Subnet.IsValid()) {
			return env, nil
		}
		if !n.AgentRunning() {
			return env, fmt.Errorf("node %s: weftd exited before writing %s: %v\n%s", n.Name, n.EnvFile,
				exitText(n.AgentExit()), tail(n.LogFile, 30))
		}
		select {
		case <-ctx.Done():
			return env, fmt.Errorf("node %s: no env file %s: %w\n%s", n.Name, n.EnvFile, ctx.Err(), tail(n.LogFile, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitReady waits until the agent's /readyz answers 200.
func (n *Node) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.c.opts.Timeout)
	defer cancel()
	for {
		path := "/readyz"
		if n.c.opts.ReadyPath != nil {
			path = n.c.opts.ReadyPath(n)
		}
		status, _, err := n.c.HTTPGet(ctx, n, path)
		if err == nil && status == 200 {
			return nil
		}
		if !n.AgentRunning() {
			return fmt.Errorf("node %s: weftd exited: %v\n%s", n.Name, exitText(n.AgentExit()), tail(n.LogFile, 30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: not ready (status %d, %v): %w\n%s", n.Name, status, err, ctx.Err(), tail(n.LogFile, 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Subnet returns the node's subnet as attached (from the env file at attach time); zero before.
func (n *Node) Subnet() netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.env.Subnet.Masked()
}

// Subnet6 returns the node's IPv6 subnet as attached (FLANNEL_IPV6_SUBNET); zero before or without IPv6.
func (n *Node) Subnet6() netip.Prefix {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.env.IPv6Subnet.Masked()
}

// ContainerIP6 returns the container's IPv6 address (the IPv6 subnet's ::2); zero before the container is
// attached or without IPv6.
func (n *Node) ContainerIP6() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.env.IPv6Subnet.IsValid() {
		return netip.Addr{}
	}
	return n.env.IPv6Subnet.Addr().Next()
}

// MTU returns FLANNEL_MTU as attached; zero before.
func (n *Node) MTU() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.env.MTU
}

// ContainerIP returns the container's address (x.y.z.2); zero before the container is attached.
func (n *Node) ContainerIP() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.env.Subnet.IsValid() {
		return netip.Addr{}
	}
	return n.env.Subnet.Addr().Next()
}

// Container returns the container namespace (<prefix>-n1c1); nil before it is attached.
func (n *Node) Container() *kerneltest.NS {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.container
}

// attach waits for the env file, then plays container runtime: bridge cbr0 with FLANNEL_SUBNET and
// FLANNEL_MTU in the node, a container namespace on it with x.y.z.2 and a default route via x.y.z.1, and
// IPv4 forwarding on in the node; with FLANNEL_IPV6_SUBNET likewise for IPv6 (cbr0 ::1, the container
// ::2, IPv6 forwarding), and without FLANNEL_SUBNET (IPv6 only) no IPv4. Then it waits for the agent to
// report ready.
func (n *Node) attach(ctx context.Context) error {
	env, err := n.WaitLease(ctx)
	if err != nil {
		return err
	}
	if env.MTU <= 0 {
		return fmt.Errorf("node %s: env file %s: FLANNEL_MTU=%d", n.Name, n.EnvFile, env.MTU)
	}
	n.c.log.Info("lease", "node", n.Name, "subnet", env.Subnet.Masked(), "mtu", env.MTU)
	if n.c.opts.Docker != nil {
		if err := n.attachDocker(ctx); err != nil {
			return err
		}
		n.mu.Lock()
		n.env = env
		n.mu.Unlock()
		return n.WaitReady(ctx)
	}
	mtu := strconv.Itoa(env.MTU)
	if err := n.NS.Do(func() error {
		err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644)
		if err == nil && env.IPv6Subnet.IsValid() {
			err = os.WriteFile("/proc/sys/net/ipv6/conf/all/forwarding", []byte("1\n"), 0o644)
		}
		return err
	}); err != nil {
		return fmt.Errorf("node %s: enable forwarding: %w", n.Name, err)
	}
	bridge := [][]string{{"link", "add", "cbr0", "type", "bridge"}}
	if env.Subnet.IsValid() {
		bridge = append(bridge, []string{"addr", "add", env.Subnet.String(), "dev", "cbr0"})
	}
	if env.IPv6Subnet.IsValid() {
		bridge = append(bridge, []string{"addr", "add", env.IPv6Subnet.String(), "dev", "cbr0", "nodad"})
	}
	for _, args := range append(bridge, []string{"link", "set", "cbr0", "mtu", mtu, "up"}) {
		if _, err := n.NS.IP(args...); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	cns, err := n.c.newNS(n.Name + "c1")
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.container = cns
	n.mu.Unlock()
	var cip string
	if env.Subnet.IsValid() {
		cip = netip.PrefixFrom(env.Subnet.Addr().Next(), env.Subnet.Bits()).String()
	}
	if err := kerneltest.CreateVeth(n.NS, "veth-c1", "", cns, "eth0", cip); err != nil {
		return err
	}
	type step struct {
		ns   *kerneltest.NS
		args []string
	}
	steps := []step{
		{n.NS, []string{"link", "set", "veth-c1", "mtu", mtu, "master", "cbr0"}},
		{cns, []string{"link", "set", "eth0", "mtu", mtu}},
	}
	if env.Subnet.IsValid() {
		steps = append(steps, step{cns, []string{"route", "add", "default", "via", env.Subnet.Addr().String()}})
	}
	if s6 := env.IPv6Subnet; s6.IsValid() {
		steps = append(steps,
			step{cns, []string{"addr", "add", netip.PrefixFrom(s6.Addr().Next(), s6.Bits()).String(), "dev", "eth0", "nodad"}},
			step{cns, []string{"-6", "route", "add", "default", "via", s6.Addr().String()}})
	}
	for _, step := range steps {
		if _, err := step.ns.IP(step.args...); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	n.mu.Lock()
	n.env = env
	n.mu.Unlock()
	return n.WaitReady(ctx)
}

package netcluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// HTTPGet does a raw HTTP/1.0 GET of path from the node's health server (127.0.0.1:HealthzPort), dialled
// inside the node's namespace. It returns the status code and the body.
func (c *Cluster) HTTPGet(ctx context.Context, n *Node, path string) (int, string, error) {
	return c.httpGet(ctx, n.NS, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(c.opts.HealthzPort)), path)
}

// Metrics fetches the node's /metrics and parses its `name value` lines (comments skipped; a name keeps
// its {labels}).
func (c *Cluster) Metrics(ctx context.Context, n *Node) (map[string]float64, error) {
	status, body, err := c.HTTPGet(ctx, n, "/metrics")
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	if status != 200 {
		return nil, fmt.Errorf("node %s: GET /metrics: status %d: %s", n.Name, status, body)
	}
	return ParseMetrics(body), nil
}

// ParseMetrics parses Prometheus-style text: `name value` or `name{labels} value [timestamp]` per line;
// blank lines, # comments and malformed lines are skipped.
func ParseMetrics(text string) map[string]float64 {
	m := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexByte(line, '}'); i >= 0 && strings.IndexByte(line, '{') >= 0 {
			name, rest = line[:i+1], line[i+1:]
		} else if i := strings.IndexAny(line, " \t"); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[name] = v
	}
	return m
}

// AgentLog returns everything the node's agents have logged (all restarts).
func (c *Cluster) AgentLog(n *Node) string {
	b, err := os.ReadFile(n.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}

// Ping runs `ping -c 3 -W 1 -i 0.2 [args...] to` in from's container and returns its output. args come
// after the defaults, so they override them (e.g. "-c", "1", "-M", "do", "-s", "1422"). An error means
// ping exited non-zero (some reply missing, or a local error).
func (c *Cluster) Ping(ctx context.Context, from *Node, to netip.Addr, args ...string) (string, error) {
	cns := from.Container()
	if cns == nil {
		return "", fmt.Errorf("node %s has no container", from.Name)
	}
	argv := append([]string{"ping", "-n", "-c", "3", "-W", "1", "-i", "0.2"}, args...)
	argv = append(argv, to.String())
	return c.run(ctx, cns, argv...)
}

// WaitPing pings to from from's container, one probe at a time, until a reply comes or ctx ends.
func (c *Cluster) WaitPing(ctx context.Context, from *Node, to netip.Addr) error {
	for {
		out, err := c.Ping(ctx, from, to, "-c", "1")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s → %s: no reply: %w: %s", from.Name, to, ctx.Err(), out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// PingResult is ping's summary.
type PingResult struct {
	Transmitted, Received int
	Errors                int           // "+N errors" (ICMP errors received)
	RTTAvg                time.Duration // zero without replies
	Output                string
}

// Lost is Transmitted − Received.
func (r PingResult) Lost() int { return r.Transmitted - r.Received }

func (r PingResult) String() string {
	return fmt.Sprintf("%d/%d received, avg rtt %s", r.Received, r.Transmitted, r.RTTAvg)
}

var (
	pingSummary = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received(?:, \+(\d+) errors)?`)
	pingRTT     = regexp.MustCompile(`(?:rtt min/avg/max/mdev|round-trip min/avg/max) = [\d.]+/([\d.]+)/`)
)

// ParsePing parses the summary of iputils ping's output (or busybox ping's, inside Docker containers).
func ParsePing(out string) (PingResult, error) {
	r := PingResult{Output: out}
	m := pingSummary.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("no ping summary in %q", out)
	}
	r.Transmitted, _ = strconv.Atoi(m[1])
	r.Received, _ = strconv.Atoi(m[2])
	if m[3] != "" {
		r.Errors, _ = strconv.Atoi(m[3])
	}
	if m := pingRTT.FindStringSubmatch(out); m != nil {
		ms, _ := strconv.ParseFloat(m[1], 64)
		r.RTTAvg = time.Duration(ms * float64(time.Millisecond))
	}
	return r, nil
}

// PingRun is a continuous ping started by StartPing.
type PingRun struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	c    *Cluster
}

// StartPing starts `ping -n -i interval to` in from's container until Stop.
func (c *Cluster) StartPing(from *Node, to netip.Addr, interval time.Duration) (*PingRun, error) {
	cns := from.Container()
	if cns == nil {
		return nil, fmt.Errorf("node %s has no container", from.Name)
	}
	r := &PingRun{done: make(chan struct{}), c: c}
	r.cmd = exec.Command("ip", "netns", "exec", cns.Name, "ping", "-n", "-W", "1",
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), to.String())
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.out
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the forking thread exits, and threads that ran namespace code (NS.Do) do exit:
	// fork from a thread locked for the command's whole life.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			started <- errors.New("cluster is closed")
			return
		}
		if err := r.cmd.Start(); err != nil {
			c.mu.Unlock()
			started <- fmt.Errorf("start ping in %s: %w", cns.Name, err)
			return
		}
		c.cmds[r.cmd] = struct{}{}
		c.mu.Unlock()
		started <- nil
		r.cmd.Wait()
		c.mu.Lock()
		delete(c.cmds, r.cmd)
		c.mu.Unlock()
		close(r.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return r, nil
}

// Stop interrupts the ping (SIGINT, so it prints its summary), waits for it and parses the summary.
func (r *PingRun) Stop() (PingResult, error) {
	r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Signal(syscall.SIGKILL)
		<-r.done
	}
	return ParsePing(r.out.String())
}

// TCP checks a TCP connection from from's container to to's container: a listener is opened inside to's
// container namespace and a connection dialled inside from's; size random bytes go from → to and are echoed
// back, and both directions are verified.
func (c *Cluster) TCP(ctx context.Context, from, to *Node, size int) error {
	return c.tcp(ctx, from, to, to.ContainerIP(), size)
}

// TCP6 is TCP over IPv6, to to's container's IPv6 address.
func (c *Cluster) TCP6(ctx context.Context, from, to *Node, size int) error {
	return c.tcp(ctx, from, to, to.ContainerIP6(), size)
}

func (c *Cluster) tcp(ctx context.Context, from, to *Node, dst netip.Addr, size int) error {
	fns, tns := from.Container(), to.Container()
	if fns == nil || tns == nil {
		return errors.New("tcp check: container not attached")
	}
	if !dst.IsValid() {
		return fmt.Errorf("tcp %s → %s: the container has no address of that family", from.Name, to.Name)
	}
	network := "tcp4"
	if dst.Is6() {
		network = "tcp6"
	}
	var ln net.Listener
	if err := tns.Do(func() error {
		var err error
		ln, err = net.Listen(network, netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		return fmt.Errorf("tcp %s → %s: listen: %w", from.Name, to.Name, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(15 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(deadline)
		_, err = io.CopyN(conn, conn, int64(size)) // echo
		served <- err
	}()
	var conn net.Conn
	if err := fns.Do(func() error {
		d := net.Dialer{Deadline: deadline}
		var err error
		conn, err = d.DialContext(ctx, network, ln.Addr().String())
		return err
	}); err != nil {
		ln.Close()
		<-served
		return fmt.Errorf("tcp %s → %s: dial %s: %w", from.Name, to.Name, ln.Addr(), err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	data := make([]byte, size)
	rand.Read(data)
	wrote := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		wrote <- err
	}()
	back := make([]byte, size)
	_, rerr := io.ReadFull(conn, back)
	conn.Close()
	werr := <-wrote
	ln.Close()
	serr := <-served
	switch {
	case werr != nil:
		return fmt.Errorf("tcp %s → %s: send: %w", from.Name, to.Name, werr)
	case rerr != nil:
		return fmt.Errorf("tcp %s → %s: receive echo: %w", from.Name, to.Name, rerr)
	case serr != nil:
		return fmt.Errorf("tcp %s → %s: echo server: %w", from.Name, to.Name, serr)
	case !bytes.Equal(data, back):
		return fmt.Errorf("tcp %s → %s: echoed data differs", from.Name, to.Name)
	}
	return nil
}

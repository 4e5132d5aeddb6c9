package etcdstore

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// memberCluster is a 3-member etcd whose members are processes (this test binary, see memberEnv), each in a
// network namespace of its own on one bridge, and a fourth namespace for the stores under test:
//
//	netns <p>-lan  bridge br0
//	  ├─ <p>-n1  192.0.2.11  etcd m1   ┐
//	  ├─ <p>-n2  192.0.2.12  etcd m2   ├ peers on :2380, clients on :2379
//	  ├─ <p>-n3  192.0.2.13  etcd m3   ┘
//	  └─ <p>-n4  192.0.2.14  the stores (their connections are dialled here)
//
// A member can be killed (SIGKILL) and started again with its data, or cut off with a packet filter in its
// namespace. Its methods may be called from the test's goroutine only.
type memberCluster struct {
	t     testing.TB
	tp    *kerneltest.Topology
	dir   string
	opts  []etcdtest.Options // opts[i-1] is member i's
	procs []*exec.Cmd        // procs[i-1] is member i's process while it runs, else nil
	// httpc reaches the members' HTTP endpoints (/health, /metrics) from the stores' namespace.
	httpc *http.Client
}

// startMemberCluster starts the three members and waits until every one is healthy. Everything ends with
// the test: the members get SIGTERM, the namespaces are deleted.
func startMemberCluster(t testing.TB) *memberCluster {
	t.Helper()
	kerneltest.RequireCommand(t, "iptables")
	c := &memberCluster{t: t, tp: kerneltest.NewTopology(t, 4), dir: t.TempDir()}
	var initial []string
	for i := 1; i <= 3; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://192.0.2.1%d:2380", i, i))
	}
	for i := 1; i <= 3; i++ {
		c.opts = append(c.opts, etcdtest.Options{
			Name: fmt.Sprintf("m%d", i), Dir: filepath.Join(c.dir, fmt.Sprintf("m%d", i)),
			ClientAddr: fmt.Sprintf("192.0.2.1%d:2379", i), PeerAddr: fmt.Sprintf("192.0.2.1%d:2380", i),
			InitialCluster: strings.Join(initial, ","), LogFile: filepath.Join(c.dir, fmt.Sprintf("m%d.log", i)),
			UnsafeNoFsync: true, // etcd's own timings: with Fast's 100 ms elections a loaded machine re-elects forever
		})
	}
	c.procs = make([]*exec.Cmd, 3)
	c.httpc = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return c.dial(ctx, addr)
	}}}
	t.Cleanup(func() {
		for i := 1; i <= 3; i++ {
			c.stop(i, syscall.SIGTERM)
		}
		if t.Failed() {
			for _, o := range c.opts {
				b, _ := os.ReadFile(o.LogFile)
				so, _ := os.ReadFile(c.outFile(o.Name))
				t.Logf("etcd %s output:\n%s\nlog (tail):\n%s", o.Name, so, tail(string(b), 3000))
			}
		}
	})
	for i := 1; i <= 3; i++ {
		c.start(i)
	}
	c.waitHealthy(60*time.Second, 1, 2, 3)
	return c
}

func (c *memberCluster) outFile(name string) string { return filepath.Join(c.dir, name+".out") }

// start starts member i (1 to 3), with its data if it ran before.
func (c *memberCluster) start(i int) {
	c.t.Helper()
	self, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	o := c.opts[i-1]
	raw, _ := json.Marshal(o)
	cmd := c.tp.Nodes[i-1].NS.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), memberEnv+"="+string(raw))
	out, err := os.OpenFile(c.outFile(o.Name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer out.Close() // the child has its own copy
	cmd.Stdout, cmd.Stderr = out, out
	// No Pdeathsig: it fires when the thread that started the child ends, and the namespace dialer ends
	// threads on purpose (kerneltest.NS.Do).
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd member %s: %v", o.Name, err)
	}
	c.procs[i-1] = cmd
}

// stop sends member i sig and waits for it to exit. A member that is not running is left alone.
func (c *memberCluster) stop(i int, sig syscall.Signal) {
	cmd := c.procs[i-1]
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig) // ip netns exec execs the member: the PID is the member's
	cmd.Wait()
	c.procs[i-1] = nil
}

// kill kills member i (SIGKILL, no chance to tidy up) and waits until it is gone.
func (c *memberCluster) kill(i int) { c.stop(i, syscall.SIGKILL) }

// waitHealthy waits until each member in idx answers /health with health true.
func (c *memberCluster) waitHealthy(timeout time.Duration, idx ...int) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, i := range idx {
		for !healthy(c.httpc, c.endpoint(i)) {
			if time.Now().After(deadline) {
				c.t.Fatalf("etcd member m%d not healthy after %s", i, timeout)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// endpoint returns member i's client URL.
func (c *memberCluster) endpoint(i int) string { return "http://" + c.opts[i-1].ClientAddr }

// endpoints returns the client URLs of every member but those in except.
func (c *memberCluster) endpoints(except ...int) []string {
	var out []string
	for i := 1; i <= 3; i++ {
		if !slices.Contains(except, i) {
			out = append(out, c.endpoint(i))
		}
	}
	return out
}

// dial opens a TCP connection to addr (host:port or a URL) from the stores' namespace.
func (c *memberCluster) dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	err := c.tp.Nodes[3].NS.Do(func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, "tcp", strings.TrimPrefix(addr, "http://"))
		return err
	})
	return conn, err
}

// newStore returns a store whose connections are dialled from the stores' namespace, closed by t.Cleanup.
func (c *memberCluster) newStore(cfg Config, log *slog.Logger) *Store {
	c.t.Helper()
	cfg.dial = c.dial
	st, err := New(cfg, log)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { st.Close() })
	return st
}

// streamMember returns the member that carries the open gRPC stream of method ("Watch" or
// "LeaseKeepAlive") of the one client that opens such streams, waiting up to 10 s for one to report it. The
// etcd client spreads its streams over the members: the watch and the lease keepalive may each be on
// another member.
func (c *memberCluster) streamMember(method string) int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for i := 1; i <= 3; i++ {
			if n, _ := openStreams(c.httpc, c.endpoint(i), method); n > 0 {
				return i
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("no etcd member reports an open %s stream", method)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// openStreams returns the number of open bidirectional gRPC streams of method (started minus handled) at
// the member at endpoint.
func openStreams(c *http.Client, endpoint, method string) (float64, error) {
	resp, err := c.Get(endpoint + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var n float64
	sc := bufio.NewScanner(resp.Body)
	label := `grpc_method="` + method + `"`
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, label) || !strings.Contains(l, `grpc_type="bidi_stream"`) {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: metric line %q: %w", endpoint, l, err)
		}
		switch {
		case strings.HasPrefix(l, "grpc_server_started_total{"):
			n += v
		case strings.HasPrefix(l, "grpc_server_handled_total{"):
			n -= v
		}
	}
	return n, sc.Err()
}

// healthy reports whether the member at endpoint answers /health with health true.
func healthy(c *http.Client, endpoint string) bool {
	resp, err := c.Get(endpoint + "/health")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode == 200 && strings.Contains(string(b), `"health":"true"`)
}

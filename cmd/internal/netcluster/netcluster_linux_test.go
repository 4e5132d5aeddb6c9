package netcluster_test

import (
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
	"github.com/weft-net/weft/subnet"
)

// The harness is tested against a fake weftd: this test binary, re-executed with fakeEnv set. The fake
// writes an env file with subnet 10.5.<last octet of eth0>.0/24, adds host-gw style routes to every
// possible peer, and serves /readyz and /metrics, which is enough to carry real container traffic.
const fakeEnv = "NETCLUSTER_FAKE_WEFTD"

var clusterBin string

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) == "1" {
		os.Exit(fakeWeftd(os.Args[1:]))
	}
	code := func() int {
		flag.Parse()
		if os.Geteuid() != 0 || testing.Short() {
			return m.Run() // tests skip
		}
		dir, err := os.MkdirTemp("", "netcluster")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		clusterBin = filepath.Join(dir, "weft-cluster")
		if out, err := exec.Command("go", "build", "-o", clusterBin, "github.com/weft-net/weft/cmd/weft-cluster").CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build weft-cluster: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

func fakeWeftd(args []string) int {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		fmt.Println("fake weftd:", strings.Join(args, " "))
		return 0
	}
	var envFile, port string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--subnet-file":
			envFile = args[i+1]
		case "--healthz-port":
			port = args[i+1]
		}
	}
	ifc, err := net.InterfaceByName("eth0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	addrs, _ := ifc.Addrs()
	var own byte
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			own = p.Addr().As4()[3]
		}
	}
	for peer := byte(11); peer < 20; peer++ {
		if peer != own {
			exec.Command("ip", "route", "replace", fmt.Sprintf("10.5.%d.0/24", peer), "via", fmt.Sprintf("192.0.2.%d", peer), "dev", "eth0").Run()
		}
	}
	env := subnet.Env{Network: netip.MustParsePrefix("10.5.0.0/16"), Subnet: netip.MustParsePrefix(fmt.Sprintf("10.5.%d.1/24", own)), MTU: 1500}
	if err := subnet.WriteEnvFile(envFile, env); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ready") })
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "# HELP x\nweft_ready 1\nweft_udp_drop_unknown_peer 3\nlabelled{a=\"b c\"} 2.5\n")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go http.Serve(ln, mux)
	fmt.Println("fake weftd: serving", env.Subnet)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return 0
}

func TestClusterWithFakeAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes in network namespaces")
	}
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "ping")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeEnv, "1")
	prefix := kerneltest.Prefix()
	dir := t.TempDir()
	ctx := t.Context()
	c, err := netcluster.Start(ctx, netcluster.Options{
		Prefix: prefix, Nodes: 2, Weftd: self, ClusterBin: clusterBin, Dir: dir,
		StateFile: filepath.Join(dir, "state.json"),
		Log:       slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n1, n2 := c.Node(1), c.Node(2)
	if got, want := n2.ContainerIP(), netip.MustParseAddr("10.5.12.2"); got != want {
		t.Errorf("n2 container IP = %s, want %s", got, want)
	}
	if _, err := netcluster.ReadState(filepath.Join(dir, "state.json")); err != nil {
		t.Error(err)
	}
	out, err := c.Ping(ctx, n1, n2.ContainerIP())
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	if r, err := netcluster.ParsePing(out); err != nil || r.Received != 3 {
		t.Errorf("ping summary %+v, %v", r, err)
	}
	if out, err := c.Ping(ctx, n1, n2.ContainerIP(), "-c", "1", "-M", "do", "-s", "1473"); err == nil || !strings.Contains(out, "message too long") {
		t.Errorf("DF ping above the MTU: err %v, output %q", err, out)
	}
	if err := c.TCP(ctx, n1, n2, 256<<10); err != nil {
		t.Error(err)
	}
	if err := c.TCP(ctx, n2, n1, 256<<10); err != nil {
		t.Error(err)
	}
	m, err := c.Metrics(ctx, n1)
	if err != nil {
		t.Fatal(err)
	}
	if m["weft_udp_drop_unknown_peer"] != 3 || m[`labelled{a="b c"}`] != 2.5 {
		t.Errorf("metrics = %v", m)
	}
	run, err := c.StartPing(n2, n1.ContainerIP(), 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.KillAgent(); err != nil {
		t.Error(err)
	}
	if n1.AgentRunning() {
		t.Error("agent runs after KillAgent")
	}
	if err := n1.StartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := n1.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.StopEtcd(); err != nil {
		t.Error(err)
	}
	if err := c.StartEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := run.Stop()
	if err != nil || r.Transmitted < 2 || r.Lost() != 0 {
		t.Errorf("continuous ping: %+v, %v", r, err)
	}
	n3, err := c.AddNode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitPing(ctx, n3, n1.ContainerIP()); err != nil {
		t.Error(err)
	}
	if out, err := c.Weftd(ctx, n1.NS, "leases"); err != nil || !strings.Contains(out, "--etcd-endpoints http://192.0.2.2:2379") {
		t.Errorf("weftd leases: %q, %v", out, err)
	}
	pids := c.PIDs()
	if len(pids) != 4 {
		t.Errorf("PIDs = %v, want 4 (etcd, 3 agents)", pids)
	}
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if left, _ := kerneltest.ListNS(prefix); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	for _, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			t.Errorf("pid %d still exists", pid)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json")); err == nil {
		t.Error("state file left")
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 10.5.12.2 (10.5.12.2) 56(84) bytes of data.
64 bytes from 10.5.12.2: icmp_seq=1 ttl=62 time=0.081 ms

--- 10.5.12.2 ping statistics ---
5 packets transmitted, 4 received, +1 errors, 20% packet loss, time 813ms
rtt min/avg/max/mdev = 0.061/0.080/0.101/0.014 ms
`
	r, err := netcluster.ParsePing(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Transmitted != 5 || r.Received != 4 || r.Errors != 1 || r.Lost() != 1 || r.RTTAvg != 80*time.Microsecond {
		t.Errorf("ParsePing = %+v", r)
	}
	if _, err := netcluster.ParsePing("ping: connect: Network is unreachable"); err == nil {
		t.Error("ParsePing of an error: want an error")
	}
}

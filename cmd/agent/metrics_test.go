package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/probe"
	"github.com/weft-net/weft/backend/udp"
	"github.com/weft-net/weft/subnet"
)

// statsBackend is a backend with statistics (backend.Stats), as udp's.
type statsBackend struct {
	fakeBackend
	stats map[string]uint64
}

func (b statsBackend) Stats() map[string]uint64 { return b.stats }

// echoConn answers every probe at once, except to the addresses in down.
type echoConn struct {
	down    map[netip.Addr]bool
	replies chan [2]any
	done    chan struct{}
	once    sync.Once
}

func newEchoConn(down ...netip.Addr) *echoConn {
	c := &echoConn{down: map[netip.Addr]bool{}, replies: make(chan [2]any, 1000), done: make(chan struct{})}
	for _, a := range down {
		c.down[a] = true
	}
	return c
}

func (c *echoConn) WriteEcho(dst netip.Addr, seq uint16) error {
	if !c.down[dst] {
		c.replies <- [2]any{dst, seq}
	}
	return nil
}

func (c *echoConn) ReadEcho() (netip.Addr, uint16, error) {
	select {
	case r := <-c.replies:
		return r[0].(netip.Addr), r[1].(uint16), nil
	case <-c.done:
		return netip.Addr{}, 0, net.ErrClosed
	}
}

func (c *echoConn) Close() error { c.once.Do(func() { close(c.done) }); return nil }

// populated returns a health server whose metrics have every series: a udp backend with statistics, a
// held lease with its TTL, reconciles of each kind, a lease change taken in, a skipped peer, and probe
// results (10.5.8.0/24 reachable, 10.5.9.0/24 not).
func populated(t *testing.T) *health {
	h := newHealth()
	h.ready = func() bool { return true }
	h.peers.Store(2)
	m := h.metrics
	m.setBackend("udp", statsBackend{stats: map[string]uint64{
		"drop_unknown_peer": 3, "socket_drops": 4, "rx_packets": 10,
		`offload{feature="tun"}`: 1, `offload{feature="gso"}`: 0, `offload{feature="gro"}`: 1,
	}})
	own := subnet.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24")}
	m.leaseHeld(own)
	m.lease.Load().ttl.Store(&ttlReading{left: 90 * time.Second, at: time.Now()})
	m.lat.received(time.Now().Add(-3*time.Millisecond), 2)
	m.lat.take()
	m.reconciled(opUpdate, time.Now(), nil, 2)
	m.reconciled(opSet, time.Now(), errors.New("netlink: boom"), 2)
	m.reconciled(opUpdate, time.Now(), fmt.Errorf("peer 10.5.9.0/24: %w", backend.ErrNeedSet), 2) // not counted
	m.skippedPeers("overlap", []backend.Skip{{Key: "10.5.99.0-25"}})
	m.skippedPeers("overlap", []backend.Skip{{Key: "10.5.99.0-25"}}) // still skipped: counted once

	up, down := netip.MustParsePrefix("10.5.8.0/24"), netip.MustParsePrefix("10.5.9.0/24")
	p, err := probe.New(probe.Config{Rate: 200, Timeout: 50 * time.Millisecond, Log: slog.New(slog.DiscardHandler),
		Targets: func() []probe.Target {
			return []probe.Target{{Peer: up, Addr: up.Addr()}, {Peer: down, Addr: down.Addr()}}
		}}, newEchoConn(down.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() { p.Close() })
	m.prober.Store(&proberSource{p: p, maxSeries: 64})
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ps := p.Peers()
		if len(ps) == 2 && ps[0].State == probe.Reachable && ps[1].State == probe.Unreachable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe results: %+v; want %s reachable, %s unreachable", ps, up, down)
		}
	}

	return h
}

// scrape GETs /metrics from h's handler and parses it as Prometheus does.
func scrape(t *testing.T, h *health) (map[string]*dto.MetricFamily, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	body := rec.Body.String()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams, body
}

// TestExposition: /metrics parses as the Prometheus text format, every family carries HELP and TYPE, the
// Go and process collectors are there, the backend's statistics keep their names (weft_udp_<key>, with
// labels for the offloads), and the agent's, lease, backend and probe series have their values.
func TestExposition(t *testing.T) {
	fams, body := scrape(t, populated(t))
	for name, f := range fams {
		if f.GetHelp() == "" || f.Type == nil {
			t.Errorf("%s: HELP %q, TYPE %v; want both", name, f.GetHelp(), f.Type)
		}
		if !strings.HasPrefix(name, "weft_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "promhttp_") {
			t.Errorf("%s: not under weft_ (nor go_, process_, promhttp_)", name)
		}
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "process_resident_memory_bytes"} {
		if fams[name] == nil {
			t.Errorf("no %s (Go and process collectors)", name)
		}
	}
	for _, line := range []string{
		"weft_ready 1\n", "weft_peers 2\n",
		"weft_udp_drop_unknown_peer 3\n", "weft_udp_socket_drops 4\n", // the names e2e tests and dashboards use
		"# TYPE weft_udp_drop_unknown_peer counter\n",
		`weft_udp_offload{feature="tun"} 1` + "\n", `weft_udp_offload{feature="gso"} 0` + "\n",
		"# TYPE weft_udp_offload gauge\n",
		`weft_backend_info{offloads="tun,gro",type="udp"} 1` + "\n",
		`weft_backend_drops_total{backend="udp",reason="unknown_peer"} 3` + "\n",
		`weft_backend_drops_total{backend="udp",reason="socket"} 4` + "\n",
		`weft_lease_info{ipv6_subnet="",reservation="false",subnet="10.5.7.0/24"} 1` + "\n",
		"weft_lease_held 1\n", "weft_lease_acquisitions_total 1\n",
		`weft_reconcile_total{op="update"} 1` + "\n", `weft_reconcile_total{op="set"} 1` + "\n",
		`weft_reconcile_total{op="resync"} 0` + "\n", `weft_reconcile_errors_total{op="set"} 1` + "\n",
		`weft_reconcile_errors_total{op="update"} 0` + "\n",
		`weft_peers_skipped_total{reason="overlap"} 1` + "\n",
		"weft_lease_to_kernel_seconds_count 2\n",
		`weft_peer_reachable{peer="10.5.8.0/24"} 1` + "\n", `weft_peer_reachable{peer="10.5.9.0/24"} 0` + "\n",
		`weft_probe_peers{state="reachable"} 1` + "\n", `weft_probe_peers{state="unreachable"} 1` + "\n",
		"# TYPE weft_peer_rtt_seconds histogram\n",
	} {
		if !strings.Contains(body, line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if ttl := fams["weft_lease_ttl_seconds"]; ttl == nil || ttl.Metric[0].GetGauge().GetValue() <= 80 {
		t.Errorf("weft_lease_ttl_seconds: %v, want about 90", ttl)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

// TestBucketsFit: the histograms' buckets are increasing and span what the e2e suite sees (a lease change
// programmed in about a millisecond, a complete Set of a cluster in milliseconds) up to the slow cases (a
// failed reconcile retried a tick later: tens of seconds), so neither the lowest bucket nor +Inf takes
// everything. TestE2EMetrics checks the same against a real cluster.
func TestBucketsFit(t *testing.T) {
	for _, tc := range []struct {
		name          string
		buckets       []float64
		fast, slow    float64
		lowest, upper float64
	}{
		{"weft_lease_to_kernel_seconds", leaseBuckets, 0.0002, 60, 0.0002, 60},
		{"weft_reconcile_duration_seconds", reconcileBuckets, 0.0005, 5, 0.0005, 5},
		{"weft_peer_rtt_seconds", probe.Buckets, 0.0002, 0.5, 0.0002, 0.5},
	} {
		if !slices.IsSorted(tc.buckets) || slices.Compact(slices.Clone(tc.buckets)) == nil {
			t.Errorf("%s: buckets %v not increasing", tc.name, tc.buckets)
		}
		if tc.buckets[0] > tc.lowest || tc.buckets[len(tc.buckets)-1] < tc.upper {
			t.Errorf("%s: buckets %v do not span %g..%g s", tc.name, tc.buckets, tc.lowest, tc.upper)
		}
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Help: "x", Buckets: tc.buckets})
		h.Observe(tc.fast)
		h.Observe(tc.slow)
		var d dto.Metric
		h.Write(&d)
		b := d.GetHistogram().GetBucket()
		if b[0].GetCumulativeCount() != 0 || b[len(b)-1].GetCumulativeCount() != 2 {
			t.Errorf("%s: %g s and %g s do not both land inside the buckets %v", tc.name, tc.fast, tc.slow, tc.buckets)
		}
	}
}

// TestLeaseLatency: an event is observed by the first successful reconcile that took it in, not by one
// that had already taken its changes; a failed reconcile keeps it for the next.
func TestLeaseLatency(t *testing.T) {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "x", Help: "x", Buckets: leaseBuckets})
	count := func() uint64 {
		var d dto.Metric
		h.Write(&d)
		return d.GetHistogram().GetSampleCount()
	}
	var l leaseLatency
	l.received(time.Now(), 2)
	l.take()
	l.received(time.Now(), 1) // after the reconcile read its changes
	l.done(true, h)
	if c := count(); c != 2 {
		t.Errorf("after the first reconcile: %d observations, want 2", c)
	}
	l.take()
	l.done(false, h)
	if c := count(); c != 2 {
		t.Errorf("after a failed reconcile: %d observations, want still 2", c)
	}
	l.take()
	l.done(true, h)
	if c := count(); c != 3 {
		t.Errorf("after the retry: %d observations, want 3", c)
	}
	l.received(time.Now(), 0)
	if len(l.pending) != 0 {
		t.Errorf("a batch of no change is pending: %v", l.pending)
	}
	if got := latencyEvents(subnet.Changes{Full: true, Put: make([]subnet.Lease, 50)}); got != 1 {
		t.Errorf("a full listing makes %d observations, want 1", got)
	}
	if got := latencyEvents(subnet.Changes{Put: make([]subnet.Lease, 2), Deleted: make([]subnet.Lease, 1)}); got != 3 {
		t.Errorf("a batch of 3 changes makes %d observations, want 3", got)
	}
}

func TestParseStatKey(t *testing.T) {
	for _, tc := range []struct {
		key, name string
		labels    map[string]string
		err       bool
	}{
		{"rx_packets", "rx_packets", map[string]string{}, false},
		{`offload{feature="tun"}`, "offload", map[string]string{"feature": "tun"}, false},
		{`x{a="1",b="two"}`, "x", map[string]string{"a": "1", "b": "two"}, false},
		{`x{a="1"`, "", nil, true},
		{`x{a=1}`, "", nil, true},
		{`x{="1"}`, "", nil, true},
	} {
		name, labels, err := parseStatKey(tc.key)
		if (err != nil) != tc.err || name != tc.name || !reflect.DeepEqual(labels, tc.labels) {
			t.Errorf("parseStatKey(%q) = %q, %v, %v; want %q, %v, error %v", tc.key, name, labels, err, tc.name, tc.labels, tc.err)
		}
	}
}

// TestSeriesPeers: at most max peers get series, unreachable ones first, then by subnet; peers without a
// result get none.
func TestSeriesPeers(t *testing.T) {
	var peers []probe.PeerState
	for i := range 10 {
		st := probe.Reachable
		switch i {
		case 7, 9:
			st = probe.Unreachable
		case 8:
			st = probe.Unknown
		}
		peers = append(peers, probe.PeerState{Peer: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 5, byte(i), 0}), 24), State: st})
	}
	var got []string
	for _, s := range seriesPeers(peers, 4) {
		got = append(got, s.Peer.String())
	}
	want := []string{"10.5.7.0/24", "10.5.9.0/24", "10.5.0.0/24", "10.5.1.0/24"}
	if !slices.Equal(got, want) {
		t.Errorf("series for %v, want %v", got, want)
	}
	if n := len(seriesPeers(peers, 100)); n != 9 {
		t.Errorf("with room for all: %d series, want 9 (not the unknown one)", n)
	}
}

// TestProbeAddr: the address probed per backend.
func TestProbeAddr(t *testing.T) {
	l := subnet.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24")}
	for _, tc := range []struct {
		typ  string
		want string
	}{
		{"vxlan", "10.5.7.0"}, {"udp", "10.5.7.0"}, {"host-gw", "10.5.7.1"}, {"alloc", ""},
	} {
		a, ok := probeAddr(tc.typ, l)
		if got := map[bool]string{true: a.String(), false: ""}[ok]; got != tc.want {
			t.Errorf("%s: probe address %q, want %q", tc.typ, got, tc.want)
		}
	}
	if _, ok := probeAddr("vxlan", subnet.Lease{}); ok {
		t.Error("a lease without an IPv4 subnet is probed")
	}
}

// TestStatusCommand: `weftd status` reads /status from the running agent and prints it (JSON with --json);
// without an agent it says so, naming the address tried.
func TestStatusCommand(t *testing.T) {
	h := newHealth()
	srv := httptest.NewServer(h.handler())
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	run := func(args ...string) (string, error) {
		var out strings.Builder
		err := statusCmd(t.Context(), args, cmdEnv{getenv: func(string) string { return "" }, stdout: &out, stderr: io.Discard})
		return out.String(), err
	}
	out, err := run("--healthz-port", port)
	if err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "), "Ready: no not ready: starting") {
		t.Errorf("status while starting: %v\n%s", err, out)
	}

	r := 12.0
	h.setStatus(func() agentStatus {
		return agentStatus{Version: "test", Ready: false, NotReady: []string{"data path not in sync: set: boom"}, DataPath: "ok",
			Lease:   &statusLease{Subnet: "10.5.7.0/24", PublicIP: "192.0.2.11", Held: true, TTLLeftSeconds: &r},
			Backend: &statusBackend{Type: "udp", MTU: 1472, Devices: []statusDevice{{Name: "flannel0", State: "up", MTU: 1472}}, Offloads: "tun,gso"},
			Peers:   2, LastReconcile: &reconcileResult{Op: "set", At: time.Now(), Duration: time.Millisecond, Err: "boom"},
			Probes: &statusProbes{Rate: 5, Sent: 9, Peers: []statusPeer{
				{Peer: "10.5.8.0/24", Addr: "10.5.8.0", State: "reachable", LastRTTSec: 0.0002, Sent: 5},
				{Peer: "10.5.9.0/24", Addr: "10.5.9.0", State: "unreachable", Sent: 4, Lost: 4},
			}},
		}
	})
	out, err = run("--healthz-port", port)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		lines[i] = strings.Join(strings.Fields(l), " ") // the columns' widths aside
	}
	norm := strings.Join(lines, "\n")
	for _, want := range []string{
		"Ready: no\n", "not ready: data path not in sync: set: boom\n",
		"Lease: 10.5.7.0/24\n", "TTL left: 12s (renewed while weftd runs)\n",
		"Backend: udp (MTU 1472)\n", "device: flannel0 up mtu 1472\n", "offloads: tun,gso\n",
		"Peers programmed: 2\n", "FAILED: boom\n",
		"Probes: 5/s, 9 sent; 1 reachable, 1 unreachable, 0 unknown\n",
		"10.5.9.0/24 10.5.9.0 unreachable - - 4 4\n",
	} {
		if !strings.Contains(norm, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	out, err = run("--json", "--healthz-port", port)
	if err != nil || !strings.Contains(out, `"state": "unreachable"`) || !strings.Contains(out, `"subnet": "10.5.7.0/24"`) {
		t.Errorf("status --json: %v\n%s", err, out)
	}

	free := freePort(t)
	_, err = run("--healthz-port", fmt.Sprint(free))
	if err == nil || !strings.Contains(err.Error(), "not running") || !strings.Contains(err.Error(), fmt.Sprintf("127.0.0.1:%d", free)) ||
		!strings.Contains(err.Error(), "refused") {
		t.Errorf("status without an agent: %v; want it to say weftd is not running, the address tried and the cause", err)
	}
	if _, err := run(); err == nil || !strings.Contains(err.Error(), "--healthz-port") {
		t.Errorf("status without a port: %v, want it to ask for --healthz-port", err)
	}
}

// TestMetricsRegistryOwn: the agent's registry is its own, so two agents in one process (tests) do not
// collide, and nothing lands in the global default registry.
func TestMetricsRegistryOwn(t *testing.T) {
	a, b := newHealth(), newHealth()
	a.metrics.leaseAcquired.Inc()
	if testutil.ToFloat64(b.metrics.leaseAcquired) != 0 {
		t.Error("two agents share a counter")
	}
	mfs, _ := prometheus.DefaultGatherer.Gather()
	for _, f := range mfs {
		if strings.HasPrefix(f.GetName(), "weft_") {
			t.Errorf("%s is in the global default registry", f.GetName())
		}
	}
}

// TestDistExamples: the Grafana dashboard's queries use only metrics weftd exports (with the real udp
// backend's statistics), and the Prometheus scrape examples parse and define the weftd job.
func TestDistExamples(t *testing.T) {
	h := populated(t)
	netCfg, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}`))
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.0.2.11")
	be, err := udp.New(backend.Deps{Log: slog.New(slog.DiscardHandler), Network: netCfg,
		External: backend.External{Name: "eth0", Index: 1, MTU: 1500, Addr: addr, PublicIP: addr}})
	if err != nil {
		t.Fatal(err)
	}
	h.metrics.setBackend("udp", be) // not up: its statistics are there, at 0
	fams, _ := scrape(t, h)
	raw, err := os.ReadFile("../../dist/grafana/weft-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	name := regexp.MustCompile(`weft_[a-z0-9_]+`)
	exprs := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs++
			for _, n := range name.FindAllString(tg.Expr, -1) {
				base := n
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(n, suf); ok && fams[b] != nil && fams[b].GetType() == dto.MetricType_HISTOGRAM {
						base = b
					}
				}
				if fams[base] == nil {
					t.Errorf("panel %q: %s is not exported (query %s)", p.Title, n, tg.Expr)
				}
			}
		}
	}
	if exprs < 10 {
		t.Errorf("dashboard has %d queries, want its panels", exprs)
	}
	for _, f := range []string{"prometheus-systemd.yml", "prometheus-kubernetes.yml"} {
		raw, err := os.ReadFile(filepath.Join("../../dist/prometheus", f))
		if err != nil {
			t.Fatal(err)
		}
		var cfg struct {
			ScrapeConfigs []struct {
				JobName string `json:"job_name"`
			} `json:"scrape_configs"`
		}
		if err := yaml.Unmarshal(raw, &cfg); err != nil {
			t.Errorf("%s: %v", f, err)
		}
		if len(cfg.ScrapeConfigs) != 1 || cfg.ScrapeConfigs[0].JobName != "weftd" {
			t.Errorf("%s: scrape configs %+v, want the weftd job", f, cfg.ScrapeConfigs)
		}
	}
}

// TestNotReady: each reason the agent is not ready is named, and a ready agent has none.
func TestNotReady(t *testing.T) {
	netCfg, err := subnet.ParseConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`))
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{cfg: Config{SubnetFile: "/run/flannel/subnet.env"}, net: netCfg, health: newHealth()}
	a.health.ready = a.ready
	has := func(want string) {
		t.Helper()
		why := strings.Join(a.notReady(), "; ")
		if !strings.Contains(why, want) {
			t.Errorf("not ready because %q, want it to say %q", why, want)
		}
	}
	has("no subnet lease yet")
	own := subnet.Lease{Subnet: netip.MustParsePrefix("10.5.7.0/24")}
	a.own = &own
	has("env file /run/flannel/subnet.env not written yet")
	has("waiting for the first listing of the leases")
	a.haveWatch = true
	a.health.metrics.reconciled(opSet, time.Now(), errors.New("add route: boom"), 1)
	has("data path not in sync: set: add route: boom")
	a.lost, a.watchFailed, a.underlayLost = true, true, true
	a.health.rulesPending.Store(true)
	for _, w := range []string{"lease lost", "lease watch ended", "external interface lost", "packet filter rules"} {
		has(w)
	}
	a.lost, a.watchFailed, a.underlayLost, a.synced, a.env = false, false, false, true, []byte("x")
	a.health.rulesPending.Store(false)
	if why := a.notReady(); len(why) != 0 || !a.health.isReady() {
		t.Errorf("ready agent: not ready because %q (ready %v)", why, a.health.isReady())
	}
}

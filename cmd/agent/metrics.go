package main

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/probe"
	"github.com/weft-net/weft/subnet"
)

// Reconcile operations (the op label): a lease change applied alone (backend.Updater), the complete state
// (Set), and the periodic comparison with the kernel (Set with Resync).
const (
	opUpdate = "update"
	opSet    = "set"
	opResync = "resync"
)

// Histogram buckets in seconds. A lease change reaches the kernel in 0.2 to 50 ms in the e2e netns
// clusters (TestE2EMetrics logs them: an Update of one peer takes well under a millisecond) and in tens of
// milliseconds for a complete Set of a few hundred peers; a store that was away, or a backend that failed
// and was retried on the next tick, takes seconds to minutes.
var (
	leaseBuckets     = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	reconcileBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
)

// metrics is the agent's Prometheus registry (its own, not the global default) and instruments; /metrics
// serves it. Its methods are safe for concurrent use.
type metrics struct {
	reg *prometheus.Registry

	leaseAcquired, leaseLost, leaseReacquired prometheus.Counter
	reconciles, reconcileErrors               *prometheus.CounterVec   // op
	reconcileSeconds                          *prometheus.HistogramVec // op
	leaseSeconds                              prometheus.Histogram
	peersSkipped                              *prometheus.CounterVec // reason

	backend atomic.Pointer[backendSource] // nil until the backend is up
	lease   atomic.Pointer[leaseInfo]     // nil until a lease is held
	prober  atomic.Pointer[proberSource]  // nil: probing off
	store   atomic.Pointer[storeSource]   // nil until the store is open
	last    atomic.Pointer[reconcileResult]
	lat     leaseLatency

	skipMu sync.Mutex                 // guards skips
	skips  map[string]map[string]bool // reason → keys of the leases skipped for it by the last reconcile
}

type backendSource struct {
	typ   string
	stats backend.Stats // nil: the backend has none
}

// storeSource is what the lease store tells the metrics: the lease keys it cannot read (etcdstore).
type storeSource struct{ unreadable func() int }

type proberSource struct {
	p         *probe.Prober // nil: it could not start (err)
	maxSeries int
	err       error
}

// leaseInfo is this node's lease as the metrics and /status show it.
type leaseInfo struct {
	lease subnet.Lease
	ttl   atomic.Pointer[ttlReading] // the store's TTL left, read every few seconds; nil: unknown
	lost  atomic.Bool
}

type ttlReading struct {
	left time.Duration
	at   time.Time
}

// reconcileResult is the last reconcile: what /status shows.
type reconcileResult struct {
	Op       string        `json:"op"`
	At       time.Time     `json:"at"`
	Duration time.Duration `json:"duration_ns"`
	Err      string        `json:"error,omitempty"`
	Peers    int           `json:"peers"`
}

func newMetrics(h *health) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m.leaseAcquired = counter("weft_lease_acquisitions_total", "Times this node acquired its subnet lease (at start and after a loss).")
	m.leaseLost = counter("weft_lease_losses_total", "Times this node's subnet lease was lost (deleted or expired in the store).")
	m.leaseReacquired = counter("weft_lease_reacquisitions_total", "Times this node acquired its subnet lease again after losing it.")
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_reconcile_total",
		Help: "Reconciles of the data path by op: update (a lease change applied alone), set (the complete state), resync (the periodic comparison with the kernel)."}, []string{"op"})
	m.reconcileErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_reconcile_errors_total",
		Help: "Reconciles of the data path that failed, by op (see weft_reconcile_total)."}, []string{"op"})
	m.reconcileSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "weft_reconcile_duration_seconds",
		Help: "Duration of the backend's Set or Update, by op (see weft_reconcile_total).", Buckets: reconcileBuckets}, []string{"op"})
	m.leaseSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_lease_to_kernel_seconds",
		Help: "Seconds from weftd receiving a lease change from the store's watch (not the store's own write time) " +
			"to the backend having programmed it (Set or Update returned without error); one observation per changed lease, one per full listing.",
		Buckets: leaseBuckets})
	m.peersSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_peers_skipped_total",
		Help: "Peer leases left out of the data path by the agent, counted when first skipped, by reason (overlap: overlaps another lease and does not fit the network config; duplicate_subnet: names a subnet of a lease created before it, in dual stack)."}, []string{"reason"})
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.leaseAcquired, m.leaseLost, m.leaseReacquired,
		m.reconciles, m.reconcileErrors, m.reconcileSeconds, m.leaseSeconds, m.peersSkipped,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_ready",
			Help: "1 when the node is ready (/readyz 200): lease held, env file written, data path in sync, packet filter rules in place."},
			func() float64 { return b2f(h.isReady()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "weft_peers",
			Help: "Peers programmed in the data path by the last successful reconcile."},
			func() float64 { return float64(h.peers.Load()) }),
		(*stateCollector)(m),
	)
	for _, op := range []string{opUpdate, opSet, opResync} { // every op shows from the start, at 0
		m.reconciles.WithLabelValues(op)
		m.reconcileErrors.WithLabelValues(op)
	}
	for _, k := range agentSkipKinds {
		m.peersSkipped.WithLabelValues(string(k))
	}
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// handler serves the registry in the Prometheus text format (or what the scraper negotiates); a failing
// collector leaves out its series rather than the whole answer.
func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError, Registry: m.reg})
}

// setBackend makes the metrics show the backend's type and, if it has them, its statistics.
func (m *metrics) setBackend(typ string, be backend.Backend) {
	s, _ := be.(backend.Stats)
	m.backend.Store(&backendSource{typ: typ, stats: s})
}

// leaseHeld records that the lease l is held (acquired, possibly again after a loss).
func (m *metrics) leaseHeld(l subnet.Lease) {
	was := m.lease.Load()
	m.leaseAcquired.Inc()
	if was != nil && was.lost.Load() {
		m.leaseReacquired.Inc()
	}
	li := &leaseInfo{lease: l}
	if was != nil && was.lease.Key() == l.Key() {
		li.ttl.Store(was.ttl.Load())
	}
	m.lease.Store(li)
}

// leaseLostNow records that the lease was lost.
func (m *metrics) leaseLostNow() {
	m.leaseLost.Inc()
	if li := m.lease.Load(); li != nil {
		li.lost.Store(true)
	}
}

// reconciled records one reconcile: op, its start, its result and the peers it programmed. An Update that
// asks for the complete state (backend.ErrNeedSet) is no reconcile: the Set that follows is.
func (m *metrics) reconciled(op string, start time.Time, err error, peers int) {
	if errors.Is(err, backend.ErrNeedSet) {
		return
	}
	d := time.Since(start)
	m.reconciles.WithLabelValues(op).Inc()
	m.reconcileSeconds.WithLabelValues(op).Observe(d.Seconds())
	r := &reconcileResult{Op: op, At: start, Duration: d, Peers: peers}
	if err != nil {
		m.reconcileErrors.WithLabelValues(op).Inc()
		r.Err = err.Error()
	}
	m.last.Store(r)
	m.lat.done(err == nil, m.leaseSeconds)
}

// skippedPeers counts the peers the agent leaves out for reason that the previous call for reason did not
// (skipped is the complete list of one reconcile).
func (m *metrics) skippedPeers(reason string, skipped []backend.Skip) {
	m.skipMu.Lock()
	defer m.skipMu.Unlock()
	now := make(map[string]bool, len(skipped))
	for _, s := range skipped {
		now[s.Key] = true
		if !m.skips[reason][s.Key] {
			m.peersSkipped.WithLabelValues(reason).Inc()
		}
	}
	if m.skips == nil {
		m.skips = map[string]map[string]bool{}
	}
	m.skips[reason] = now
}

// latencyEvents is the number of weft_lease_to_kernel_seconds observations a watch batch makes.
func latencyEvents(c subnet.Changes) int {
	if c.Full {
		return 1
	}
	return len(c.Put) + len(c.Deleted)
}

// leaseLatency tracks the lease changes received from the watch until the data path has taken them in:
// received (under the agent's lock, with the change), take (under the same lock, when the change is read
// for a reconcile), done (after the reconcile: observed on success, pending again on failure).
type leaseLatency struct {
	mu       sync.Mutex // guards the fields below
	pending  []latencyEvent
	inFlight []latencyEvent
}

type latencyEvent struct {
	at time.Time
	n  int
}

func (l *leaseLatency) received(at time.Time, n int) {
	if n <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.pending) >= maxLatencyEvents { // a backend failing for long under churn: merge into the oldest
		l.pending[0].n += n
		return
	}
	l.pending = append(l.pending, latencyEvent{at, n})
}

// maxLatencyEvents bounds the batches remembered while the data path does not take them in.
const maxLatencyEvents = 4096

func (l *leaseLatency) take() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight = append(l.inFlight, l.pending...)
	l.pending = l.pending[:0]
}

func (l *leaseLatency) done(ok bool, h prometheus.Histogram) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !ok {
		l.pending = append(l.pending, l.inFlight...)
		l.inFlight = l.inFlight[:0]
		return
	}
	now := time.Now()
	for _, e := range l.inFlight {
		for range e.n {
			h.Observe(now.Sub(e.at).Seconds())
		}
	}
	l.inFlight = l.inFlight[:0]
}

// stateCollector exports what is read at scrape time: the lease, the backend (info and statistics) and
// the probe results. It is an unchecked collector (it describes nothing), since the backend's series are
// known only once it is up.
type stateCollector metrics

var (
	leaseInfoDesc = prometheus.NewDesc("weft_lease_info",
		"This node's lease (always 1): subnet, ipv6_subnet (empty: none) and reservation (true: a reservation that never expires).",
		[]string{"subnet", "ipv6_subnet", "reservation"}, nil)
	leaseTTLDesc = prometheus.NewDesc("weft_lease_ttl_seconds",
		"Seconds left on this node's lease in the store (etcd), as last read (every few seconds); absent for a reservation and in kube mode, which never expire.", nil, nil)
	leaseHeldDesc = prometheus.NewDesc("weft_lease_held",
		"1 while this node holds its lease, 0 after it was lost and until it is acquired again.", nil, nil)
	backendInfoDesc = prometheus.NewDesc("weft_backend_info",
		"The backend in use (always 1): type, and for udp the offloads in use (a comma list of tun, gso, gro, or none).",
		[]string{"type", "offloads"}, nil)
	backendSkipsDesc = prometheus.NewDesc("weft_backend_peers_skipped_total",
		"Peer leases the backend leaves out of its data path, by reason (a fixed set: backend_type, no_subnet, bad_public_ip, own_subnet, outside_network, overlaps_own_subnet, duplicate_subnet, bad_backend_data, duplicate_vtepmac), each counted when it starts being skipped.",
		[]string{"backend", "reason"}, nil)
	dropsDesc = prometheus.NewDesc("weft_backend_drops_total",
		"Packets the backend's data path dropped, by reason (udp: the drop_* statistics, and socket for the kernel's drops at its sockets).",
		[]string{"backend", "reason"}, nil)
	peerReachableDesc = prometheus.NewDesc("weft_peer_reachable",
		"1 when the last probe to the peer got its reply within --probe-timeout, 0 when it did not; for at most --probe-peer-series peers (unreachable ones first).",
		[]string{"peer"}, nil)
	peerRTTDesc = prometheus.NewDesc("weft_peer_rtt_seconds",
		"Round-trip time of the probes to the peer (those with a reply), for the peers weft_peer_reachable shows.",
		[]string{"peer"}, nil)
	probePeersDesc = prometheus.NewDesc("weft_probe_peers",
		"Peers being probed, by state (reachable, unreachable, unknown: no result yet), all peers counted.",
		[]string{"state"}, nil)
	unreadableDesc = prometheus.NewDesc("weft_leases_unreadable",
		"Lease keys in the store that weftd cannot read (a bad key name or value): skipped, left as they are, and named in a warning.", nil, nil)
	probesSentDesc = prometheus.NewDesc("weft_probes_sent_total", "Reachability probes sent (ICMP echo requests).", nil, nil)
	probesLostDesc = prometheus.NewDesc("weft_probes_lost_total",
		"Reachability probes without a reply within --probe-timeout (or not sendable), for the peers probed now.", nil, nil)
)

func (c *stateCollector) Describe(chan<- *prometheus.Desc) {}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*metrics)(c)
	if li := m.lease.Load(); li != nil {
		l := li.lease
		v6 := ""
		if l.IPv6Subnet.IsValid() {
			v6 = l.IPv6Subnet.String()
		}
		ch <- prometheus.MustNewConstMetric(leaseInfoDesc, prometheus.GaugeValue, 1, l.Subnet.String(), v6, strconv.FormatBool(l.Reservation))
		ch <- prometheus.MustNewConstMetric(leaseHeldDesc, prometheus.GaugeValue, b2f(!li.lost.Load()))
		if r := li.ttl.Load(); r != nil && !l.Reservation {
			left := r.left - time.Since(r.at)
			ch <- prometheus.MustNewConstMetric(leaseTTLDesc, prometheus.GaugeValue, max(left, 0).Seconds())
		}
	}
	if b := m.backend.Load(); b != nil {
		var stats map[string]uint64
		if b.stats != nil {
			stats = b.stats.Stats()
		}
		ch <- prometheus.MustNewConstMetric(backendInfoDesc, prometheus.GaugeValue, 1, b.typ, offloadsOf(stats))
		collectBackendStats(ch, b.typ, stats)
	}
	if ps := m.prober.Load(); ps != nil && ps.p != nil {
		collectProbes(ch, ps.p, ps.maxSeries)
	}
	if ss := m.store.Load(); ss != nil {
		ch <- prometheus.MustNewConstMetric(unreadableDesc, prometheus.GaugeValue, float64(ss.unreadable()))
	}
}

// setStore exports what the lease store can tell (a store without it, kube, exports nothing).
func (m *metrics) setStore(st any) {
	if u, ok := st.(interface{ Unreadable() int }); ok {
		m.store.Store(&storeSource{unreadable: u.Unreadable})
	}
}

// offloadsOf lists the udp offloads in use from its statistics (offload{feature="X"} = 1), or "none"; ""
// for a backend without such statistics.
func offloadsOf(stats map[string]uint64) string {
	var on []string
	seen := false
	for k, v := range stats {
		if f, ok := strings.CutPrefix(k, `offload{feature="`); ok {
			seen = true
			if v == 1 {
				on = append(on, strings.TrimSuffix(f, `"}`))
			}
		}
	}
	if !seen {
		return ""
	}
	if len(on) == 0 {
		return "none"
	}
	order := map[string]int{"tun": 0, "gso": 1, "gro": 2}
	slices.SortFunc(on, func(a, b string) int { return order[a] - order[b] })
	return strings.Join(on, ",")
}

// collectBackendStats exports a backend's statistics under their long-standing names weft_<type>_<key>
// (a key may carry labels: offload{feature="tun"}); a key with labels is a state (gauge), the others count
// events (counter). The drop_* keys and socket_drops are also summed up in weft_backend_drops_total.
func collectBackendStats(ch chan<- prometheus.Metric, typ string, stats map[string]uint64) {
	prefix := "weft_" + strings.ReplaceAll(typ, "-", "_") + "_"
	type series struct {
		labels map[string]string
		value  uint64
	}
	byName := map[string][]series{}
	for k, v := range stats {
		name, labels, err := parseStatKey(k)
		if err != nil {
			ch <- prometheus.NewInvalidMetric(prometheus.NewDesc(prefix+"invalid", "", nil, nil), err)
			continue
		}
		if name == "peers_skipped" { // backend.SkipLog's counts, by kind
			ch <- prometheus.MustNewConstMetric(backendSkipsDesc, prometheus.CounterValue, float64(v), typ, labels["reason"])
			continue
		}
		byName[name] = append(byName[name], series{labels, v})
		switch {
		case strings.HasPrefix(name, "drop_"):
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(v), typ, strings.TrimPrefix(name, "drop_"))
		case name == "socket_drops":
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(v), typ, "socket")
		}
	}
	for name, ss := range byName {
		var keys []string
		for k := range ss[0].labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		vt, help := prometheus.CounterValue, fmt.Sprintf("The %s backend's statistic %s (a count of events; see the README).", typ, name)
		if len(keys) > 0 {
			vt, help = prometheus.GaugeValue, fmt.Sprintf("The %s backend's state %s (see the README).", typ, name)
		}
		desc := prometheus.NewDesc(prefix+name, help, keys, nil)
		for _, s := range ss {
			vals := make([]string, len(keys))
			for i, k := range keys {
				vals[i] = s.labels[k]
			}
			m, err := prometheus.NewConstMetric(desc, vt, float64(s.value), vals...)
			if err != nil {
				m = prometheus.NewInvalidMetric(desc, err)
			}
			ch <- m
		}
	}
}

// parseStatKey splits a statistic's key, name or name{k="v",...}, into its name and labels.
func parseStatKey(key string) (string, map[string]string, error) {
	name, rest, ok := strings.Cut(key, "{")
	labels := map[string]string{}
	if !ok {
		return name, labels, nil
	}
	body, ok := strings.CutSuffix(rest, "}")
	if !ok {
		return "", nil, fmt.Errorf("backend statistic %q: labels not closed by }", key)
	}
	for _, kv := range strings.Split(body, ",") {
		k, v, ok := strings.Cut(kv, "=")
		uq, err := strconv.Unquote(v)
		if !ok || err != nil || k == "" {
			return "", nil, fmt.Errorf("backend statistic %q: label %q: want name=\"value\"", key, kv)
		}
		labels[k] = uq
	}
	return name, labels, nil
}

// collectProbes exports the prober's results: per-peer series for at most maxSeries peers (unreachable
// ones first, then by subnet), and totals over all peers.
func collectProbes(ch chan<- prometheus.Metric, p *probe.Prober, maxSeries int) {
	peers := p.Peers()
	count := map[probe.State]int{}
	var lost uint64
	for _, s := range peers {
		count[s.State]++
		lost += s.Lost
	}
	for _, st := range []probe.State{probe.Reachable, probe.Unreachable, probe.Unknown} {
		ch <- prometheus.MustNewConstMetric(probePeersDesc, prometheus.GaugeValue, float64(count[st]), st.String())
	}
	ch <- prometheus.MustNewConstMetric(probesSentDesc, prometheus.CounterValue, float64(p.Sent()))
	ch <- prometheus.MustNewConstMetric(probesLostDesc, prometheus.CounterValue, float64(lost))
	for _, s := range seriesPeers(peers, maxSeries) {
		label := s.Peer.String()
		ch <- prometheus.MustNewConstMetric(peerReachableDesc, prometheus.GaugeValue, b2f(s.State == probe.Reachable), label)
		buckets := make(map[float64]uint64, len(probe.Buckets))
		var cum uint64
		for i, ub := range probe.Buckets {
			cum += s.Counts[i]
			buckets[ub] = cum
		}
		ch <- prometheus.MustNewConstHistogram(peerRTTDesc, s.RTTCount, s.RTTSum, buckets, label)
	}
}

// seriesPeers picks the peers that get their own series: those with a result, unreachable ones first,
// then by subnet, at most max.
func seriesPeers(peers []probe.PeerState, max int) []probe.PeerState {
	var out []probe.PeerState
	for _, s := range peers {
		if s.State != probe.Unknown {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(a, b probe.PeerState) int { // peers come sorted by subnet
		return int(b2f(a.State == probe.Reachable) - b2f(b.State == probe.Reachable))
	})
	if len(out) > max {
		out = out[:max]
	}
	return out
}

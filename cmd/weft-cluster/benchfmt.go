package main

// The pure parts of `weft-cluster bench`: iperf3's JSON, ping's replies, the median and percentiles,
// /proc/net/tcp and /proc/PID/stat, the offloads a udp agent reports, and the result tables.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// pathList reads --paths: a comma list of names from known, duplicates dropped, in the order given. The
// path baseline is allowed only with haveBaseline, and then added before "udp" (or last) if not listed.
func pathList(flag string, known []string, baseline string, haveBaseline bool) ([]string, error) {
	var paths []string
	for _, p := range strings.Split(flag, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(known, p) {
			return nil, fmt.Errorf("--paths: unknown path %q: want %s", p, strings.Join(known, ", "))
		}
		if !slices.Contains(paths, p) {
			paths = append(paths, p)
		}
	}
	switch {
	case !haveBaseline && slices.Contains(paths, baseline):
		return nil, fmt.Errorf("--paths %s: needs --baseline-weftd PATH", baseline)
	case haveBaseline && !slices.Contains(paths, baseline):
		i := slices.Index(paths, "udp")
		if i < 0 {
			i = len(paths)
		}
		paths = slices.Insert(paths, i, baseline)
	}
	return paths, nil
}

// iperfResult is what one iperf3 client run (`iperf3 -c ... -J`) reports.
type iperfResult struct {
	BitsPerSecond float64 // end.sum_received.bits_per_second: what the receiver got
	Bytes         int64   // end.sum_received.bytes
	Retransmits   int     // end.sum_sent.retransmits
}

// parseIperf3 reads the JSON report of `iperf3 -c ... -J`. A report carrying "error" (iperf3 writes one when
// the test fails, with exit status 1) is an error, and so is one without a received rate.
func parseIperf3(b []byte) (iperfResult, error) {
	var doc struct {
		Error string `json:"error"`
		End   struct {
			SumReceived *struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Bytes         int64   `json:"bytes"`
			} `json:"sum_received"`
			SumSent *struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return iperfResult{}, fmt.Errorf("iperf3 JSON: %w", err)
	}
	if doc.Error != "" {
		return iperfResult{}, fmt.Errorf("iperf3: %s", doc.Error)
	}
	if doc.End.SumReceived == nil {
		return iperfResult{}, errors.New("iperf3 JSON: no end.sum_received")
	}
	r := iperfResult{BitsPerSecond: doc.End.SumReceived.BitsPerSecond, Bytes: doc.End.SumReceived.Bytes}
	if doc.End.SumSent != nil {
		r.Retransmits = doc.End.SumSent.Retransmits
	}
	if r.BitsPerSecond <= 0 {
		return r, fmt.Errorf("iperf3: received %v bit/s", r.BitsPerSecond)
	}
	return r, nil
}

// median returns the median of xs (the mean of the middle two for an even count), or 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// tcpListening reports whether the contents of /proc/net/tcp or /proc/net/tcp6 show a socket listening on
// port (state 0A), on any local address.
func tcpListening(procNetTCP string, port int) bool {
	want := fmt.Sprintf(":%04X", port)
	sc := bufio.NewScanner(strings.NewReader(procNetTCP))
	for sc.Scan() {
		// "  0: 00000000:1451 00000000:0000 0A ..."
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasSuffix(f[0], ":") {
			continue // the header line
		}
		if strings.HasSuffix(f[1], want) && f[3] == "0A" {
			return true
		}
	}
	return false
}

// pingReply matches one echo reply of iputils (or busybox) ping: "64 bytes from 10.5.2.2: icmp_seq=1
// ttl=62 time=0.123 ms"; iputils writes "time<1 ms"-style bounds on some systems.
var pingReply = regexp.MustCompile(`bytes from .*\btime[=<]([0-9]+(?:\.[0-9]+)?) ?ms`)

// parsePingReplies returns the round trip of each echo reply in ping's output, in order. Duplicates
// ("(DUP!)") are skipped: they answer a request already counted.
func parsePingReplies(out string) []time.Duration {
	var rtts []time.Duration
	for _, line := range strings.Split(out, "\n") {
		m := pingReply.FindStringSubmatch(line)
		if m == nil || strings.Contains(line, "DUP!") {
			continue
		}
		ms, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			continue
		}
		rtts = append(rtts, time.Duration(ms*float64(time.Millisecond)))
	}
	return rtts
}

// percentile returns the p-th percentile (0 < p ≤ 100) of ds by the nearest-rank method: the smallest value
// that at least p % of the values do not exceed. It returns 0 for none and leaves ds in its order.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// userHZ is the unit of the times in /proc/PID/stat (USER_HZ, which Linux fixes at 100 for user space on
// every architecture Weft builds for).
const userHZ = 100

// procCPU returns the CPU time a process has used, user plus system (fields 14 and 15 of /proc/PID/stat,
// counting every thread), from the contents of that file.
func procCPU(stat string) (time.Duration, error) {
	// The command name (field 2) may contain spaces and parentheses; the fields after it follow the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/PID/stat %q: no ')' after the command name", stat)
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/PID/stat %q: %d fields after the command name, want at least 13", stat, len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] { // utime, stime: fields 14 and 15; f[0] is field 3
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/PID/stat: utime/stime %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / userHZ), nil
}

// udpFeatures are the udp backend's offloads in the order weftd names them.
var udpFeatures = []string{"tun", "uso", "gso", "gro", "tun_gro"}

// sortFeatures orders offload names as weftd does, unknown ones last in alphabetical order.
func sortFeatures(names []string) {
	slices.SortFunc(names, func(a, b string) int {
		ia, ib := slices.Index(udpFeatures, a), slices.Index(udpFeatures, b)
		switch {
		case ia >= 0 && ib >= 0:
			return ia - ib
		case ia >= 0:
			return -1
		case ib >= 0:
			return 1
		}
		return strings.Compare(a, b)
	})
}

// offloadsFromMetrics reads the offloads in use from a udp agent's /metrics (parsed by
// netcluster.ParseMetrics): every weft_udp_offload{feature="X"} with the value 1, as "tun,gso,...", or
// "none". ok is false if the metrics have no such series (an older weftd).
func offloadsFromMetrics(m map[string]float64) (offloads string, ok bool) {
	const pre, suf = `weft_udp_offload{feature="`, `"}`
	var on []string
	for k, v := range m {
		name, found := strings.CutPrefix(k, pre)
		if !found || !strings.HasSuffix(name, suf) {
			continue
		}
		ok = true
		if v == 1 {
			on = append(on, strings.TrimSuffix(name, suf))
		}
	}
	if !ok {
		return "", false
	}
	if len(on) == 0 {
		return "none", true
	}
	sortFeatures(on)
	return strings.Join(on, ","), true
}

// offloadsFromLog reads the offloads a udp agent started with from the last "udp backend up" line of its
// log (`... msg="udp backend up" ... offloads=tun,gso`). ok is false without such a line or field.
func offloadsFromLog(log string) (offloads string, ok bool) {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if !strings.Contains(lines[i], `msg="udp backend up"`) {
			continue
		}
		_, v, found := strings.Cut(lines[i], " offloads=")
		if !found {
			return "", false
		}
		if strings.HasPrefix(v, `"`) {
			if q, err := strconv.QuotedPrefix(v); err == nil {
				v, _ = strconv.Unquote(q)
				return v, v != ""
			}
		}
		v, _, _ = strings.Cut(v, " ")
		return v, v != ""
	}
	return "", false
}

// joinOffloads merges what each node (named in nodes) reported: the common value if all agree, else
// "n1: x; n2: y".
func joinOffloads(nodes, per []string) string {
	if len(per) == 0 {
		return ""
	}
	if !slices.ContainsFunc(per, func(s string) bool { return s != per[0] }) {
		return per[0]
	}
	parts := make([]string, len(per))
	for i := range per {
		parts[i] = nodes[i] + ": " + per[i]
	}
	return strings.Join(parts, "; ")
}

// benchRow is one measured path.
type benchRow struct {
	Name string
	MTU  int
	// Runs and Runs4 are the throughput of each 1-stream and 4-stream run, bit/s.
	Runs, Runs4 []float64
	// Retrans and Retrans4 are the sender's TCP retransmits summed over those runs.
	Retrans, Retrans4 int
	// Echoes is the number of echo requests sent; RTTs the round trip of each reply.
	Echoes int
	RTTs   []time.Duration
	// Agents says the path runs agents (every path but the veth reference). AgentCPU is the CPU time (user
	// plus system) both nodes' weftd used during the 1-stream runs, Wall those runs' duration and Gbit the
	// data they moved.
	Agents         bool
	AgentCPU, Wall time.Duration
	Gbit           float64
	// Offloads are the udp offloads in use ("tun,gso,..." or "none"); empty: not a udp path, or unknown.
	Offloads string
	Err      error // the path failed; the other fields may be partial
}

// gbps is the median 1-stream throughput in Gbit/s; gbps4 the 4-stream one.
func (r benchRow) gbps() float64  { return median(r.Runs) / 1e9 }
func (r benchRow) gbps4() float64 { return median(r.Runs4) / 1e9 }

// rttMedian and rttP99 are the round trip's median and 99th percentile in milliseconds; 0 without replies.
func (r benchRow) rttMedian() float64 { return ms(percentile(r.RTTs, 50)) }
func (r benchRow) rttP99() float64    { return ms(percentile(r.RTTs, 99)) }

func usText(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchMachine describes where the bench ran.
type benchMachine struct {
	CPUs          int
	CPUModel      string
	Kernel, Iperf string
}

// benchHeader describes the method.
type benchHeader struct {
	Seconds, Reps int
	Streams       int // the parallel streams of the multi-stream runs
	Pings         int
	PingInterval  time.Duration
}

// writeBench prints two tables. The first has each path's median throughput with 1 stream and with
// h.Streams streams, their ratios to the reference (the row named ref) and to vxlan, the single runs and
// the retransmits; the second the round trip's median and 99th percentile with their ratios to vxlan, the
// agents' CPU during the 1-stream runs, absolute and per Gbit moved, and the udp offloads in use. Then the
// machine.
func writeBench(w io.Writer, h benchHeader, m benchMachine, rows []benchRow, ref string) {
	ok := func(r benchRow) bool { return r.Err == nil && len(r.Runs) > 0 }
	find := func(name string, f func(benchRow) float64) float64 {
		for _, r := range rows {
			if r.Name == name && ok(r) {
				return f(r)
			}
		}
		return 0
	}
	refG, vxG := find(ref, benchRow.gbps), find("vxlan", benchRow.gbps)
	refG4, vxG4 := find(ref, benchRow.gbps4), find("vxlan", benchRow.gbps4)
	vxMed, vxP99 := find("vxlan", benchRow.rttMedian), find("vxlan", benchRow.rttP99)
	ratio := func(v, base float64) string {
		if base == 0 || v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v/base)
	}
	gbit := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v)
	}
	msText := func(v float64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("%.3f ms", v)
	}
	list := func(bps []float64) string {
		s := make([]string, len(bps))
		for i, b := range bps {
			s[i] = fmt.Sprintf("%.2f", b/1e9)
		}
		if len(s) == 0 {
			return "-"
		}
		return strings.Join(s, " ")
	}
	name := func(r benchRow) string {
		if r.Name == ref {
			return r.Name + " (reference)"
		}
		return r.Name
	}
	runs := "runs"
	if h.Reps == 1 {
		runs = "run"
	}
	fmt.Fprintf(w, "Container-to-container TCP (Gbit/s): iperf3 -t %d, 1 stream and -P %d, median of %d %s each.\n",
		h.Seconds, h.Streams, h.Reps, runs)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "PATH\tMTU\t1 STREAM\tx VETH\tx VXLAN\t%d STREAMS\tx VETH\tx VXLAN\tRETRANS 1/%d\tRUNS 1 STREAM\tRUNS %d STREAMS\n",
		h.Streams, h.Streams, h.Streams)
	var failures []string
	for _, r := range rows {
		if !ok(r) {
			fmt.Fprintf(tw, "%s\t%s\tFAIL\t-\t-\t-\t-\t-\t-\t-\t-\n", name(r), mtuText(r.MTU))
			msg := "no runs"
			if r.Err != nil {
				msg = firstLine(r.Err)
			}
			failures = append(failures, fmt.Sprintf("%s failed: %s\n", r.Name, msg))
			continue
		}
		g, g4 := r.gbps(), r.gbps4()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", name(r), mtuText(r.MTU),
			gbit(g), ratio(g, refG), ratio(g, vxG), gbit(g4), ratio(g4, refG4), ratio(g4, vxG4),
			r.Retrans, r.Retrans4, list(r.Runs), list(r.Runs4))
	}
	tw.Flush()

	fmt.Fprintf(w, "\nRound trip: ping -c %d -i %s. Agent CPU: both nodes' weftd (user+system) during the 1-stream runs,\n"+
		"in %% of one CPU and in CPU seconds per Gbit moved (= CPUs per Gbit/s).\n",
		h.Pings, strconv.FormatFloat(h.PingInterval.Seconds(), 'f', -1, 64))
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tREPLIES\tRTT MEDIAN\tx VXLAN\tRTT P99\tx VXLAN\tAGENT CPU\tCPU s/GBIT\tUDP OFFLOADS")
	for _, r := range rows {
		if !ok(r) {
			fmt.Fprintf(tw, "%s\tFAIL\t-\t-\t-\t-\t-\t-\t-\n", name(r))
			continue
		}
		replies := "-"
		if r.Echoes > 0 {
			replies = fmt.Sprintf("%d/%d", len(r.RTTs), r.Echoes)
		}
		cpu, perGbit := "-", "-"
		if r.Agents && r.Wall > 0 {
			cpu = fmt.Sprintf("%.0f%%", 100*r.AgentCPU.Seconds()/r.Wall.Seconds())
		}
		if r.Agents && r.Gbit > 0 {
			perGbit = fmt.Sprintf("%.3f", r.AgentCPU.Seconds()/r.Gbit)
		}
		off := r.Offloads
		if off == "" {
			off = "-"
		}
		med, p99 := r.rttMedian(), r.rttP99()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name(r), replies, msText(med), ratio(med, vxMed),
			msText(p99), ratio(p99, vxP99), cpu, perGbit, off)
	}
	tw.Flush()
	for _, f := range failures {
		fmt.Fprint(w, f)
	}
	cpu := ""
	if m.CPUModel != "" {
		cpu = " (" + m.CPUModel + ")"
	}
	fmt.Fprintf(w, "Machine: %d CPUs%s, kernel %s, %s.\n", m.CPUs, cpu, m.Kernel, m.Iperf)
}

func mtuText(mtu int) string {
	if mtu <= 0 {
		return "-"
	}
	return strconv.Itoa(mtu)
}

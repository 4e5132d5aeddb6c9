package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPathList(t *testing.T) {
	known := []string{"veth", "vxlan", "udp", "udp-nooffload", "udp-before"}
	for _, c := range []struct {
		flag     string
		baseline bool
		want     string // the paths joined by ","; or the start of the error
	}{
		{"veth,vxlan,udp,udp-nooffload", false, "veth,vxlan,udp,udp-nooffload"},
		{" udp , vxlan,udp", false, "udp,vxlan"},
		{"veth,vxlan,udp,udp-nooffload", true, "veth,vxlan,udp-before,udp,udp-nooffload"},
		{"vxlan", true, "vxlan,udp-before"},
		{"udp-before,vxlan", true, "udp-before,vxlan"},
		{"vxlan,udp-before", false, "--paths udp-before: needs --baseline-weftd"},
		{"vxlan,gre", false, `--paths: unknown path "gre"`},
		{"", false, `--paths: unknown path ""`},
	} {
		got, err := pathList(c.flag, known, "udp-before", c.baseline)
		if err != nil {
			if !strings.HasPrefix(err.Error(), c.want) {
				t.Errorf("pathList(%q, %v): error %q, want %q", c.flag, c.baseline, err, c.want)
			}
			continue
		}
		if s := strings.Join(got, ","); s != c.want {
			t.Errorf("pathList(%q, %v) = %q, want %q", c.flag, c.baseline, s, c.want)
		}
	}
}

// iperfOK is the end of a real `iperf3 -c 127.0.0.1 -t 1 -J` report (iperf 3.12), intervals and streams cut.
const iperfOK = `{
	"start": {"version": "iperf 3.12"},
	"intervals": [],
	"end": {
		"sum_sent": {"start": 0, "end": 1.000074, "seconds": 1.000074, "bytes": 1874198528,
			"bits_per_second": 14992478780.57024, "retransmits": 21, "sender": true},
		"sum_received": {"start": 0, "end": 1.000762, "seconds": 1.000762, "bytes": 1874198528,
			"bits_per_second": 14982171809.08148, "sender": true}
	}
}`

// iperfRefused is what iperf 3.12 prints with -J when no server listens.
const iperfRefused = `{
	"start":	{
		"connected":	[],
		"version":	"iperf 3.12",
		"system_info":	"Linux vm 6.18.44-fc-v657 #1 SMP PREEMPT_DYNAMIC @0 x86_64"
	},
	"intervals":	[],
	"end":	{
	},
	"error":	"unable to connect to server: Connection refused"
}`

func TestParseIperf3(t *testing.T) {
	r, err := parseIperf3([]byte(iperfOK))
	if err != nil {
		t.Fatal(err)
	}
	if r.BitsPerSecond != 14982171809.08148 || r.Bytes != 1874198528 || r.Retransmits != 21 {
		t.Errorf("got %+v, want the receiver's 14982171809.08148 bit/s, 1874198528 bytes and 21 retransmits", r)
	}
	for name, in := range map[string]string{
		"error":        iperfRefused,
		"no end":       `{"start": {}, "end": {}}`,
		"zero rate":    `{"end": {"sum_received": {"bits_per_second": 0}}}`,
		"not JSON":     `iperf3: error - unable to connect`,
		"empty output": ``,
	} {
		if _, err := parseIperf3([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := parseIperf3([]byte(iperfRefused)); err == nil || !strings.Contains(err.Error(), "Connection refused") {
		t.Errorf("error report: got %v, want iperf3's message", err)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{4, 2}, 3},
		{[]float64{9, 1, 5}, 5},
		{[]float64{7, 1, 3, 100}, 5},
	} {
		in := append([]float64(nil), c.in...)
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
		for i := range in {
			if in[i] != c.in[i] {
				t.Errorf("median(%v) reordered its input", in)
			}
		}
	}
}

func TestTCPListening(t *testing.T) {
	// Real /proc/net/tcp6 of a namespace with `iperf3 -s -p 5299` (port 0x14B3) listening on [::].
	tcp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:14B3 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 592074 1 0000000040634bfa 100 0 0 10 0
`
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1451 0100007F:A2C4 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 0200000A:C350 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
`
	for _, c := range []struct {
		text string
		port int
		want bool
	}{
		{tcp6, 5299, true},
		{tcp6, 5201, false},
		{tcp, 5201, false}, // 5201 only as an established connection
		{tcp, 50000, true},
		{"", 5201, false},
	} {
		if got := tcpListening(c.text, c.port); got != c.want {
			t.Errorf("tcpListening(port %d) = %v, want %v in\n%s", c.port, got, c.want, c.text)
		}
	}
}

// pingOut is real iputils ping output (in a namespace, to its loopback), a duplicate and an error added.
const pingOut = `PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.
64 bytes from 127.0.0.1: icmp_seq=1 ttl=64 time=0.042 ms
64 bytes from 127.0.0.1: icmp_seq=2 ttl=64 time=0.052 ms
64 bytes from 127.0.0.1: icmp_seq=2 ttl=64 time=0.061 ms (DUP!)
From 10.5.1.1 icmp_seq=3 Destination Host Unreachable
64 bytes from 127.0.0.1: icmp_seq=4 ttl=64 time=12 ms

--- 127.0.0.1 ping statistics ---
4 packets transmitted, 3 received, +1 duplicates, +1 errors, 25% packet loss, time 28ms
rtt min/avg/max/mdev = 0.042/4.031/12.000/5.630 ms
`

func TestParsePingReplies(t *testing.T) {
	us := time.Microsecond
	for _, c := range []struct {
		name, out string
		want      []time.Duration
	}{
		{"iputils", pingOut, []time.Duration{42 * us, 52 * us, 12 * time.Millisecond}},
		{"busybox", "64 bytes from 10.5.2.2: seq=0 ttl=62 time=0.321 ms\n", []time.Duration{321 * us}},
		{"bound", "64 bytes from 10.5.2.2: icmp_seq=1 ttl=62 time<1 ms\n", []time.Duration{time.Millisecond}},
		{"no replies", "PING 10.9.9.9 (10.9.9.9) 56(84) bytes of data.\n\n--- 10.9.9.9 ping statistics ---\n" +
			"2 packets transmitted, 0 received, 100% packet loss, time 1012ms\n", nil},
		{"empty", "", nil},
	} {
		if got := parsePingReplies(c.out); !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		d := make([]time.Duration, len(v))
		for i := range v {
			d[i] = time.Duration(v[i]) * time.Millisecond
		}
		return d
	}
	hundred := make([]int, 100) // 1..100 ms, shuffled
	for i := range hundred {
		hundred[i] = (i*37)%100 + 1
	}
	twoHundred := make([]int, 200) // 199 × 1 ms and one 500 ms outlier
	for i := range twoHundred {
		twoHundred[i] = 1
	}
	twoHundred[17] = 500
	for _, c := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 50, 7 * time.Millisecond},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(3, 1, 2), 50, 2 * time.Millisecond},
		{ms(4, 1, 3, 2), 50, 2 * time.Millisecond}, // nearest rank: the lower middle
		{ms(hundred...), 50, 50 * time.Millisecond},
		{ms(hundred...), 99, 99 * time.Millisecond},
		{ms(hundred...), 100, 100 * time.Millisecond},
		{ms(twoHundred...), 99, time.Millisecond}, // one in 200 is beyond the 99th percentile
		{ms(append(twoHundred, 500, 500)...), 99, 500 * time.Millisecond},
	} {
		in := slices.Clone(c.in)
		if got := percentile(c.in, c.p); got != c.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(c.in), c.p, got, c.want)
		}
		if !slices.Equal(in, c.in) {
			t.Errorf("percentile reordered its input")
		}
	}
}

func TestProcCPU(t *testing.T) {
	// Real /proc/PID/stat lines: cat's own (utime 0, stime 0), and weftd's after a udp run with its
	// utime and stime (fields 14, 15) set to 1234 and 567 ticks; a command name with spaces and ")".
	cat := "25170 (cat) R 25162 25162 10861 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 152442 3133440 390 " +
		"18446744073709551615 94557233901568 94557233921449 140737370349184 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
	weftd := "31337 (weftd) S 31330 31330 10861 0 -1 4194560 2260 0 0 0 1234 567 0 0 20 0 9 0 160001 1280000000 4500 " +
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
	odd := "42 (a b) c)) S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0\n"
	for _, c := range []struct {
		name, stat string
		want       time.Duration
		bad        bool
	}{
		{name: "cat", stat: cat, want: 0},
		{name: "weftd", stat: weftd, want: 18010 * time.Millisecond},
		{name: "odd name", stat: odd, want: 100 * time.Millisecond},
		{name: "short", stat: "42 (x) S 1 1 1 0 -1 0 0 0 0 0 7", bad: true},
		{name: "no name", stat: "42 x S 1 1 1 0 -1 0 0 0 0 0 7 3 0 0 20", bad: true},
		{name: "not a number", stat: "42 (x) S 1 1 1 0 -1 0 0 0 0 0 -7 3 0 0 20 0 1 0 5 0 0", bad: true},
		{name: "empty", stat: "", bad: true},
	} {
		got, err := procCPU(c.stat)
		if c.bad {
			if err == nil {
				t.Errorf("%s: got %v, want an error", c.name, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: got %v, %v; want %v", c.name, got, err, c.want)
		}
	}
}

func TestOffloadsFromMetrics(t *testing.T) {
	for _, c := range []struct {
		name string
		m    map[string]float64
		want string
		ok   bool
	}{
		{"all", map[string]float64{
			`weft_udp_offload{feature="tun_gro"}`: 1, `weft_udp_offload{feature="gro"}`: 1,
			`weft_udp_offload{feature="tun"}`: 1, `weft_udp_offload{feature="uso"}`: 1,
			`weft_udp_offload{feature="gso"}`: 1, "weft_ready": 1,
		}, "tun,uso,gso,gro,tun_gro", true},
		{"some, and an unknown one last", map[string]float64{
			`weft_udp_offload{feature="tun"}`: 0, `weft_udp_offload{feature="gro"}`: 1,
			`weft_udp_offload{feature="zz"}`: 1, `weft_udp_offload{feature="gso"}`: 1,
		}, "gso,gro,zz", true},
		{"none", map[string]float64{`weft_udp_offload{feature="tun"}`: 0, `weft_udp_offload{feature="gso"}`: 0}, "none", true},
		{"older weftd", map[string]float64{"weft_ready": 1, "weft_udp_drop_unknown_peer": 3}, "", false},
		{"empty", nil, "", false},
	} {
		got, ok := offloadsFromMetrics(c.m)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: got %q, %v; want %q, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestOffloadsFromLog(t *testing.T) {
	const up = `time=2026-11-30T04:31:02.118Z level=INFO msg="udp backend up" backend=udp device=flannel0 mtu=1472 ` +
		`listen=192.0.2.11:8285 queues=2 offloads=tun,uso,gso,gro,tun_gro`
	const old = `time=2026-11-22T06:10:00.000Z level=INFO msg="udp backend up" backend=udp device=flannel0 mtu=1472 ` +
		`listen=192.0.2.11:8285`
	for _, c := range []struct {
		name, log, want string
		ok              bool
	}{
		{"up", "time=x level=INFO msg=starting\n" + up + "\ntime=y level=INFO msg=ready\n", "tun,uso,gso,gro,tun_gro", true},
		{"restarted: the last start counts", up + "\n" + strings.Replace(up, "offloads=tun,uso,gso,gro,tun_gro", "offloads=none", 1),
			"none", true},
		{"in the middle", strings.Replace(up, "queues=2 offloads=tun,uso,gso,gro,tun_gro", "offloads=gso,gro queues=2", 1), "gso,gro", true},
		{"quoted", strings.Replace(up, "offloads=tun,uso,gso,gro,tun_gro", `offloads="tun, gso"`, 1), "tun, gso", true},
		{"older weftd", old, "", false},
		{"not udp", `time=x level=INFO msg="vxlan backend up" offloads=tun`, "", false},
		{"empty", "", "", false},
	} {
		got, ok := offloadsFromLog(c.log)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: got %q, %v; want %q, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestJoinOffloads(t *testing.T) {
	for _, c := range []struct {
		per  []string
		want string
	}{
		{nil, ""},
		{[]string{"tun,gso"}, "tun,gso"},
		{[]string{"tun,gso", "tun,gso"}, "tun,gso"},
		{[]string{"tun,gso", "none"}, "n1: tun,gso; n2: none"},
	} {
		if got := joinOffloads([]string{"n1", "n2"}[:len(c.per)], c.per); got != c.want {
			t.Errorf("joinOffloads(%q) = %q, want %q", c.per, got, c.want)
		}
	}
}

func TestWriteBench(t *testing.T) {
	us := time.Microsecond
	rtts := func(base time.Duration) []time.Duration { // 200 replies: 197 at base, 3 (1.5 %) at 10 × base
		d := make([]time.Duration, 200)
		for i := range d {
			d[i] = base
		}
		d[0], d[100], d[150] = 10*base, 10*base, 10*base
		return d
	}
	rows := []benchRow{
		{Name: "veth", MTU: 1500, Runs: []float64{40e9, 42e9, 38e9}, Runs4: []float64{50e9, 50e9, 50e9},
			Echoes: 200, RTTs: rtts(20 * us)},
		{Name: "host-gw", MTU: 1500, Runs: []float64{20e9, 21e9, 19e9}, Runs4: []float64{25e9, 25e9, 25e9}, Retrans: 3, Retrans4: 9,
			Echoes: 200, RTTs: rtts(40 * us), Agents: true, AgentCPU: 30 * time.Millisecond, Wall: 9 * time.Second, Gbit: 180},
		{Name: "vxlan", MTU: 1450, Runs: []float64{10e9, 10e9, 10e9}, Runs4: []float64{10e9, 12e9, 11e9},
			Echoes: 200, RTTs: rtts(60 * us), Agents: true, AgentCPU: 20 * time.Millisecond, Wall: 9 * time.Second, Gbit: 90},
		{Name: "udp", MTU: 1472, Runs: []float64{5e9, 6e9, 7e9}, Runs4: []float64{5.5e9, 5.5e9, 5.5e9},
			Echoes: 200, RTTs: append(rtts(90 * us)[:199], 3*time.Millisecond), Agents: true,
			AgentCPU: 9 * time.Second, Wall: 9 * time.Second, Gbit: 54, Offloads: "tun,uso,gso,gro,tun_gro"},
		{Name: "udp-before", MTU: 1472, Runs: []float64{0.5e9, 0.4e9}, Runs4: []float64{0.4e9}, Retrans: 12,
			Echoes: 200, RTTs: rtts(150 * us)[:190], Agents: true, AgentCPU: 18 * time.Second, Wall: 9 * time.Second, Gbit: 4,
			Offloads: "not reported"},
		{Name: "bad", Err: errors.New("cluster: boom\nmore detail")},
	}
	var b strings.Builder
	writeBench(&b, benchHeader{Seconds: 3, Reps: 3, Streams: 4, Pings: 200, PingInterval: 10 * time.Millisecond},
		benchMachine{CPUs: 2, CPUModel: "Some CPU", Kernel: "6.18.44", Iperf: "iperf3 3.12"}, rows, "veth")
	want := `Container-to-container TCP (Gbit/s): iperf3 -t 3, 1 stream and -P 4, median of 3 runs each.
PATH              MTU   1 STREAM  x VETH  x VXLAN  4 STREAMS  x VETH  x VXLAN  RETRANS 1/4  RUNS 1 STREAM      RUNS 4 STREAMS
veth (reference)  1500  40.00     1.00    4.00     50.00      1.00    4.55     0/0          40.00 42.00 38.00  50.00 50.00 50.00
host-gw           1500  20.00     0.50    2.00     25.00      0.50    2.27     3/9          20.00 21.00 19.00  25.00 25.00 25.00
vxlan             1450  10.00     0.25    1.00     11.00      0.22    1.00     0/0          10.00 10.00 10.00  10.00 12.00 11.00
udp               1472  6.00      0.15    0.60     5.50       0.11    0.50     0/0          5.00 6.00 7.00     5.50 5.50 5.50
udp-before        1472  0.45      0.01    0.04     0.40       0.01    0.04     12/0         0.50 0.40          0.40
bad               -     FAIL      -       -        -          -       -        -            -                  -

Round trip: ping -c 200 -i 0.01. Agent CPU: both nodes' weftd (user+system) during the 1-stream runs,
in % of one CPU and in CPU seconds per Gbit moved (= CPUs per Gbit/s).
PATH              REPLIES  RTT MEDIAN  x VXLAN  RTT P99   x VXLAN  AGENT CPU  CPU s/GBIT  UDP OFFLOADS
veth (reference)  200/200  0.020 ms    0.33     0.200 ms  0.33     -          -           -
host-gw           200/200  0.040 ms    0.67     0.400 ms  0.67     0%         0.000       -
vxlan             200/200  0.060 ms    1.00     0.600 ms  1.00     0%         0.000       -
udp               200/200  0.090 ms    1.50     0.900 ms  1.50     100%       0.167       tun,uso,gso,gro,tun_gro
udp-before        190/200  0.150 ms    2.50     1.500 ms  2.50     200%       4.500       not reported
bad               FAIL     -           -        -         -        -          -           -
bad failed: cluster: boom
Machine: 2 CPUs (Some CPU), kernel 6.18.44, iperf3 3.12.
`
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}

	// Without a vxlan row (or with the reference failed) the ratios are "-".
	b.Reset()
	writeBench(&b, benchHeader{Seconds: 1, Reps: 1, Streams: 4, Pings: 200, PingInterval: 10 * time.Millisecond},
		benchMachine{CPUs: 2, Kernel: "6.18.44", Iperf: "iperf3 3.12"},
		[]benchRow{{Name: "veth", Err: errors.New("no")}, {Name: "udp", MTU: 1472, Runs: []float64{1e9}, Runs4: []float64{2e9}}}, "veth")
	for _, line := range []string{
		"median of 1 run each.\n",
		"\nudp               1472  1.00      -       -        2.00       -       -        0/0          1.00           2.00\n",
		"\nudp               -        -           -        -        -        -          -           -\n",
		"veth failed: no\n",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("ratios without references: no line %q in\n%s", line, b.String())
		}
	}
}

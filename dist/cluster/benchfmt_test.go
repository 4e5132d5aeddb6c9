package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

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
	if r.BitsPerSecond != 14982171809.08148 || r.Retransmits != 21 {
		t.Errorf("got %+v, want the receiver's 14982171809.08148 bit/s and 21 retransmits", r)
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

func TestWriteBench(t *testing.T) {
	rows := []benchRow{
		{Name: "veth", MTU: 1500, Runs: []float64{40e9, 42e9, 38e9}, RTT: 21 * time.Microsecond},
		{Name: "host-gw", MTU: 1500, Runs: []float64{20e9, 21e9, 19e9}, Retrans: 3, RTT: 45 * time.Microsecond},
		{Name: "vxlan", MTU: 1450, Runs: []float64{10e9, 10e9, 10e9}, RTT: 60 * time.Microsecond},
		{Name: "udp", MTU: 1472, Runs: []float64{0.5e9, 0.4e9}, RTT: 150 * time.Microsecond},
		{Name: "bad", Err: errors.New("cluster: boom\nmore detail")},
	}
	var b strings.Builder
	writeBench(&b, benchHeader{Seconds: 5, Reps: 3, Pings: 20, PingInterval: 50 * time.Millisecond},
		benchMachine{CPUs: 2, CPUModel: "Some CPU", Kernel: "6.18.44", Iperf: "iperf3 3.12"}, rows, "veth")
	want := `Container-to-container TCP, 1 stream: iperf3 -t 5, median of 3 runs. Round trip: ping -c 20 -i 0.05, average.
PATH              MTU   GBIT/S  x VETH  x VXLAN  RTT       RUNS (GBIT/S)      RETRANS
veth (reference)  1500  40.00   1.00    4.00     0.021 ms  40.00 42.00 38.00  0
host-gw           1500  20.00   0.50    2.00     0.045 ms  20.00 21.00 19.00  3
vxlan             1450  10.00   0.25    1.00     0.060 ms  10.00 10.00 10.00  0
udp               1472  0.45    0.01    0.04     0.150 ms  0.50 0.40          0
bad               -     FAIL    -       -        -         -                  -
bad failed: cluster: boom
Machine: 2 CPUs (Some CPU), kernel 6.18.44, iperf3 3.12.
`
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}

	// Without a vxlan row (or with the reference failed) the ratio is "-".
	b.Reset()
	writeBench(&b, benchHeader{Seconds: 1, Reps: 1, Pings: 20, PingInterval: 50 * time.Millisecond},
		benchMachine{CPUs: 2, Kernel: "6.18.44", Iperf: "iperf3 3.12"},
		[]benchRow{{Name: "veth", Err: errors.New("no")}, {Name: "udp", MTU: 1472, Runs: []float64{1e9}}}, "veth")
	if !strings.Contains(b.String(), "median of 1 run.") ||
		!strings.Contains(b.String(), "\nudp               1472  1.00    -       -        -    1.00           0\n") {
		t.Errorf("ratios without references:\n%s", b.String())
	}
}

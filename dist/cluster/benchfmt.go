package main

// The pure parts of `weft-cluster bench`: iperf3's JSON, the median, /proc/net/tcp and the result table.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// iperfResult is what one iperf3 client run (`iperf3 -c ... -J`) reports.
type iperfResult struct {
	BitsPerSecond float64 // end.sum_received.bits_per_second: what the receiver got
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
	r := iperfResult{BitsPerSecond: doc.End.SumReceived.BitsPerSecond}
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

// benchRow is one measured path.
type benchRow struct {
	Name string
	MTU  int
	Runs []float64 // throughput of each run, bit/s
	// Retrans is the sender's TCP retransmits summed over the runs.
	Retrans int
	RTT     time.Duration // ping's average; zero if not measured
	Err     error         // the path failed; the other fields may be partial
}

// gbps is the median throughput in Gbit/s.
func (r benchRow) gbps() float64 { return median(r.Runs) / 1e9 }

// benchMachine describes where the bench ran.
type benchMachine struct {
	CPUs          int
	CPUModel      string
	Kernel, Iperf string
}

// benchHeader describes the method.
type benchHeader struct {
	Seconds, Reps int
	Pings         int
	PingInterval  time.Duration
}

// writeBench prints the result table: each path's median throughput, its ratio to the reference (the row
// named ref) and to vxlan, the single runs, retransmits and the ping round trip, then the machine.
func writeBench(w io.Writer, h benchHeader, m benchMachine, rows []benchRow, ref string) {
	find := func(name string) float64 {
		for _, r := range rows {
			if r.Name == name && r.Err == nil && len(r.Runs) > 0 {
				return r.gbps()
			}
		}
		return 0
	}
	refG, vxG := find(ref), find("vxlan")
	ratio := func(g, base float64) string {
		if base == 0 || g == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", g/base)
	}
	runs := "runs"
	if h.Reps == 1 {
		runs = "run"
	}
	fmt.Fprintf(w, "Container-to-container TCP, 1 stream: iperf3 -t %d, median of %d %s. Round trip: ping -c %d -i %s, average.\n",
		h.Seconds, h.Reps, runs, h.Pings, strconv.FormatFloat(h.PingInterval.Seconds(), 'f', -1, 64))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tMTU\tGBIT/S\tx VETH\tx VXLAN\tRTT\tRUNS (GBIT/S)\tRETRANS")
	var failures []string
	for _, r := range rows {
		name := r.Name
		if name == ref {
			name += " (reference)"
		}
		if r.Err != nil {
			fmt.Fprintf(tw, "%s\t%s\tFAIL\t-\t-\t-\t-\t-\n", name, mtuText(r.MTU))
			failures = append(failures, fmt.Sprintf("%s failed: %s\n", r.Name, firstLine(r.Err)))
			continue
		}
		runs := make([]string, len(r.Runs))
		for i, b := range r.Runs {
			runs[i] = fmt.Sprintf("%.2f", b/1e9)
		}
		rtt := "-"
		if r.RTT > 0 {
			rtt = fmt.Sprintf("%.3f ms", float64(r.RTT.Microseconds())/1000)
		}
		g := r.gbps()
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%d\n", name, mtuText(r.MTU), g, ratio(g, refG), ratio(g, vxG),
			rtt, strings.Join(runs, " "), r.Retrans)
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

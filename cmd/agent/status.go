package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/probe"
	"github.com/weft-net/weft/backend/udp"
	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/subnet"
)

// agentStatus is what /status serves and `weftd status` prints: the running agent's view of itself.
type agentStatus struct {
	Version  string   `json:"version"`
	Ready    bool     `json:"ready"`
	NotReady []string `json:"not_ready,omitempty"` // why not ready, when not
	// DataPath is the backend's own check (backend.Checker): "ok", or why the data path cannot work.
	DataPath      string           `json:"data_path"`
	Lease         *statusLease     `json:"lease,omitempty"`
	Backend       *statusBackend   `json:"backend,omitempty"`
	Peers         int              `json:"peers"` // programmed by the last successful reconcile
	LastReconcile *reconcileResult `json:"last_reconcile,omitempty"`
	Probes        *statusProbes    `json:"probes,omitempty"` // nil: probing off
}

type statusLease struct {
	Subnet      string `json:"subnet"`
	IPv6Subnet  string `json:"ipv6_subnet,omitempty"`
	PublicIP    string `json:"public_ip"`
	NodeID      string `json:"node_id,omitempty"`
	Reservation bool   `json:"reservation"`
	Held        bool   `json:"held"` // false: lost, being re-acquired
	// Kube is true in kube mode, where the lease is the Node's pod CIDR and never expires.
	Kube bool `json:"kube,omitempty"`
	// TTLLeftSeconds is the store's TTL left as last read (every few seconds); absent when it never expires
	// (a reservation, kube mode) or is not known yet.
	TTLLeftSeconds *float64 `json:"ttl_left_seconds,omitempty"`
}

type statusBackend struct {
	Type    string         `json:"type"`
	MTU     int            `json:"mtu"`
	Devices []statusDevice `json:"devices,omitempty"`
	// Offloads are the udp offloads in use ("tun,gso,gro", "none"); empty for other backends.
	Offloads string            `json:"offloads,omitempty"`
	Stats    map[string]uint64 `json:"stats,omitempty"`
}

type statusDevice struct {
	Name  string `json:"name"`
	State string `json:"state"` // up, down, or missing
	MTU   int    `json:"mtu,omitempty"`
}

type statusProbes struct {
	Rate  float64      `json:"rate"`
	Error string       `json:"error,omitempty"` // why probing could not start
	Sent  uint64       `json:"sent"`
	Peers []statusPeer `json:"peers"`
}

type statusPeer struct {
	Peer       string    `json:"peer"`
	Addr       string    `json:"addr"`
	State      string    `json:"state"`
	Since      time.Time `json:"since,omitzero"`
	LastRTTSec float64   `json:"last_rtt_seconds,omitempty"`
	Sent       uint64    `json:"sent"`
	Lost       uint64    `json:"lost"`
}

// serveStatus answers /status with the agent's status as JSON (200 whether ready or not: readiness is in
// the body; /readyz is the probe).
func (h *health) serveStatus(w http.ResponseWriter, _ *http.Request) {
	st := agentStatus{Version: version, DataPath: "ok",
		NotReady: []string{"starting: waiting for the lease store, the network config or the backend"}}
	if f := h.status.Load(); f != nil {
		st = (*f)()
	}
	if f := h.alive.Load(); f != nil {
		if err := (*f)(); err != nil {
			st.DataPath = err.Error()
		}
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(st)
}

// status reports the agent's state; set as the health server's status once the backend is up.
func (a *agent) status() agentStatus {
	m := a.health.metrics
	st := agentStatus{Version: version, Ready: a.health.isReady(), NotReady: a.notReady(), DataPath: "ok",
		Peers: int(a.health.peers.Load()), LastReconcile: m.last.Load()}
	if li := m.lease.Load(); li != nil {
		l := li.lease
		sl := &statusLease{Subnet: l.Subnet.String(), PublicIP: l.Attrs.PublicIP.String(), NodeID: l.Attrs.NodeID,
			Reservation: l.Reservation, Held: !li.lost.Load(), Kube: a.cfg.Kube.SubnetMgr}
		if l.IPv6Subnet.IsValid() {
			sl.IPv6Subnet = l.IPv6Subnet.String()
		}
		if r := li.ttl.Load(); r != nil && !l.Reservation {
			left := max(r.left-time.Since(r.at), 0).Round(time.Second).Seconds()
			sl.TTLLeftSeconds = &left
		}
		st.Lease = sl
	}
	b := &statusBackend{Type: a.net.BackendType, MTU: a.local.MTU}
	for _, name := range backendDevices(a.net) {
		d := statusDevice{Name: name, State: "missing"}
		if ifc, err := net.InterfaceByName(name); err == nil {
			d.State, d.MTU = "down", ifc.MTU
			if ifc.Flags&net.FlagUp != 0 {
				d.State = "up"
			}
		}
		b.Devices = append(b.Devices, d)
	}
	if s, ok := a.be.(backend.Stats); ok {
		b.Stats = s.Stats()
		b.Offloads = offloadsOf(b.Stats)
	}
	st.Backend = b
	if ps := m.prober.Load(); ps != nil {
		sp := &statusProbes{Rate: a.cfg.Probe.Rate, Peers: []statusPeer{}}
		if ps.err != nil {
			sp.Error = ps.err.Error()
		}
		if ps.p != nil {
			sp.Sent = ps.p.Sent()
			for _, s := range ps.p.Peers() {
				sp.Peers = append(sp.Peers, statusPeer{Peer: s.Peer.String(), Addr: s.Addr.String(), State: s.State.String(),
					Since: s.Since, LastRTTSec: s.LastRTT.Seconds(), Sent: s.Sent, Lost: s.Lost})
			}
		}
		st.Probes = sp
	}
	return st
}

// notReady says why the agent is not ready (see ready), or nil.
func (a *agent) notReady() []string {
	var why []string
	a.mu.Lock()
	switch {
	case a.holdFailed:
		why = append(why, "cannot hold a subnet lease (see the log); restart weftd once the cause is fixed")
	case a.own == nil:
		why = append(why, "no subnet lease yet")
	case a.lost:
		why = append(why, "subnet lease lost; acquiring it again")
	}
	if a.own != nil && a.env == nil {
		why = append(why, "env file "+a.cfg.SubnetFile+" not written yet")
	}
	if a.own != nil && !a.synced {
		msg := "data path not in sync yet"
		if r := a.health.metrics.last.Load(); r != nil && r.Err != "" {
			msg = "data path not in sync: " + r.Op + ": " + r.Err
		} else if !a.haveWatch {
			msg = "data path not in sync: waiting for the first listing of the leases"
		}
		why = append(why, msg)
	}
	if a.watchFailed {
		why = append(why, "the lease watch ended (see the log): peers are no longer followed; restart weftd")
	}
	if a.underlayLost {
		why = append(why, "external interface lost")
	}
	a.mu.Unlock()
	if a.health.rulesPending.Load() {
		why = append(why, "packet filter rules not in place yet")
	}
	return why
}

// backendDevices names the devices a backend creates on every node.
func backendDevices(n *subnet.Config) []string {
	switch n.BackendType {
	case "vxlan":
		c := struct{ VNI int }{VNI: 1}
		if backend.DecodeConfig(n, &c) != nil || c.VNI == 0 {
			c.VNI = 1
		}
		return []string{vxlan.DeviceName(c.VNI)}
	case "udp":
		return []string{udp.TUNName}
	}
	return nil
}

// statusTimeout bounds `weftd status`'s request.
const statusTimeout = 5 * time.Second

// statusCmd prints the running agent's status, read from its health server's /status.
func statusCmd(ctx context.Context, args []string, env cmdEnv) error {
	var asJSON bool
	var ip string
	var port int
	fs := pflag.NewFlagSet("weftd status", pflag.ContinueOnError)
	fs.SetOutput(env.stderr)
	fs.BoolVar(&asJSON, "json", false, "print the agent's JSON report as it is")
	fs.StringVar(&ip, "healthz-ip", "127.0.0.1", "address of the agent's health server (weftd's --healthz-ip; 0.0.0.0 is asked on 127.0.0.1)")
	fs.IntVar(&port, "healthz-port", 0, "port of the agent's health server (weftd's --healthz-port); required")
	fs.Usage = func() {
		fmt.Fprintf(env.stderr, "Usage: weftd status [--json] --healthz-port PORT [--healthz-ip IP]\n\nPrints this node's lease, backend, peers, last reconcile, readiness and probes, from the running weftd.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, env.getenv); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("status: unexpected argument %q", fs.Arg(0))
	}
	if port <= 0 || port > 65535 {
		return errors.New("status: --healthz-port: give the agent's health port (it serves /status there; WEFTD_HEALTHZ_PORT works too)")
	}
	if ip == "" || ip == "0.0.0.0" || ip == "::" {
		ip = "127.0.0.1"
	}
	body, err := fetchStatus(ctx, net.JoinHostPort(ip, fmt.Sprint(port)))
	if err != nil {
		return err
	}
	if asJSON {
		_, err := env.stdout.Write(body)
		return err
	}
	var st agentStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status: the agent's /status is not a status report: %w", err)
	}
	return printStatus(env.stdout, st, time.Now())
}

// fetchStatus GETs /status from the health server at addr; an agent that does not answer is named, with
// the address tried and the cause.
func fetchStatus(ctx context.Context, addr string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	url := "http://" + addr + "/status"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("status: weftd is not running, or not serving its health server at %s (--healthz-ip, --healthz-port): %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("status: read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status: GET %s: %s (an older weftd without /status?): %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// printStatus writes the status report for people.
func printStatus(w io.Writer, st agentStatus, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "no"
	}
	fmt.Fprintf(tw, "Ready:\t%s\n", ready)
	for _, why := range st.NotReady {
		fmt.Fprintf(tw, "  not ready:\t%s\n", why)
	}
	fmt.Fprintf(tw, "Data path:\t%s\n", st.DataPath)
	if l := st.Lease; l != nil {
		sub := l.Subnet
		if l.IPv6Subnet != "" {
			sub += ", " + l.IPv6Subnet
		}
		ttl := "unknown"
		switch {
		case l.Reservation:
			ttl = "never expires (reservation)"
		case l.Kube:
			ttl = "never expires (kube mode: the Node's pod CIDR)"
		case l.TTLLeftSeconds != nil:
			ttl = (time.Duration(*l.TTLLeftSeconds) * time.Second).String() + " (renewed while weftd runs)"
		}
		held := ""
		if !l.Held {
			held = " (LOST, re-acquiring)"
		}
		fmt.Fprintf(tw, "Lease:\t%s%s\n", sub, held)
		fmt.Fprintf(tw, "  public IP:\t%s\n", l.PublicIP)
		if l.NodeID != "" {
			fmt.Fprintf(tw, "  node ID:\t%s\n", l.NodeID)
		}
		fmt.Fprintf(tw, "  TTL left:\t%s\n", ttl)
	} else {
		fmt.Fprintf(tw, "Lease:\tnone yet\n")
	}
	if b := st.Backend; b != nil {
		fmt.Fprintf(tw, "Backend:\t%s (MTU %d)\n", b.Type, b.MTU)
		for _, d := range b.Devices {
			fmt.Fprintf(tw, "  device:\t%s %s", d.Name, d.State)
			if d.MTU > 0 {
				fmt.Fprintf(tw, " mtu %d", d.MTU)
			}
			fmt.Fprintln(tw)
		}
		if b.Offloads != "" {
			fmt.Fprintf(tw, "  offloads:\t%s\n", b.Offloads)
		}
	}
	fmt.Fprintf(tw, "Peers programmed:\t%d\n", st.Peers)
	if r := st.LastReconcile; r != nil {
		res := "ok"
		if r.Err != "" {
			res = "FAILED: " + r.Err
		}
		fmt.Fprintf(tw, "Last reconcile:\t%s %s ago, took %s: %s\n", r.Op, now.Sub(r.At).Round(time.Second), r.Duration.Round(time.Microsecond), res)
	} else {
		fmt.Fprintf(tw, "Last reconcile:\tnone yet\n")
	}
	p := st.Probes
	switch {
	case p == nil:
		fmt.Fprintf(tw, "Probes:\toff (--probe-rate)\n")
	case p.Error != "":
		fmt.Fprintf(tw, "Probes:\tcannot run: %s\n", p.Error)
	default:
		count := map[string]int{}
		for _, s := range p.Peers {
			count[s.State]++
		}
		fmt.Fprintf(tw, "Probes:\t%g/s, %d sent; %d reachable, %d unreachable, %d unknown\n", p.Rate, p.Sent,
			count[probe.Reachable.String()], count[probe.Unreachable.String()], count[probe.Unknown.String()])
	}
	if err := tw.Flush(); err != nil || p == nil || p.Error != "" {
		return err
	}
	peers := slices.Clone(p.Peers)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDR\tSTATE\tSINCE\tLAST-RTT\tSENT\tLOST")
	for _, s := range peers {
		since, rtt := "-", "-"
		if !s.Since.IsZero() {
			since = now.Sub(s.Since).Round(time.Second).String()
		}
		if s.LastRTTSec > 0 {
			rtt = time.Duration(s.LastRTTSec * float64(time.Second)).Round(time.Microsecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\n", s.Peer, s.Addr, s.State, since, rtt, s.Sent, s.Lost)
	}
	return tw.Flush()
}

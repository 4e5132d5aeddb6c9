package main

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/backend/probe"
	"github.com/weft-net/weft/subnet"
)

// probeFlags turn on per-peer reachability probing (off by default).
type probeFlags struct {
	Rate    float64       // --probe-rate: probes per second for all peers together; 0: probing off
	Timeout time.Duration // --probe-timeout: a probe without reply after this is lost
	Series  int           // --probe-peer-series: at most this many peers get per-peer series
}

func (p *probeFlags) register(fs *pflag.FlagSet) {
	fs.Float64Var(&p.Rate, "probe-rate", 0, "probe the peers' reachability over the overlay with this many ICMP echo probes per second in all, round-robin (each peer every peers/rate seconds); 0 turns probing off")
	fs.DurationVar(&p.Timeout, "probe-timeout", time.Second, "a probe without a reply after this counts as lost (the peer is unreachable)")
	fs.IntVar(&p.Series, "probe-peer-series", 64, "at most this many peers get their own weft_peer_reachable and weft_peer_rtt_seconds series (unreachable peers first); weft_probe_peers counts all")
}

func (p *probeFlags) validate() error {
	switch {
	case p.Rate < 0 || p.Rate > probe.MaxRate || p.Rate != p.Rate:
		return fmt.Errorf("--probe-rate %g: want 0 (off) to %d probes per second", p.Rate, probe.MaxRate)
	case p.Timeout <= 0:
		return fmt.Errorf("--probe-timeout %s: must be positive", p.Timeout)
	case p.Series < 0:
		return fmt.Errorf("--probe-peer-series %d: must not be negative", p.Series)
	}
	return nil
}

// probeAddr returns the address of the peer lease l that the probes go to, for backend type typ: an
// address the peer's kernel answers echo requests on, reached through the data path to its subnet.
//   - vxlan and udp: the subnet's first address (x.y.z.0), which the backend gives its device (flannel.<VNI>,
//     flannel0) on every node, flanneld's included;
//   - host-gw: the subnet's gateway (x.y.z.1, FLANNEL_SUBNET), which the container runtime gives its bridge
//     (cni0, docker0): a peer whose runtime has not created its bridge yet shows unreachable.
//
// ok is false for a backend without a data path to probe (alloc) and for a lease without an IPv4 subnet.
func probeAddr(typ string, l subnet.Lease) (netip.Addr, bool) {
	if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() {
		return netip.Addr{}, false
	}
	switch typ {
	case "vxlan", "udp":
		return l.Subnet.Masked().Addr(), true
	case "host-gw":
		return l.Subnet.Masked().Addr().Next(), true
	}
	return netip.Addr{}, false
}

// probeTargets returns the peers to probe: every lease but the own one and those that do not fit the
// network config.
func (a *agent) probeTargets() []probe.Target {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.own == nil {
		return nil
	}
	out := make([]probe.Target, 0, len(a.leases))
	for k, l := range a.leases {
		if k == a.own.Key() || l.Subnet == a.own.Subnet || a.misfits[k] {
			continue
		}
		if addr, ok := probeAddr(a.net.BackendType, l); ok {
			out = append(out, probe.Target{Peer: l.Subnet.Masked(), Addr: addr})
		}
	}
	return out
}

// startProber starts probing (with --probe-rate) until ctx ends, on wg. A prober that cannot start (no
// raw socket without CAP_NET_RAW, say) is logged and weftd runs without it: probing is for the operator's
// eyes, and the data path must not depend on it.
func (a *agent) startProber(ctx context.Context, wg *sync.WaitGroup) {
	f := a.cfg.Probe
	if f.Rate == 0 {
		return
	}
	if _, ok := probeAddr(a.net.BackendType, subnet.Lease{Subnet: netip.MustParsePrefix("10.0.0.0/24")}); !ok {
		a.log.Warn("--probe-rate: the backend has no data path to probe; probing off", "backend", a.net.BackendType)
		return
	}
	conn, err := probe.Listen()
	if err != nil {
		a.log.Error("cannot probe the peers; running without probing", "err", err)
		a.health.metrics.prober.Store(&proberSource{err: err})
		return
	}
	log := a.log.With("component", "probe")
	p, err := probe.New(probe.Config{Rate: f.Rate, Timeout: f.Timeout, Targets: a.probeTargets, Log: log}, conn)
	if err != nil { // validated with the flags
		conn.Close()
		a.log.Error("cannot probe the peers; running without probing", "err", err)
		a.health.metrics.prober.Store(&proberSource{err: err})
		return
	}
	p.Start()
	a.health.metrics.prober.Store(&proberSource{p: p, maxSeries: f.Series})
	log.Info("probing peers", "rate", f.Rate, "timeout", f.Timeout)
	wg.Go(func() {
		<-ctx.Done()
		if err := p.Close(); err != nil {
			log.Warn("close prober", "err", err)
		}
	})
}

// watchLeaseTTL reads the TTL left on this node's lease from the store, for the metrics and `weftd status`
// (which count it down in between): at once for a new lease, then every leaseTTLRead; a store without TTLs
// (kube) is not asked.
func (a *agent) watchLeaseTTL(ctx context.Context, store subnet.Store) {
	ts, ok := store.(interface {
		LeaseTTL(context.Context, subnet.Lease) (time.Duration, bool, error)
	})
	if !ok {
		return
	}
	t := time.NewTicker(leaseTTLEvery)
	defer t.Stop()
	var last *leaseInfo // the lease of the last reading
	var lastAt time.Time
	for {
		if li := a.health.metrics.lease.Load(); li != nil && !li.lease.Reservation && !li.lost.Load() &&
			(li != last || time.Since(lastAt) >= leaseTTLRead) {
			rctx, cancel := context.WithTimeout(ctx, leaseTTLEvery)
			left, ok, err := ts.LeaseTTL(rctx, li.lease)
			cancel()
			switch {
			case err != nil && ctx.Err() == nil:
				a.log.Debug("read the lease's TTL", "err", err)
			case err == nil && ok:
				li.ttl.Store(&ttlReading{left: left, at: time.Now()})
				last, lastAt = li, time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// leaseTTLEvery is how often watchLeaseTTL looks for a new lease (without asking the store), and
// leaseTTLRead how often it reads the TTL of the same lease again.
const (
	leaseTTLEvery = 5 * time.Second
	leaseTTLRead  = time.Minute
)

// Package probe checks that this node reaches its peers over the overlay: it sends ICMP echo requests to an
// address each peer's kernel answers for (see the agent's choice per backend) at a fixed budget of probes
// per second, round-robin over the peers, so its cost does not grow with the cluster: with N peers and a
// rate of R probes per second, each peer is probed every N/R seconds.
//
// A peer is reachable when its last probe got a reply within the timeout, unreachable when it did not (or
// could not be sent), and unknown before its first result. The prober keeps each peer's state and an RTT
// histogram (Buckets); the agent exports them as metrics.
package probe

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Target is one peer to probe.
type Target struct {
	Peer netip.Prefix // the peer's subnet, which names it (metric label, status)
	Addr netip.Addr   // the address probed
}

// Conn sends ICMP echo requests and reads the replies to them. Its Linux implementation is a raw ICMP
// socket (Listen); tests use a fake.
type Conn interface {
	// WriteEcho sends an echo request with sequence number seq to dst.
	WriteEcho(dst netip.Addr, seq uint16) error
	// ReadEcho blocks until an echo reply to one of this Conn's requests arrives and returns its source and
	// sequence number. After Close it returns an error wrapping net.ErrClosed.
	ReadEcho() (src netip.Addr, seq uint16, err error)
	// Close makes ReadEcho return; it is idempotent.
	Close() error
}

// Buckets are the upper bounds (seconds) of the RTT histograms: from 100 µs (a netns cluster, a LAN) to
// 1 s (the default timeout).
var Buckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// Config configures a Prober.
type Config struct {
	// Rate is the number of probes per second, for all peers together; required, > 0 and at most MaxRate.
	Rate float64
	// Timeout is how long a probe waits for its reply before it counts as lost. Zero: 1 s.
	Timeout time.Duration
	// Targets returns the peers to probe; it is called at the start of each round over the peers, and at
	// least every second (so a change reaches the prober within a round or a second). Required.
	Targets func() []Target
	// Log receives the prober's events; required.
	Log *slog.Logger
}

// MaxRate bounds Config.Rate.
const MaxRate = 1000

// PeerState is what the prober knows about one peer.
type PeerState struct {
	Peer       netip.Prefix
	Addr       netip.Addr
	State      State
	Since      time.Time     // when State last changed (the first result: when it came)
	LastRTT    time.Duration // RTT of the last reply; zero before one
	Sent, Lost uint64        // probes sent to the peer, and of them lost (timed out or not sendable)
	// RTT histogram: Counts[i] replies with RTT ≤ Buckets[i] (not cumulative; above the last bucket: only in
	// RTTCount), RTTSum seconds in all.
	Counts   []uint64
	RTTSum   float64
	RTTCount uint64
}

// State is a peer's reachability.
type State int

const (
	Unknown     State = iota // no result yet
	Reachable                // the last probe got its reply in time
	Unreachable              // the last probe did not
)

func (s State) String() string {
	switch s {
	case Reachable:
		return "reachable"
	case Unreachable:
		return "unreachable"
	}
	return "unknown"
}

// Prober probes peers; see the package doc.
type Prober struct {
	cfg  Config
	conn Conn
	log  *slog.Logger
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once

	mu          sync.Mutex // guards the fields below
	peers       map[netip.Prefix]*peer
	outstanding map[uint16]probe
	seq         uint16
	sent        uint64
	round       []Target
	next        int       // index in round of the next probe
	roundAt     time.Time // when round was read
}

type peer struct {
	PeerState
	resultAt time.Time // send time of the probe whose result State is
}

type probe struct {
	peer netip.Prefix
	addr netip.Addr
	sent time.Time
}

// New returns a prober that uses conn; Start starts it.
func New(cfg Config, conn Conn) (*Prober, error) {
	if cfg.Rate <= 0 || cfg.Rate > MaxRate || math.IsNaN(cfg.Rate) {
		return nil, fmt.Errorf("probe rate %g: want more than 0 and at most %d probes per second", cfg.Rate, MaxRate)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("probe timeout %s: must not be negative", cfg.Timeout)
	}
	if cfg.Targets == nil || cfg.Log == nil {
		return nil, errors.New("probe: Targets and Log are required")
	}
	return &Prober{
		cfg: cfg, conn: conn, log: cfg.Log, stop: make(chan struct{}),
		peers: map[netip.Prefix]*peer{}, outstanding: map[uint16]probe{},
	}, nil
}

// Start starts the send and receive goroutines; Close stops them.
func (p *Prober) Start() {
	p.wg.Go(p.routineSend)
	p.wg.Go(p.routineReceive)
}

// Close stops the prober, closes its Conn and waits for its goroutines. It is idempotent.
func (p *Prober) Close() error {
	var err error
	p.once.Do(func() {
		close(p.stop)
		err = p.conn.Close()
		p.wg.Wait()
	})
	return err
}

// Sent returns the number of probes sent since Start.
func (p *Prober) Sent() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sent
}

// Peers returns the state of every peer of the current round, sorted by subnet.
func (p *Prober) Peers() []PeerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]PeerState, 0, len(p.peers))
	for _, st := range p.peers {
		s := st.PeerState
		s.Counts = slices.Clone(s.Counts)
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return comparePrefix(a.Peer, b.Peer) })
	return out
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

func (p *Prober) routineSend() {
	p.log.Debug("probe sender started", "rate", p.cfg.Rate, "timeout", p.cfg.Timeout)
	defer p.log.Debug("probe sender stopped")
	t := time.NewTicker(time.Duration(float64(time.Second) / p.cfg.Rate))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.tick(time.Now())
		}
	}
}

// tick expires the probes past their timeout and sends the next one: one probe per tick, whatever the
// number of peers.
func (p *Prober) tick(now time.Time) {
	p.mu.Lock()
	p.expireLocked(now)
	if p.next >= len(p.round) || now.Sub(p.roundAt) >= time.Second {
		p.mu.Unlock()
		targets := p.cfg.Targets() // outside the lock: it takes the agent's
		p.mu.Lock()
		p.newRoundLocked(targets, now)
	}
	if len(p.round) == 0 {
		p.mu.Unlock()
		return
	}
	tg := p.round[p.next]
	p.next++
	p.seq++
	seq := p.seq
	p.sent++
	st := p.peers[tg.Peer]
	st.Sent++
	p.outstanding[seq] = probe{peer: tg.Peer, addr: tg.Addr, sent: now}
	p.mu.Unlock()
	if err := p.conn.WriteEcho(tg.Addr, seq); err != nil {
		// No route (a deleted route, say) or a local error: the probe is lost now.
		p.mu.Lock()
		if pr, ok := p.outstanding[seq]; ok {
			delete(p.outstanding, seq)
			p.resultLocked(pr, false, 0, now)
		}
		p.mu.Unlock()
		p.log.Debug("send probe", "peer", tg.Peer, "addr", tg.Addr, "err", err)
	}
}

// newRoundLocked takes in targets (sorted by subnet here) and forgets peers no longer among them. A re-read
// within a round keeps the round's position (the next probe goes to the first peer at or after the one that
// was next), so peers late in the order are not starved by frequent changes.
func (p *Prober) newRoundLocked(targets []Target, now time.Time) {
	targets = slices.Clone(targets)
	slices.SortFunc(targets, func(a, b Target) int { return comparePrefix(a.Peer, b.Peer) })
	next := 0
	if p.next < len(p.round) {
		was := p.round[p.next].Peer
		next, _ = slices.BinarySearchFunc(targets, was, func(t Target, w netip.Prefix) int { return comparePrefix(t.Peer, w) })
	}
	if next >= len(targets) {
		next = 0
	}
	p.next = next
	p.round, p.roundAt = targets, now
	keep := make(map[netip.Prefix]bool, len(targets))
	for _, tg := range targets {
		keep[tg.Peer] = true
		st := p.peers[tg.Peer]
		if st == nil || st.Addr != tg.Addr {
			p.peers[tg.Peer] = &peer{PeerState: PeerState{Peer: tg.Peer, Addr: tg.Addr, Counts: make([]uint64, len(Buckets))}}
		}
	}
	for k := range p.peers {
		if !keep[k] {
			delete(p.peers, k)
		}
	}
}

func (p *Prober) expireLocked(now time.Time) {
	for seq, pr := range p.outstanding {
		if now.Sub(pr.sent) >= p.cfg.Timeout {
			delete(p.outstanding, seq)
			p.resultLocked(pr, false, 0, now)
		}
	}
}

// resultLocked records the result of probe pr. A result older than the one the peer's state already
// shows (a reply that overtook a timeout, say) only counts.
func (p *Prober) resultLocked(pr probe, ok bool, rtt time.Duration, now time.Time) {
	st := p.peers[pr.peer]
	if st == nil || st.Addr != pr.addr {
		return // the peer left, or changed address, since
	}
	if !ok {
		st.Lost++
	} else {
		st.RTTCount++
		st.RTTSum += rtt.Seconds()
		if i, _ := slices.BinarySearch(Buckets, rtt.Seconds()); i < len(Buckets) {
			st.Counts[i]++
		}
	}
	if pr.sent.Before(st.resultAt) {
		return
	}
	st.resultAt = pr.sent
	state := Unreachable
	if ok {
		state, st.LastRTT = Reachable, rtt
	}
	if state != st.State {
		if st.State != Unknown || state == Unreachable {
			p.log.Info("peer reachability changed", "peer", st.Peer, "addr", st.Addr, "from", st.State, "to", state)
		}
		st.State, st.Since = state, now
	}
}

func (p *Prober) routineReceive() {
	p.log.Debug("probe receiver started")
	defer p.log.Debug("probe receiver stopped")
	for {
		src, seq, err := p.conn.ReadEcho()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.log.Warn("read probe replies", "err", err)
			select {
			case <-p.stop:
				return
			case <-time.After(100 * time.Millisecond): // a persistent error cannot spin a CPU
			}
			continue
		}
		now := time.Now()
		p.mu.Lock()
		if pr, ok := p.outstanding[seq]; ok && pr.addr == src {
			delete(p.outstanding, seq)
			p.resultLocked(pr, true, now.Sub(pr.sent), now)
		}
		p.mu.Unlock()
	}
}

package probe

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeConn answers echo requests to the addresses marked up, after delay.
type fakeConn struct {
	mu      sync.Mutex
	up      map[netip.Addr]bool
	unsent  map[netip.Addr]bool // WriteEcho fails (no route)
	delay   time.Duration
	sent    map[netip.Addr]int
	replies chan reply
	done    chan struct{}
	once    sync.Once
}

type reply struct {
	src netip.Addr
	seq uint16
}

func newFakeConn() *fakeConn {
	return &fakeConn{up: map[netip.Addr]bool{}, unsent: map[netip.Addr]bool{}, sent: map[netip.Addr]int{},
		replies: make(chan reply, 10000), done: make(chan struct{})}
}

func (c *fakeConn) set(a netip.Addr, up bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.up[a] = up
}

func (c *fakeConn) WriteEcho(dst netip.Addr, seq uint16) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sent[dst]++
	if c.unsent[dst] {
		return fmt.Errorf("send to %s: no route", dst)
	}
	if c.up[dst] {
		r := reply{dst, seq}
		if c.delay == 0 {
			c.replies <- r
		} else {
			time.AfterFunc(c.delay, func() {
				select {
				case c.replies <- r:
				case <-c.done:
				}
			})
		}
	}
	return nil
}

func (c *fakeConn) ReadEcho() (netip.Addr, uint16, error) {
	select {
	case r := <-c.replies:
		return r.src, r.seq, nil
	case <-c.done:
		return netip.Addr{}, 0, fmt.Errorf("read: %w", net.ErrClosed)
	}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *fakeConn) sentTo(a netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[a]
}

// targets returns n peers 10.(i/256).(i%256).0/24 probed at their .0 address.
func targets(n int) []Target {
	out := make([]Target, n)
	for i := range out {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 0}), 24)
		out[i] = Target{Peer: p, Addr: p.Addr()}
	}
	return out
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func start(t *testing.T, cfg Config, c Conn) *Prober {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	p, err := New(cfg, c)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	t.Cleanup(func() { p.Close() })
	return p
}

// TestFixedBudget: the number of probes sent per second is the configured rate, whether there are 3 peers
// or 2000; with few peers each is probed often, with many each rarely.
func TestFixedBudget(t *testing.T) {
	const rate, window = 100.0, 1500 * time.Millisecond
	var perPeer3 int
	for _, n := range []int{3, 2000} {
		t.Run(fmt.Sprint(n, " peers"), func(t *testing.T) {
			c := newFakeConn()
			tg := targets(n)
			for _, x := range tg {
				c.set(x.Addr, true)
			}
			p := start(t, Config{Rate: rate, Targets: func() []Target { return tg }}, c)
			time.Sleep(window)
			p.Close()
			sent := p.Sent()
			want := rate * window.Seconds()
			// Never more than the budget; less only when the machine is too busy to tick in time.
			if float64(sent) > want+2 || float64(sent) < 0.3*want {
				t.Errorf("%d peers: %d probes sent in %s, want about %.0f (%.0f/s) whatever the number of peers", n, sent, window, want, rate)
			}
			if n == 3 {
				perPeer3 = c.sentTo(tg[0].Addr)
				if perPeer3 < int(0.3*want/3) || perPeer3 > int(want/3)+2 {
					t.Errorf("3 peers: the first got %d probes, want about %.0f (round-robin)", perPeer3, want/3)
				}
			} else if got := c.sentTo(tg[0].Addr); got > 1 {
				t.Errorf("%d peers: the first got %d probes in %s, want at most 1 (a round takes %.0f s)", n, got, window, float64(n)/rate)
			}
		})
	}
}

// TestReachability: a peer that answers is reachable with its RTT in the histogram; one that stops
// answering becomes unreachable within a round plus the timeout, and reachable again once it answers; a
// probe that cannot be sent counts as lost at once; a peer that leaves is forgotten.
func TestReachability(t *testing.T) {
	c := newFakeConn()
	c.delay = 2 * time.Millisecond
	tg := targets(3)
	var mu sync.Mutex
	cur := tg
	for _, x := range tg {
		c.set(x.Addr, true)
	}
	c.unsent[tg[2].Addr] = true
	p := start(t, Config{Rate: 200, Timeout: 100 * time.Millisecond, Targets: func() []Target {
		mu.Lock()
		defer mu.Unlock()
		return cur
	}}, c)
	state := func(i int) PeerState {
		for _, s := range p.Peers() {
			if s.Peer == tg[i].Peer {
				return s
			}
		}
		return PeerState{}
	}
	waitState := func(i int, want State) PeerState {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			s := state(i)
			if s.State == want {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("peer %s: state %s, want %s", tg[i].Peer, s.State, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	s := waitState(0, Reachable)
	if s.LastRTT < c.delay || s.RTTCount == 0 || s.RTTSum <= 0 {
		t.Errorf("reachable peer: %+v, want an RTT of at least %s counted", s, c.delay)
	}
	var inBuckets uint64
	for _, n := range s.Counts {
		inBuckets += n
	}
	if inBuckets != s.RTTCount {
		t.Errorf("RTT histogram: %d in buckets, %d replies; want all 2 ms replies in a bucket", inBuckets, s.RTTCount)
	}
	waitState(2, Unreachable) // cannot be sent

	c.set(tg[1].Addr, false)
	start := time.Now()
	waitState(1, Unreachable)
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("peer became unreachable after %s, want within a round (15 ms) plus the timeout (100 ms)", d)
	}
	if s := state(1); s.Lost == 0 {
		t.Errorf("unreachable peer has no lost probes: %+v", s)
	}
	c.set(tg[1].Addr, true)
	waitState(1, Reachable)

	mu.Lock()
	cur = tg[:1]
	mu.Unlock()
	deadline := time.Now().Add(2 * time.Second)
	for len(p.Peers()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("peers after two left: %v, want only %s", p.Peers(), tg[0].Peer)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRoundKeepsPosition: frequent changes of the peer set do not restart the round at the first peer, so
// the last peers are probed too.
func TestRoundKeepsPosition(t *testing.T) {
	p, err := New(Config{Rate: 1, Targets: func() []Target { return nil }, Log: slog.New(slog.DiscardHandler)}, newFakeConn())
	if err != nil {
		t.Fatal(err)
	}
	tg := targets(10)
	now := time.Now()
	p.newRoundLocked(tg, now)
	p.next = 7
	p.newRoundLocked(append(targets(10), targets(12)[11]), now) // one peer more, at the end
	if p.next != 7 {
		t.Errorf("after a peer joined: next = %d, want 7 (the same peer)", p.next)
	}
	p.newRoundLocked(append(tg[:2:2], tg[3:]...), now) // peer 2 left: peer 7 is now at 6
	if p.next != 6 || p.round[p.next].Peer != tg[7].Peer {
		t.Errorf("after a peer left: next = %d, want 6 (peer %s)", p.next, tg[7].Peer)
	}
	p.next = 8
	p.newRoundLocked(tg[:5], now) // the next peer and all after it left: start over
	if p.next != 0 {
		t.Errorf("after the rest left: next = %d, want 0", p.next)
	}
}

func TestConfig(t *testing.T) {
	ok := func() []Target { return nil }
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"zero rate", Config{Targets: ok, Log: log}},
		{"rate too high", Config{Rate: MaxRate + 1, Targets: ok, Log: log}},
		{"negative timeout", Config{Rate: 1, Timeout: -time.Second, Targets: ok, Log: log}},
		{"no targets", Config{Rate: 1, Log: log}},
	} {
		if _, err := New(tc.cfg, newFakeConn()); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.cfg)
		}
	}
}

func TestEchoMessages(t *testing.T) {
	req := marshalEcho(0x1234, 7)
	if checksum(req) != 0 {
		t.Fatalf("request %x: checksum does not verify", req)
	}
	// The kernel's reply: type 0, the checksum adjusted.
	rep := append([]byte(nil), req...)
	rep[0], rep[2], rep[3] = icmpEchoReply, 0, 0
	c := checksum(rep)
	rep[2], rep[3] = byte(c>>8), byte(c)
	if seq, err := parseEchoReply(rep, 0x1234); err != nil || seq != 7 {
		t.Errorf("reply: seq %d, %v; want 7", seq, err)
	}
	for name, b := range map[string][]byte{
		"other id":   marshalEchoReply(0x1235, 7, false),
		"request":    req,
		"short":      rep[:10],
		"no magic":   marshalEchoReply(0x1234, 7, true),
		"bad chksum": append(append([]byte(nil), rep[:15]...), rep[15]^1),
	} {
		if _, err := parseEchoReply(b, 0x1234); err == nil {
			t.Errorf("%s: %x taken for our reply", name, b)
		}
	}
}

func marshalEchoReply(id, seq uint16, noMagic bool) []byte {
	b := marshalEcho(id, seq)
	b[0], b[2], b[3] = icmpEchoReply, 0, 0
	if noMagic {
		b[8] = 'x'
	}
	c := checksum(b)
	b[2], b[3] = byte(c>>8), byte(c)
	return b
}

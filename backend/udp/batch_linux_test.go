package udp

import (
	"net/netip"
	"os"
	"testing"

	wgtun "golang.zx2c4.com/wireguard/tun"
)

// The per-batch work of the packet loops, without the syscalls: encapsulation (route lookup and building the
// sendmmsg messages for a super-packet's worth of packets) and decapsulation (splitting a GRO run, checking
// every inner packet, copying it into the TUN write batch). wireguard-go's GSO split and TCP coalescing run
// inside the TUN Read and Write and are not included.

// superPacket is a batch of 1472-byte packets that fills one UDP_SEGMENT send (44 × 1472 ≤ 65507 bytes); a
// 64 KB TSO super-packet at this MTU holds about as many.
const superPacket = 44

// nullTUN is a TUN device that accepts every write and is never read.
type nullTUN struct{ writes int }

func (d *nullTUN) File() *os.File                         { return nil }
func (d *nullTUN) Read([][]byte, []int, int) (int, error) { return 0, os.ErrClosed }
func (d *nullTUN) Write(bufs [][]byte, _ int) (int, error) {
	d.writes += len(bufs)
	return len(bufs), nil
}
func (d *nullTUN) MTU() (int, error)          { return 1472, nil }
func (d *nullTUN) Name() (string, error)      { return TUNName, nil }
func (d *nullTUN) Events() <-chan wgtun.Event { return nil }
func (d *nullTUN) Close() error               { return nil }
func (d *nullTUN) BatchSize() int             { return 128 }

// encapFixture is a batch of superPacket 1472-byte TCP packets to a peer and a sender for them.
func encapFixture(tb testing.TB) (*table, [][]byte, *sender) {
	t := testTable(tb)
	pkts := make([][]byte, superPacket)
	for i := range pkts {
		pkts[i] = pkt("10.5.1.2", "10.5.33.2", 6, 20, make([]byte, 1452)...)
	}
	s := &sock{}
	s.gso.Store(true)
	return t, pkts, newSender(s, txBatch(1472))
}

func encap(tb testing.TB, t *table, pkts [][]byte, sd *sender) {
	for _, p := range pkts {
		peer, h, r := t.routeTx(p)
		if r != reasonOK {
			tb.Fatalf("routeTx: %v", r)
		}
		sd.add(peer.outer, p[:h.totalLen])
	}
	if msgs := sd.prepare(); len(msgs) != 1 {
		tb.Fatalf("%d messages for one peer's run of equal packets, want 1 (GSO)", len(msgs))
	}
	sd.reset()
}

// decapFixture is a GRO run of superPacket 1472-byte TCP packets from a peer, and a TUN writer.
func decapFixture(tb testing.TB) (*table, []byte, netip.Addr, *tunWriter, *nullTUN) {
	t := testTable(tb)
	var run []byte
	for range superPacket {
		run = append(run, pkt("10.5.2.2", "10.5.1.2", 6, 20, make([]byte, 1452)...)...)
	}
	dev := &nullTUN{}
	dp := &datapath{}
	dp.tunGRO.Store(true)
	return t, run, netip.MustParseAddr("192.0.2.12"), newTUNWriter(&Backend{}, dp, dev, &counters{}), dev
}

func TestBatchAllocs(t *testing.T) {
	tb, pkts, sd := encapFixture(t)
	if a := testing.AllocsPerRun(100, func() { encap(t, tb, pkts, sd) }); a != 0 {
		t.Errorf("encapsulation: %v allocations per batch, want 0", a)
	}
	tr, run, from, w, dev := decapFixture(t)
	var c counters
	if a := testing.AllocsPerRun(100, func() {
		deliver(tr, &c, w, run, from, 1472)
		w.flush()
	}); a != 0 {
		t.Errorf("decapsulation: %v allocations per batch, want 0", a)
	}
	if got := c.get(rxPackets); got != 101*superPacket || dev.writes != 101*superPacket {
		t.Errorf("delivered %d packets, wrote %d, want %d", got, dev.writes, 101*superPacket)
	}
}

// BenchmarkEncap reports the user-space cost per packet of sending a super-packet's worth of packets.
func BenchmarkEncap(b *testing.B) {
	tb, pkts, sd := encapFixture(b)
	b.ReportAllocs()
	for b.Loop() {
		encap(b, tb, pkts, sd)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*superPacket), "ns/pkt")
}

// BenchmarkDecap reports the user-space cost per packet of a received GRO run.
func BenchmarkDecap(b *testing.B) {
	tb, run, from, w, _ := decapFixture(b)
	var c counters
	b.ReportAllocs()
	for b.Loop() {
		deliver(tb, &c, w, run, from, 1472)
		w.flush()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*superPacket), "ns/pkt")
}

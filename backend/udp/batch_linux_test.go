package udp

import (
	"net/netip"
	"slices"
	"testing"
)

// The per-batch work of the packet loops, without the syscalls: encapsulation (route lookup and building the
// sendmmsg messages for a super-packet's worth of packets) and decapsulation (splitting a GRO run, checking
// every inner packet, coalescing the run into a super-packet for the TUN). wireguard-go's GSO split runs
// inside the TUN Read and is not included.

// superPacket is a batch of 1472-byte packets that fills one UDP_SEGMENT send (44 × 1472 ≤ 65507 bytes); a
// 64 KB TSO super-packet at this MTU holds about as many.
const superPacket = 44

// nullTUN is a TUN queue that accepts every write.
type nullTUN struct{ writes int }

func (d *nullTUN) writev([][]byte) error { d.writes++; return nil }

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
	for i := range superPacket {
		run = append(run, tcpSeg(uint32(i*1400), tcpFlagACK, 1400, nil)...) // 1452 bytes each
	}
	dev := &nullTUN{}
	dp := &datapath{off: offTUN | offTUNGRO}
	dp.tunGRO.Store(true)
	return t, run, netip.MustParseAddr("192.0.2.12"), newTUNWriter(&Backend{}, dp, dev, &counters{}), dev
}

func TestBatchAllocs(t *testing.T) {
	tb, pkts, sd := encapFixture(t)
	if a := testing.AllocsPerRun(100, func() { encap(t, tb, pkts, sd) }); a != 0 {
		t.Errorf("encapsulation: %v allocations per batch, want 0", a)
	}
	tr, run, from, w, dev := decapFixture(t)
	hdr := slices.Clone(run[:52])
	var c counters
	if a := testing.AllocsPerRun(100, func() {
		deliver(tr, &c, w, run, from, 1452)
		w.flush()
		copy(run, hdr) // coalescing rewrote the first segment's headers in the receive buffer
	}); a != 0 {
		t.Errorf("decapsulation: %v allocations per batch, want 0", a)
	}
	if got := c.get(rxPackets); got != 101*superPacket || dev.writes != 101 {
		t.Errorf("delivered %d packets in %d writes, want %d in %d (one super-packet per run)", got, dev.writes, 101*superPacket, 101)
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
	hdr := slices.Clone(run[:52])
	var c counters
	b.ReportAllocs()
	for b.Loop() {
		deliver(tb, &c, w, run, from, 1452)
		w.flush()
		copy(run, hdr) // coalescing rewrote the first segment's headers in the receive buffer
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*superPacket), "ns/pkt")
}

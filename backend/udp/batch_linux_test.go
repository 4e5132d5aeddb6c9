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

// decapRun is one receive slot: a GRO run of datagrams of seg bytes each.
type decapRun struct {
	data []byte
	seg  int
	hdr  []byte // the first segment's headers, which coalescing rewrites in the receive buffer
}

// segBuilder builds a TCP segment: tcpSeg (IPv4) or tcpSeg6.
type segBuilder func(seq uint32, flags byte, n int, mod func(p []byte)) []byte

// decapFixture is, per builder, a GRO run of superPacket TCP segments of 1400 bytes of payload from a peer
// (in one batch, as recvmmsg returns several slots), and a TUN writer.
func decapFixture(tb testing.TB, seg ...segBuilder) (*table, []decapRun, netip.Addr, *tunWriter, *nullTUN) {
	t := testTable6(tb)
	var runs []decapRun
	for _, b := range seg {
		var r decapRun
		for i := range superPacket {
			p := b(uint32(i*1400), tcpFlagACK, 1400, nil)
			r.data, r.seg = append(r.data, p...), len(p)
		}
		r.hdr = slices.Clone(r.data[:r.seg-1400])
		runs = append(runs, r)
	}
	dev := &nullTUN{}
	dp := &datapath{off: offTUN | offTUNGRO}
	dp.tunGRO.Store(true)
	return t, runs, netip.MustParseAddr("192.0.2.12"), newTUNWriter(&Backend{}, dp, dev, &counters{}), dev
}

// decap delivers the runs as one batch and puts back the headers coalescing rewrote.
func decap(t *table, c *counters, w *tunWriter, runs []decapRun, from netip.Addr) {
	for _, r := range runs {
		deliver(t, c, w, r.data, from, r.seg)
	}
	w.flush()
	for _, r := range runs {
		copy(r.data, r.hdr)
	}
}

var decapFamilies = []struct {
	name string
	seg  []segBuilder
}{
	{"IPv4", []segBuilder{tcpSeg}},
	{"IPv6", []segBuilder{tcpSeg6}},
	{"IPv4+IPv6", []segBuilder{tcpSeg, tcpSeg6}},
}

func TestBatchAllocs(t *testing.T) {
	tb, pkts, sd := encapFixture(t)
	if a := testing.AllocsPerRun(100, func() { encap(t, tb, pkts, sd) }); a != 0 {
		t.Errorf("encapsulation: %v allocations per batch, want 0", a)
	}
	for _, fam := range decapFamilies {
		tr, runs, from, w, dev := decapFixture(t, fam.seg...)
		var c counters
		if a := testing.AllocsPerRun(100, func() { decap(tr, &c, w, runs, from) }); a != 0 {
			t.Errorf("decapsulation %s: %v allocations per batch, want 0", fam.name, a)
		}
		n := 101 * len(runs) // AllocsPerRun runs once more to warm up
		if got := c.get(rxPackets); got != uint64(n*superPacket) || dev.writes != n || w.c.get(tunSuperPackets) != uint64(n) {
			t.Errorf("decapsulation %s: delivered %d packets in %d writes (%d super-packets), want %d in %d (one super-packet per run)",
				fam.name, got, dev.writes, w.c.get(tunSuperPackets), n*superPacket, n)
		}
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

// BenchmarkDecap reports the user-space cost per packet of a received GRO run, per inner family.
func BenchmarkDecap(b *testing.B) {
	for _, fam := range decapFamilies[:2] {
		b.Run(fam.name, func(b *testing.B) {
			tb, runs, from, w, _ := decapFixture(b, fam.seg...)
			var c counters
			b.ReportAllocs()
			for b.Loop() {
				decap(tb, &c, w, runs, from)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*superPacket), "ns/pkt")
		})
	}
}

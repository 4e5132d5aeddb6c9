package udp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// tcpSeg builds an IPv4 TCP segment from 10.5.2.2:40000 to 10.5.1.2:5201 with the given sequence number,
// flags and payload length (payload bytes derived from seq), valid IPv4 and TCP checksums, and the timestamp
// option that Linux sends. mod, when set, changes the packet before the checksums are computed.
func tcpSeg(seq uint32, flags byte, n int, mod func(p []byte)) []byte {
	p := make([]byte, 20+32+n)
	p[0], p[8], p[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], 0x4000) // DF
	copy(p[12:], []byte{10, 5, 2, 2, 10, 5, 1, 2})
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	binary.BigEndian.PutUint32(tcp[8:], 777)  // ACK number
	tcp[12], tcp[13] = 8<<4, flags            // 32-byte header
	binary.BigEndian.PutUint16(tcp[14:], 502) // window
	copy(tcp[20:], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	for i := range n {
		tcp[32+i] = byte(seq + uint32(i))
	}
	if mod != nil {
		mod(p)
	}
	fixChecksums(p)
	return p
}

// tcpSeg6 is tcpSeg over IPv6: from [fd00:5:0:2::2]:40000 to [fd00:5:0:1::2]:5201, traffic class 0, flow
// label 0x12345, hop limit 64. mod changes offsets as in tcpSeg, 20 bytes further on (the IPv6 header is 40).
func tcpSeg6(seq uint32, flags byte, n int, mod func(p []byte)) []byte {
	v4 := tcpSeg(seq, flags, n, nil)
	p := make([]byte, 40+len(v4)-20)
	p[0], p[1], p[2], p[3] = 0x60, 0x01, 0x23, 0x45
	binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
	p[6], p[7] = 6, 64
	copy(p[8:], []byte{0xfd, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2})
	copy(p[24:], []byte{0xfd, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2})
	copy(p[40:], v4[20:])
	if mod != nil {
		mod(p)
	}
	fixChecksums(p)
	return p
}

// ipLen is the header length of p, an IPv4 packet without options or an IPv6 one without extension headers.
func ipLen(p []byte) int {
	if p[0]>>4 == 6 {
		return 40
	}
	return 20
}

func fixChecksums(p []byte) {
	h := ipLen(p)
	if h == 20 {
		p[10], p[11] = 0, 0
		binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	}
	p[h+16], p[h+17] = 0, 0
	binary.BigEndian.PutUint16(p[h+16:], tcpChecksum(p))
}

// tcpChecksum is the TCP checksum of packet p (its checksum field counted as it is).
func tcpChecksum(p []byte) uint16 {
	h := ipLen(p)
	ps := pseudoSum(p, len(p)-h)
	b := append([]byte{byte(ps >> 8), byte(ps)}, p[h:]...)
	return checksum(b)
}

// fakeTUN records the packets written into it, each as the concatenation of its pieces.
type fakeTUN struct {
	writes  [][]byte
	pieces  []int
	refuse  func(pieces [][]byte) error // nil: accept every write
	refused int
}

func (f *fakeTUN) writev(pieces [][]byte) error {
	if f.refuse != nil {
		if err := f.refuse(pieces); err != nil {
			f.refused++
			return err
		}
	}
	f.writes = append(f.writes, bytes.Join(pieces, nil))
	f.pieces = append(f.pieces, len(pieces))
	return nil
}

func testWriter(out packetWriter) (*tunWriter, *datapath) {
	dp := &datapath{off: offTUN | offTUNGRO}
	dp.tunGRO.Store(true)
	b := &Backend{log: slog.New(slog.NewTextHandler(io.Discard, nil)), kick: func() {}}
	return newTUNWriter(b, dp, out, &counters{}), dp
}

// checkSuper checks that w (a write: virtio header and packet) is a valid TCPv4 or TCPv6 GSO super-packet of
// the segments segs and reports what is wrong.
func checkSuper(t *testing.T, w []byte, segs [][]byte) {
	t.Helper()
	h, p := w[:vnetHdrLen], w[vnetHdrLen:]
	first := segs[0]
	ip, gsoType, lenField := 20, byte(virtioNetHdrGSOTCPv4), "IPv4 total length"
	if first[0]>>4 == 6 {
		ip, gsoType, lenField = 40, virtioNetHdrGSOTCPv6, "IPv6 payload length"
	}
	hl := ip + 32 // TCP header with the timestamp option
	var payload []byte
	for _, s := range segs {
		payload = append(payload, s[hl:]...)
	}
	if h[0] != virtioNetHdrFNeedsCsum || h[1] != gsoType || int(binary.NativeEndian.Uint16(h[2:])) != hl ||
		int(binary.NativeEndian.Uint16(h[4:])) != len(first)-hl || int(binary.NativeEndian.Uint16(h[6:])) != ip || binary.NativeEndian.Uint16(h[8:]) != 16 {
		t.Errorf("virtio header % x: want NEEDS_CSUM, GSO type %d, hdr_len %d, gso_size %d, csum %d+16", h, gsoType, hl, len(first)-hl, ip)
	}
	lenOff, lenWant := 2, len(p)
	if ip == 40 {
		lenOff, lenWant = 4, len(p)-40
	}
	if len(p) != hl+len(payload) || int(binary.BigEndian.Uint16(p[lenOff:])) != lenWant {
		t.Fatalf("super-packet of %d bytes, %s %d; want %d bytes", len(p), lenField, binary.BigEndian.Uint16(p[lenOff:]), hl+len(payload))
	}
	if ip == 20 && checksum(p[:20]) != 0 {
		t.Errorf("IPv4 header checksum invalid")
	}
	if got, want := binary.BigEndian.Uint16(p[ip+16:]), pseudoSum(p, len(p)-ip); got != want {
		t.Errorf("TCP checksum field %#x, want the pseudo-header sum %#x", got, want)
	}
	// What the kernel does with a partial checksum: sum from csum_start, starting from the field's value.
	full := slices.Clone(p)
	binary.BigEndian.PutUint16(full[ip+16:], checksum(full[ip:]))
	if !validTCP(full) {
		t.Errorf("completed TCP checksum invalid")
	}
	if !bytes.Equal(p[hl:], payload) {
		t.Errorf("payload differs from the segments' payloads")
	}
	same := [][2]int{{12, 20}, {ip, ip + 13}, {ip + 14, ip + 16}, {ip + 18, hl}} // IPv4: addresses; TCP but flags, checksum
	if ip == 40 {
		same[0] = [2]int{0, 4} // version, traffic class, flow label
		same = append(same, [2]int{6, 40})
	}
	for _, r := range same {
		if !bytes.Equal(p[r[0]:r[1]], first[r[0]:r[1]]) {
			t.Errorf("header bytes %d to %d differ from the first segment's", r[0], r[1])
		}
	}
	wantPSH := segs[len(segs)-1][ip+13]&tcpFlagPSH != 0
	if (p[ip+13]&tcpFlagPSH != 0) != wantPSH {
		t.Errorf("PSH %v, want %v (the last segment's)", p[ip+13]&tcpFlagPSH != 0, wantPSH)
	}
}

// validTCP reports whether packet p's TCP checksum verifies.
func validTCP(p []byte) bool { return tcpChecksum(p) == 0 }

// coalesceCase is a batch of packets and what the TUN writer makes of it.
type coalesceCase struct {
	name string
	in   [][]byte
	want []int // per write: the number of input packets it carries, in order
}

// coalesceCases are the cases alike for both families: seg builds the family's segments, whose TCP header
// starts at tcp; udp is an inner UDP packet of the family.
func coalesceCases(fam string, seg segBuilder, tcp int, udp []byte) []coalesceCase {
	const mss = 1400
	run := func(n int) [][]byte { // n consecutive full segments
		var s [][]byte
		for i := range n {
			s = append(s, seg(uint32(1000+i*mss), tcpFlagACK, mss, nil))
		}
		return s
	}
	next := uint32(1000 + 3*mss)
	hl := tcp + 32
	cases := []coalesceCase{
		{"one run", run(44), []int{44}},
		{"single segment", run(1), []int{1}},
		{"last shorter, then nothing joins", append(run(3), seg(next, tcpFlagACK, 100, nil), seg(next+100, tcpFlagACK, mss, nil)), []int{4, 1}},
		{"PSH ends the group", append(run(2), seg(1000+2*mss, tcpFlagACK|tcpFlagPSH, mss, nil), seg(next, tcpFlagACK, mss, nil)), []int{3, 1}},
		{"gap in sequence", append(run(3), seg(next+1, tcpFlagACK, mss, nil)), []int{3, 1}},
		{"larger segment", append(run(3), seg(next, tcpFlagACK, mss+1, nil)), []int{3, 1}},
		{"other port", append(run(3), seg(next, tcpFlagACK, mss, func(p []byte) { p[tcp+1]++ })), []int{3, 1}},
		{"other ACK number", append(run(3), seg(next, tcpFlagACK, mss, func(p []byte) { p[tcp+11]++ })), []int{3, 1}},
		{"other window", append(run(3), seg(next, tcpFlagACK, mss, func(p []byte) { p[tcp+15]++ })), []int{3, 1}},
		{"other options", append(run(3), seg(next, tcpFlagACK, mss, func(p []byte) { p[hl-1]++ })), []int{3, 1}},
		{"UDP between keeps the order", append(append(run(2), udp), seg(1000+2*mss, tcpFlagACK, mss, nil)), []int{2, 1, 1}},
		{"FIN not coalesced", append(run(2), seg(1000+2*mss, tcpFlagACK|0x01, mss, nil)), []int{2, 1}},
		{"pure ACKs alone", [][]byte{seg(1, tcpFlagACK, 0, nil), seg(1, tcpFlagACK, 0, nil)}, []int{1, 1}},
		{"at most 64 KB", run(70), []int{46, 24}}, // 52 (IPv6: 72) + 46 × 1400 ≤ 65535
		{"small segments: at most 64", func() [][]byte {
			var s [][]byte
			for i := range 70 {
				s = append(s, seg(uint32(i*100), tcpFlagACK, 100, nil))
			}
			return s
		}(), []int{64, 6}},
	}
	for i := range cases {
		cases[i].name = fam + ": " + cases[i].name
	}
	return cases
}

func TestCoalesce(t *testing.T) {
	const mss = 1400
	run := func(seg segBuilder, n int) [][]byte {
		var s [][]byte
		for i := range n {
			s = append(s, seg(uint32(1000+i*mss), tcpFlagACK, mss, nil))
		}
		return s
	}
	next := uint32(1000 + 3*mss)
	cases := append(coalesceCases("IPv4", tcpSeg, 20, pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...)),
		coalesceCases("IPv6", tcpSeg6, 40, pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udpPayload...))...)
	more := func(seg segBuilder, mod func(p []byte)) [][]byte {
		return append(run(seg, 3), seg(next, tcpFlagACK, mss, mod))
	}
	cases = append(cases, []coalesceCase{
		{"IPv4: other source", more(tcpSeg, func(p []byte) { p[15]++ }), []int{3, 1}},
		{"IPv4: other TOS", more(tcpSeg, func(p []byte) { p[1] = 2 }), []int{3, 1}},
		{"IPv4: other TTL", more(tcpSeg, func(p []byte) { p[8] = 63 }), []int{3, 1}},
		{"IPv4: fragment alone", more(tcpSeg, func(p []byte) { p[6] |= 0x20 }), []int{3, 1}},
		{"IPv4: bad header checksum alone", [][]byte{run(tcpSeg, 1)[0], func() []byte { p := run(tcpSeg, 2)[1]; p[10]++; return p }()}, []int{1, 1}},

		{"IPv6: other source", more(tcpSeg6, func(p []byte) { p[23]++ }), []int{3, 1}},
		{"IPv6: other destination", more(tcpSeg6, func(p []byte) { p[39]++ }), []int{3, 1}},
		{"IPv6: other traffic class", more(tcpSeg6, func(p []byte) { p[1] |= 0x80 }), []int{3, 1}},
		{"IPv6: other flow label", more(tcpSeg6, func(p []byte) { p[3]++ }), []int{3, 1}},
		{"IPv6: other hop limit", more(tcpSeg6, func(p []byte) { p[7] = 63 }), []int{3, 1}},
		{"IPv6: extension header alone", more(tcpSeg6, func(p []byte) { p[6] = 60 }), []int{3, 1}},

		// Both families in one batch: a segment of the other family never joins, even with the next
		// sequence number and the same ports.
		{"IPv4 then IPv6 then IPv4", append(append(run(tcpSeg, 3), run(tcpSeg6, 3)...), run(tcpSeg, 4)[3]), []int{3, 3, 1}},
		{"IPv6 then IPv4", append(run(tcpSeg6, 2), run(tcpSeg, 4)[2:]...), []int{2, 2}},
		{"interleaved families: nothing joins", [][]byte{run(tcpSeg, 1)[0], run(tcpSeg6, 1)[0], run(tcpSeg, 2)[1], run(tcpSeg6, 2)[1]}, []int{1, 1, 1, 1}},
	}...)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTUN{}
			w, _ := testWriter(f)
			orig := make([][]byte, len(tc.in))
			for i, p := range tc.in {
				orig[i] = slices.Clone(p)
				w.add(p)
			}
			w.flush()
			var got []int
			k := 0
			for i, wr := range f.writes {
				n := 1
				if wr[1] != 0 { // a GSO type: a super-packet
					n = f.pieces[i] - 1
					if k+n <= len(orig) {
						checkSuper(t, wr, orig[k:k+n])
					}
				} else if k < len(orig) && (!bytes.Equal(wr[:vnetHdrLen], make([]byte, vnetHdrLen)) || !bytes.Equal(wr[vnetHdrLen:], orig[k])) {
					t.Errorf("write %d: a plain packet differs from input %d", i, k)
				}
				got = append(got, n)
				k += n
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("writes carry %v packets, want %v", got, tc.want)
			}
		})
	}
}

// A kernel that refuses coalesced writes: the group is written again one segment at a time, byte for byte
// as received, and coalescing stays off. For either family.
func TestCoalesceFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		seg  func(seq uint32, flags byte, n int, mod func(p []byte)) []byte
	}{{"IPv4", tcpSeg}, {"IPv6", tcpSeg6}} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTUN{refuse: func(p [][]byte) error {
				if p[0][1] != 0 {
					return unix.EINVAL
				}
				return nil
			}}
			w, dp := testWriter(f)
			var in, orig [][]byte
			for i := range 5 {
				p := tc.seg(uint32(i*1000), tcpFlagACK, 1000, nil)
				in, orig = append(in, p), append(orig, slices.Clone(p))
			}
			for _, p := range in[:3] {
				w.add(p)
			}
			w.flush()
			for _, p := range in[3:] {
				w.add(p)
			}
			w.flush()
			if f.refused != 1 || dp.tunGRO.Load() || w.b.ctl.get(tunGROFallbacks) != 1 {
				t.Errorf("refused %d, coalescing on %v, fallbacks %d; want 1, false, 1", f.refused, dp.tunGRO.Load(), w.b.ctl.get(tunGROFallbacks))
			}
			if n := w.c.get(tunSuperPackets); n != 0 {
				t.Errorf("tun_super_packets %d after a refused coalesced write, want 0", n)
			}
			if len(f.writes) != 5 {
				t.Fatalf("%d writes, want 5 single packets", len(f.writes))
			}
			for i, wr := range f.writes {
				if !bytes.Equal(wr[vnetHdrLen:], orig[i]) {
					t.Errorf("write %d differs from segment %d as received", i, i)
				}
			}
		})
	}
}

// The super-packet counters count written super-packets, their segments and the IPv6 ones.
func TestCoalesceCounters(t *testing.T) {
	f := &fakeTUN{}
	w, _ := testWriter(f)
	for _, p := range [][]byte{
		tcpSeg(0, tcpFlagACK, 1000, nil), tcpSeg(1000, tcpFlagACK, 1000, nil), tcpSeg(2000, tcpFlagACK, 1000, nil), // 3
		tcpSeg6(0, tcpFlagACK, 1000, nil), tcpSeg6(1000, tcpFlagACK, 1000, nil), // 2
		tcpSeg6(5000, tcpFlagACK, 1000, nil), // alone: a plain write
	} {
		w.add(p)
	}
	w.flush()
	got := [3]uint64{w.c.get(tunSuperPackets), w.c.get(tunSuperPackets6), w.c.get(tunSuperSegments)}
	if want := [3]uint64{2, 1, 5}; got != want || len(f.writes) != 3 {
		t.Errorf("%d writes; super-packets, IPv6 ones, segments %v; want 3 writes, %v", len(f.writes), got, want)
	}
}

// A closed TUN is reported once, whatever the write.
func TestCoalesceTUNGone(t *testing.T) {
	f := &fakeTUN{refuse: func([][]byte) error { return errors.Join(unix.EBADFD) }}
	w, dp := testWriter(f)
	kicks := 0
	w.b.kick = func() { kicks++ }
	w.add(tcpSeg(0, tcpFlagACK, 1000, nil))
	w.add(tcpSeg(1000, tcpFlagACK, 1000, nil))
	w.flush()
	w.add(pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...))
	if kicks != 1 || !dp.lost.Load() || w.c.get(tunWriteErrors) != 2 {
		t.Errorf("kicks %d, lost %v, write errors %d; want 1, true, 2", kicks, dp.lost.Load(), w.c.get(tunWriteErrors))
	}
}

// FuzzCoalesce: any batch of packets is written whole and in order, each one plain and unchanged or as part
// of a super-packet that carries the segments' payloads in order behind the first one's headers, with a
// valid virtio header and pseudo-header sum. Run longer with
//
//	go test -run '^$' -fuzz FuzzCoalesce ./backend/udp
func FuzzCoalesce(f *testing.F) {
	batch := func(pkts ...[]byte) []byte { // each packet behind its 2-byte length
		var b []byte
		for _, p := range pkts {
			b = append(binary.BigEndian.AppendUint16(b, uint16(len(p))), p...)
		}
		return b
	}
	for _, seg := range []segBuilder{tcpSeg, tcpSeg6} {
		f.Add(batch(seg(0, tcpFlagACK, 100, nil), seg(100, tcpFlagACK, 100, nil), seg(200, tcpFlagACK|tcpFlagPSH, 50, nil)))
		f.Add(batch(seg(0, tcpFlagACK, 100, nil), seg(100, tcpFlagACK, 100, func(p []byte) { p[len(p)-101]++ })))
	}
	f.Add(batch(tcpSeg(0, tcpFlagACK, 100, nil), tcpSeg6(100, tcpFlagACK, 100, nil), tcpSeg6(200, tcpFlagACK, 100, nil)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var in [][]byte
		for len(b) >= 2 {
			n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
			in, b = append(in, b[2:2+n]), b[2+n:]
		}
		orig := make([][]byte, len(in))
		tun := &fakeTUN{}
		w, _ := testWriter(tun)
		for i, p := range in {
			orig[i] = slices.Clone(p)
			w.add(p)
		}
		w.flush()
		k := 0
		for i, wr := range tun.writes {
			h, p := wr[:vnetHdrLen], wr[vnetHdrLen:]
			if h[1] == 0 {
				if k >= len(orig) || !bytes.Equal(h, make([]byte, vnetHdrLen)) || !bytes.Equal(p, orig[k]) {
					t.Fatalf("write %d: a plain write differs from input %d", i, k)
				}
				k++
				continue
			}
			n := tun.pieces[i] - 1
			hl, start := int(binary.NativeEndian.Uint16(h[2:])), int(binary.NativeEndian.Uint16(h[6:]))
			if n < 2 || k+n > len(orig) || (h[1] != virtioNetHdrGSOTCPv4 || start != 20) && (h[1] != virtioNetHdrGSOTCPv6 || start != 40) {
				t.Fatalf("write %d: super-packet of %d pieces, GSO type %d, csum_start %d, %d inputs left", i, n, h[1], start, len(orig)-k)
			}
			want := slices.Clone(orig[k][:hl])
			for _, s := range orig[k : k+n] {
				want = append(want, s[hl:]...)
			}
			if len(p) != len(want) || !bytes.Equal(p[hl:], want[hl:]) || int(binary.NativeEndian.Uint16(h[4:])) != len(orig[k])-hl {
				t.Fatalf("write %d: super-packet of %d bytes does not carry inputs %d to %d (%d bytes) with gso_size %d", i, len(p), k, k+n-1, len(want), len(orig[k])-hl)
			}
			if got, want := binary.BigEndian.Uint16(p[start+16:]), pseudoSum(p, len(p)-start); got != want {
				t.Fatalf("write %d: TCP checksum field %#x, want the pseudo-header sum %#x", i, got, want)
			}
			k += n
		}
		if k != len(orig) {
			t.Fatalf("writes carry %d of %d packets", k, len(orig))
		}
	})
}

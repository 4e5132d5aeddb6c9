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

func fixChecksums(p []byte) {
	p[10], p[11] = 0, 0
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	p[36], p[37] = 0, 0
	binary.BigEndian.PutUint16(p[36:], tcpChecksum(p))
}

// tcpChecksum is the TCP checksum of IPv4 packet p (p[36:38] counted as it is).
func tcpChecksum(p []byte) uint16 {
	ps := pseudoSum(p, len(p)-20)
	b := append([]byte{byte(ps >> 8), byte(ps)}, p[20:]...)
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

// checkSuper checks that w (a write: virtio header and packet) is a valid TCPv4 GSO super-packet of the
// segments segs and reports what is wrong.
func checkSuper(t *testing.T, w []byte, segs [][]byte) {
	t.Helper()
	h, p := w[:vnetHdrLen], w[vnetHdrLen:]
	first := segs[0]
	var payload []byte
	for _, s := range segs {
		payload = append(payload, s[52:]...)
	}
	if h[0] != virtioNetHdrFNeedsCsum || h[1] != virtioNetHdrGSOTCPv4 || binary.NativeEndian.Uint16(h[2:]) != 52 ||
		int(binary.NativeEndian.Uint16(h[4:])) != len(first)-52 || binary.NativeEndian.Uint16(h[6:]) != 20 || binary.NativeEndian.Uint16(h[8:]) != 16 {
		t.Errorf("virtio header % x: want NEEDS_CSUM, GSO_TCPV4, hdr_len 52, gso_size %d, csum 20+16", h, len(first)-52)
	}
	if len(p) != 52+len(payload) || int(binary.BigEndian.Uint16(p[2:])) != len(p) {
		t.Fatalf("super-packet of %d bytes, total length %d; want %d", len(p), binary.BigEndian.Uint16(p[2:]), 52+len(payload))
	}
	if checksum(p[:20]) != 0 {
		t.Errorf("IPv4 header checksum invalid")
	}
	if got, want := binary.BigEndian.Uint16(p[36:]), pseudoSum(p, len(p)-20); got != want {
		t.Errorf("TCP checksum field %#x, want the pseudo-header sum %#x", got, want)
	}
	// What the kernel does with a partial checksum: sum from csum_start, starting from the field's value.
	full := slices.Clone(p)
	binary.BigEndian.PutUint16(full[36:], checksum(full[20:]))
	if !validTCP(full) {
		t.Errorf("completed TCP checksum invalid")
	}
	if !bytes.Equal(p[52:], payload) {
		t.Errorf("payload differs from the segments' payloads")
	}
	if !bytes.Equal(p[12:33], first[12:33]) || !bytes.Equal(p[34:36], first[34:36]) || !bytes.Equal(p[38:52], first[38:52]) {
		t.Errorf("headers differ from the first segment's")
	}
	wantPSH := segs[len(segs)-1][33]&tcpFlagPSH != 0
	if (p[33]&tcpFlagPSH != 0) != wantPSH {
		t.Errorf("PSH %v, want %v (the last segment's)", p[33]&tcpFlagPSH != 0, wantPSH)
	}
}

// validTCP reports whether IPv4 packet p's TCP checksum verifies.
func validTCP(p []byte) bool {
	ps := pseudoSum(p, len(p)-20)
	return checksum(append([]byte{byte(ps >> 8), byte(ps)}, p[20:]...)) == 0
}

func TestCoalesce(t *testing.T) {
	const mss = 1400
	run := func(n int) [][]byte { // n consecutive full segments
		var s [][]byte
		for i := range n {
			s = append(s, tcpSeg(uint32(1000+i*mss), tcpFlagACK, mss, nil))
		}
		return s
	}
	next := uint32(1000 + 3*mss)
	udp := pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...)
	for _, tc := range []struct {
		name string
		in   [][]byte
		want []int // per write: the number of input packets it carries, in order
	}{
		{"one run", run(44), []int{44}},
		{"single segment", run(1), []int{1}},
		{"last shorter, then nothing joins", append(run(3), tcpSeg(next, tcpFlagACK, 100, nil), tcpSeg(next+100, tcpFlagACK, mss, nil)), []int{4, 1}},
		{"PSH ends the group", append(run(2), tcpSeg(1000+2*mss, tcpFlagACK|tcpFlagPSH, mss, nil), tcpSeg(next, tcpFlagACK, mss, nil)), []int{3, 1}},
		{"gap in sequence", append(run(3), tcpSeg(next+1, tcpFlagACK, mss, nil)), []int{3, 1}},
		{"larger segment", append(run(3), tcpSeg(next, tcpFlagACK, mss+1, nil)), []int{3, 1}},
		{"other flow", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[21]++ })), []int{3, 1}},
		{"other ACK number", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[31]++ })), []int{3, 1}},
		{"other window", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[35]++ })), []int{3, 1}},
		{"other options", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[51]++ })), []int{3, 1}},
		{"other TOS", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[1] = 2 })), []int{3, 1}},
		{"other TTL", append(run(3), tcpSeg(next, tcpFlagACK, mss, func(p []byte) { p[8] = 63 })), []int{3, 1}},
		{"UDP between keeps the order", append(append(run(2), udp), tcpSeg(1000+2*mss, tcpFlagACK, mss, nil)), []int{2, 1, 1}},
		{"FIN not coalesced", append(run(2), tcpSeg(1000+2*mss, tcpFlagACK|0x01, mss, nil)), []int{2, 1}},
		{"pure ACKs alone", [][]byte{tcpSeg(1, tcpFlagACK, 0, nil), tcpSeg(1, tcpFlagACK, 0, nil)}, []int{1, 1}},
		{"fragment alone", append(run(2), tcpSeg(1000+2*mss, tcpFlagACK, mss, func(p []byte) { p[6] |= 0x20 })), []int{2, 1}},
		{"bad IPv4 header checksum alone", [][]byte{run(1)[0], func() []byte { p := run(2)[1]; p[10]++; return p }()}, []int{1, 1}},
		{"at most 64 KB", run(70), []int{46, 24}}, // 52 + 46 × 1400 ≤ 65535
		{"small segments: at most 64", func() [][]byte {
			var s [][]byte
			for i := range 70 {
				s = append(s, tcpSeg(uint32(i*100), tcpFlagACK, 100, nil))
			}
			return s
		}(), []int{64, 6}},
	} {
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
				if wr[1] == virtioNetHdrGSOTCPv4 {
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
// as received, and coalescing stays off.
func TestCoalesceFallback(t *testing.T) {
	f := &fakeTUN{refuse: func(p [][]byte) error {
		if p[0][1] == virtioNetHdrGSOTCPv4 {
			return unix.EINVAL
		}
		return nil
	}}
	w, dp := testWriter(f)
	var in, orig [][]byte
	for i := range 5 {
		p := tcpSeg(uint32(i*1000), tcpFlagACK, 1000, nil)
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
	if len(f.writes) != 5 {
		t.Fatalf("%d writes, want 5 single packets", len(f.writes))
	}
	for i, wr := range f.writes {
		if !bytes.Equal(wr[vnetHdrLen:], orig[i]) {
			t.Errorf("write %d differs from segment %d as received", i, i)
		}
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

package udp

import "encoding/binary"

// This file coalesces received TCP segments into super-packets for the TUN, as the kernel's GRO does for a
// NIC: consecutive segments of one flow become one packet with a virtio-net header (GSO TCPv4, partial
// checksum) and are written with one writev whose pieces point into the receive buffer, so user space copies
// nothing. Inner checksums are not verified on the way: each segment arrived whole in a UDP datagram whose
// checksum the kernel verified, and the peer's agent built the segment (fast-udp.md §8). A segment with a bad
// TCP checksum from a broken or hostile peer is therefore delivered as good; such a peer can send any packet
// from its subnet anyway. IPv4 header checksums are still checked, since the headers of all but the first
// segment are dropped. Pure logic: no I/O, no allocation.

const (
	// maxCoalesce bounds the segments of one super-packet (and so the writev's pieces).
	maxCoalesce = 64

	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10

	virtioNetHdrFNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	virtioNetHdrGSOTCPv4   = 1 // VIRTIO_NET_HDR_GSO_TCPV4
)

// tcpSegment is an IPv4 TCP segment that may join a super-packet.
type tcpSegment struct {
	pkt    []byte // the whole packet (its IPv4 total length)
	hdrLen int    // IPv4 (20) + TCP header: the payload starts here
	seq    uint32
}

func (s tcpSegment) payload() int { return len(s.pkt) - s.hdrLen }
func (s tcpSegment) psh() bool    { return s.pkt[33]&tcpFlagPSH != 0 }

// parseSegment reports whether pkt, a complete IPv4 packet, is a candidate: TCP without IP options or
// fragmentation, a valid IPv4 header checksum, only ACK (and PSH) set, and a payload.
func parseSegment(pkt []byte) (tcpSegment, bool) {
	if len(pkt) < 41 || pkt[0] != 0x45 || pkt[9] != 6 || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 ||
		checksum(pkt[:20]) != 0 {
		return tcpSegment{}, false
	}
	doff := int(pkt[32]>>4) * 4
	if f := pkt[33]; doff < 20 || 20+doff >= len(pkt) || (f != tcpFlagACK && f != tcpFlagACK|tcpFlagPSH) {
		return tcpSegment{}, false
	}
	return tcpSegment{pkt: pkt, hdrLen: 20 + doff, seq: binary.BigEndian.Uint32(pkt[24:28])}, true
}

// tcpGroup is a super-packet being built: segs[0]'s headers stand for all, followed by every segment's
// payload. Every segment but the last carries gso bytes.
type tcpGroup struct {
	segs   []tcpSegment // cap maxCoalesce
	gso    int          // payload size of the first segment: the others may not be larger
	next   uint32       // the sequence number that continues the flow
	total  int          // IPv4 total length of the super-packet
	closed bool         // a shorter or PSH segment joined last: nothing more may join
	saved  [80]byte     // segs[0]'s original headers while they are rewritten (see finish)
}

func newTCPGroup() tcpGroup { return tcpGroup{segs: make([]tcpSegment, 0, maxCoalesce)} }

func (g *tcpGroup) start(s tcpSegment) {
	g.segs = append(g.segs[:0], s)
	g.gso, g.next, g.total = s.payload(), s.seq+uint32(s.payload()), len(s.pkt)
	g.closed = s.psh()
}

func (g *tcpGroup) reset() { g.segs = g.segs[:0] }

// join adds s if it continues the group's flow (same addresses, ports, TOS, TTL, DF, ACK number, window and
// TCP options, as the kernel's GRO requires) and fits; it reports whether s joined.
func (g *tcpGroup) join(s tcpSegment) bool {
	if len(g.segs) == 0 || g.closed || len(g.segs) == maxCoalesce || s.seq != g.next ||
		s.payload() > g.gso || g.total+s.payload() > maxPacket {
		return false
	}
	a, b := g.segs[0].pkt, s.pkt
	if s.hdrLen != g.segs[0].hdrLen || a[1] != b[1] || a[6] != b[6] || a[8] != b[8] ||
		string(a[12:24]) != string(b[12:24]) || // addresses, ports
		string(a[28:33]) != string(b[28:33]) || // ACK number, data offset
		a[33]&^tcpFlagPSH != b[33]&^tcpFlagPSH ||
		string(a[34:36]) != string(b[34:36]) || // window
		string(a[40:s.hdrLen]) != string(b[40:s.hdrLen]) { // options
		return false
	}
	g.segs = append(g.segs, s)
	g.next += uint32(s.payload())
	g.total += s.payload()
	g.closed = s.payload() < g.gso || s.psh()
	return true
}

// finish turns the group (two segments or more) into a super-packet: it rewrites segs[0]'s headers (total
// length, IPv4 checksum, PSH if any segment had it, and the TCP checksum field to the pseudo-header sum the
// partial checksum starts from), fills hdr (vnetHdrLen bytes) and appends the packet's pieces to pieces.
// restore undoes the rewrite.
func (g *tcpGroup) finish(hdr []byte, pieces [][]byte) [][]byte {
	first := g.segs[0].pkt
	copy(g.saved[:], first[:g.segs[0].hdrLen])
	binary.BigEndian.PutUint16(first[2:4], uint16(g.total))
	first[10], first[11] = 0, 0
	binary.BigEndian.PutUint16(first[10:12], checksum(first[:20]))
	if g.segs[len(g.segs)-1].psh() {
		first[33] |= tcpFlagPSH
	}
	binary.BigEndian.PutUint16(first[36:38], pseudoSum(first, g.total-20))

	binary.NativeEndian.PutUint16(hdr[2:4], uint16(g.segs[0].hdrLen)) // hdr_len
	hdr[0], hdr[1] = virtioNetHdrFNeedsCsum, virtioNetHdrGSOTCPv4
	binary.NativeEndian.PutUint16(hdr[4:6], uint16(g.gso)) // gso_size
	binary.NativeEndian.PutUint16(hdr[6:8], 20)            // csum_start: the TCP header
	binary.NativeEndian.PutUint16(hdr[8:10], 16)           // csum_offset: TCP's checksum field

	pieces = append(pieces, hdr, first)
	for _, s := range g.segs[1:] {
		pieces = append(pieces, s.pkt[s.hdrLen:])
	}
	return pieces
}

// restore puts back segs[0]'s original headers after finish, for writing the segments one by one.
func (g *tcpGroup) restore() { copy(g.segs[0].pkt, g.saved[:g.segs[0].hdrLen]) }

// pseudoSum is the folded (not complemented) sum of the TCP pseudo-header of IPv4 packet pkt with TCP length
// n: what a partial checksum's field holds before the rest is added.
func pseudoSum(pkt []byte, n int) uint16 {
	sum := uint32(6) + uint32(n)
	for i := 12; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(pkt[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

package udp

import "encoding/binary"

// This file coalesces received TCP segments into super-packets for the TUN, as the kernel's GRO does for a
// NIC: consecutive segments of one flow become one packet with a virtio-net header (GSO TCPv4 or TCPv6,
// partial checksum) and are written with one writev whose pieces point into the receive buffer, so user space
// copies nothing. Inner checksums are not verified on the way: each segment arrived whole in a UDP datagram
// whose checksum the kernel verified, and the peer's agent built the segment (fast-udp.md §8). A segment with
// a bad TCP checksum from a broken or hostile peer is therefore delivered as good; such a peer can send any
// packet from its subnet anyway. IPv4 header checksums are still checked, since the headers of all but the
// first segment are dropped (IPv6 has none). IPv6 segments with extension headers are not coalesced. Pure
// logic: no I/O, no allocation.

const (
	// maxCoalesce bounds the segments of one super-packet (and so the writev's pieces).
	maxCoalesce = 64

	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10

	ipv4Header = 20 // without options: packets with options are not coalesced

	virtioNetHdrFNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	virtioNetHdrGSOTCPv4   = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	virtioNetHdrGSOTCPv6   = 4 // VIRTIO_NET_HDR_GSO_TCPV6
)

// tcpSegment is an IPv4 or IPv6 TCP segment that may join a super-packet.
type tcpSegment struct {
	pkt    []byte // the whole packet (its IPv4 total length, or IPv6 header and payload length)
	ipLen  int    // the IP header: ipv4Header or ipv6Header; the TCP header starts here
	hdrLen int    // IP + TCP header: the payload starts here
	seq    uint32
}

func (s tcpSegment) payload() int { return len(s.pkt) - s.hdrLen }
func (s tcpSegment) psh() bool    { return s.pkt[s.ipLen+13]&tcpFlagPSH != 0 }
func (s tcpSegment) v6() bool     { return s.ipLen == ipv6Header }

// parseSegment reports whether pkt, a complete IPv4 or IPv6 packet, is a candidate: TCP with a payload and
// only ACK (and PSH) set; for IPv4 without options or fragmentation and with a valid header checksum, for
// IPv6 with TCP as the next header (no extension headers).
func parseSegment(pkt []byte) (tcpSegment, bool) {
	var ip int
	switch {
	case len(pkt) > ipv4Header && pkt[0] == 0x45:
		if pkt[9] != 6 || binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 || checksum(pkt[:ipv4Header]) != 0 {
			return tcpSegment{}, false
		}
		ip = ipv4Header
	case len(pkt) > ipv6Header && pkt[0]>>4 == 6:
		if pkt[6] != 6 { // next header: TCP, no extension header
			return tcpSegment{}, false
		}
		ip = ipv6Header
	default:
		return tcpSegment{}, false
	}
	if len(pkt) < ip+21 { // a TCP header and a payload byte
		return tcpSegment{}, false
	}
	doff := int(pkt[ip+12]>>4) * 4
	if f := pkt[ip+13]; doff < 20 || ip+doff >= len(pkt) || (f != tcpFlagACK && f != tcpFlagACK|tcpFlagPSH) {
		return tcpSegment{}, false
	}
	return tcpSegment{pkt: pkt, ipLen: ip, hdrLen: ip + doff, seq: binary.BigEndian.Uint32(pkt[ip+4 : ip+8])}, true
}

// tcpGroup is a super-packet being built: segs[0]'s headers stand for all, followed by every segment's
// payload. Every segment but the last carries gso bytes.
type tcpGroup struct {
	segs   []tcpSegment // cap maxCoalesce
	gso    int          // payload size of the first segment: the others may not be larger
	next   uint32       // the sequence number that continues the flow
	total  int          // length of the super-packet (IP header included)
	closed bool         // a shorter or PSH segment joined last: nothing more may join
	saved  [100]byte    // segs[0]'s original headers while they are rewritten (see finish); IPv6 + 60
}

func newTCPGroup() tcpGroup { return tcpGroup{segs: make([]tcpSegment, 0, maxCoalesce)} }

func (g *tcpGroup) start(s tcpSegment) {
	g.segs = append(g.segs[:0], s)
	g.gso, g.next, g.total = s.payload(), s.seq+uint32(s.payload()), len(s.pkt)
	g.closed = s.psh()
}

func (g *tcpGroup) reset() { g.segs = g.segs[:0] }

// join adds s if it continues the group's flow and fits; it reports whether s joined. The flow rules are the
// kernel's GRO's: the same IP version, addresses and ports; for IPv4 the same TOS, TTL and DF, for IPv6 the
// same traffic class, flow label and hop limit; the same ACK number, window and TCP options.
func (g *tcpGroup) join(s tcpSegment) bool {
	if len(g.segs) == 0 || g.closed || len(g.segs) == maxCoalesce || s.seq != g.next ||
		s.payload() > g.gso || g.total+s.payload() > maxPacket {
		return false
	}
	f := g.segs[0]
	a, b := f.pkt, s.pkt
	if s.ipLen != f.ipLen || s.hdrLen != f.hdrLen {
		return false
	}
	if f.v6() {
		if string(a[0:4]) != string(b[0:4]) || // version, traffic class, flow label
			a[7] != b[7] || // hop limit
			string(a[8:40]) != string(b[8:40]) { // addresses
			return false
		}
	} else if a[1] != b[1] || a[6] != b[6] || a[8] != b[8] || // TOS, DF, TTL
		string(a[12:20]) != string(b[12:20]) { // addresses
		return false
	}
	ta, tb := a[f.ipLen:f.hdrLen], b[f.ipLen:f.hdrLen]
	if string(ta[0:4]) != string(tb[0:4]) || // ports
		string(ta[8:13]) != string(tb[8:13]) || // ACK number, data offset
		ta[13]&^tcpFlagPSH != tb[13]&^tcpFlagPSH ||
		string(ta[14:16]) != string(tb[14:16]) || // window
		string(ta[20:]) != string(tb[20:]) { // options
		return false
	}
	g.segs = append(g.segs, s)
	g.next += uint32(s.payload())
	g.total += s.payload()
	g.closed = s.payload() < g.gso || s.psh()
	return true
}

// finish turns the group (two segments or more) into a super-packet: it rewrites segs[0]'s headers (IPv4
// total length and header checksum, or IPv6 payload length; PSH if the last segment had it; the TCP checksum
// field to the pseudo-header sum the partial checksum starts from), fills hdr (vnetHdrLen bytes) and appends
// the packet's pieces to pieces. restore undoes the rewrite.
func (g *tcpGroup) finish(hdr []byte, pieces [][]byte) [][]byte {
	f := g.segs[0]
	first, t := f.pkt, f.ipLen
	copy(g.saved[:], first[:f.hdrLen])
	gsoType := byte(virtioNetHdrGSOTCPv4)
	if f.v6() {
		gsoType = virtioNetHdrGSOTCPv6
		binary.BigEndian.PutUint16(first[4:6], uint16(g.total-ipv6Header))
	} else {
		binary.BigEndian.PutUint16(first[2:4], uint16(g.total))
		first[10], first[11] = 0, 0
		binary.BigEndian.PutUint16(first[10:12], checksum(first[:ipv4Header]))
	}
	if g.segs[len(g.segs)-1].psh() {
		first[t+13] |= tcpFlagPSH
	}
	binary.BigEndian.PutUint16(first[t+16:t+18], pseudoSum(first, g.total-t))

	hdr[0], hdr[1] = virtioNetHdrFNeedsCsum, gsoType
	binary.NativeEndian.PutUint16(hdr[2:4], uint16(f.hdrLen)) // hdr_len
	binary.NativeEndian.PutUint16(hdr[4:6], uint16(g.gso))    // gso_size
	binary.NativeEndian.PutUint16(hdr[6:8], uint16(t))        // csum_start: the TCP header
	binary.NativeEndian.PutUint16(hdr[8:10], 16)              // csum_offset: TCP's checksum field

	pieces = append(pieces, hdr, first)
	for _, s := range g.segs[1:] {
		pieces = append(pieces, s.pkt[s.hdrLen:])
	}
	return pieces
}

// restore puts back segs[0]'s original headers after finish, for writing the segments one by one.
func (g *tcpGroup) restore() { copy(g.segs[0].pkt, g.saved[:g.segs[0].hdrLen]) }

// pseudoSum is the folded (not complemented) sum of the TCP pseudo-header of pkt, an IPv4 packet without
// options or an IPv6 packet without extension headers, with TCP length n: what a partial checksum's field
// holds before the rest is added.
func pseudoSum(pkt []byte, n int) uint16 {
	addrs := pkt[12:20]
	if pkt[0]>>4 == 6 {
		addrs = pkt[8:40]
	}
	sum := uint32(6) + uint32(n)
	for i := 0; i < len(addrs); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(addrs[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

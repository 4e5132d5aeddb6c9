package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// This file is the data path's packet logic: IPv4 header checks, the peer table, the receive-side acceptance
// rules and the ICMP destination-unreachable builder. It does no I/O, allocates nothing per packet and never
// panics on any input, so it is table- and fuzz-tested without a kernel.

const (
	// maxPacket is the size of each loop's packet buffer: the largest IPv4 packet, and more than the
	// largest UDP payload (65507), so a datagram is never truncated.
	maxPacket = 65535
	// ipv4MinHeader is the length of an IPv4 header without options.
	ipv4MinHeader = 20
	// icmpMaxLen bounds an ICMP error we build: IP header, ICMP header, the offender's header with the
	// longest options and 8 bytes of its payload.
	icmpMaxLen = ipv4MinHeader + 8 + 60 + 8
)

// reason is the verdict on one packet: forward it (reasonOK) or why it is dropped.
type reason uint8

const (
	reasonOK             reason = iota
	reasonMalformed             // not a well-formed IPv4 packet (too short, bad IHL or total length)
	reasonNotIPv4               // the version nibble is not 4 (the TUN also sees the kernel's IPv6 chatter)
	reasonUnknownPeer           // outer source is no current peer's PublicIP
	reasonBadInnerSource        // inner source outside every subnet leased by the outer source
	reasonNotOurSubnet          // inner destination outside our own subnet
	reasonNoRoute               // inner destination in no peer's subnet
)

func (r reason) String() string {
	switch r {
	case reasonOK:
		return "ok"
	case reasonMalformed:
		return "malformed"
	case reasonNotIPv4:
		return "not IPv4"
	case reasonUnknownPeer:
		return "unknown peer"
	case reasonBadInnerSource:
		return "inner source outside the peer's subnet"
	case reasonNotOurSubnet:
		return "inner destination outside our subnet"
	case reasonNoRoute:
		return "no route"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// ipv4 holds the fields of an IPv4 header the data path looks at.
type ipv4 struct {
	hdrLen   int    // IHL × 4
	totalLen int    // Total Length; the packet is b[:totalLen], trailing bytes are ignored
	fragOff  uint16 // fragment offset, in 8-byte units (flags masked off)
	proto    uint8
	src, dst uint32
	// v6 marks an IPv6 packet (see routeTx6): only totalLen is set then.
	v6 bool
}

// parseIPv4 checks that b starts with a well-formed IPv4 packet: version 4, IHL ≥ 5 and within b, and a
// total length that covers the header and fits in b. It does not verify the header checksum: the kernel
// does that when the packet is written into the TUN.
func parseIPv4(b []byte) (ipv4, reason) {
	if len(b) == 0 {
		return ipv4{}, reasonMalformed
	}
	if b[0]>>4 != 4 {
		return ipv4{}, reasonNotIPv4
	}
	if len(b) < ipv4MinHeader {
		return ipv4{}, reasonMalformed
	}
	h := ipv4{
		hdrLen:   int(b[0]&0x0f) * 4,
		totalLen: int(binary.BigEndian.Uint16(b[2:4])),
		fragOff:  binary.BigEndian.Uint16(b[6:8]) & 0x1fff,
		proto:    b[9],
		src:      binary.BigEndian.Uint32(b[12:16]),
		dst:      binary.BigEndian.Uint32(b[16:20]),
	}
	if h.hdrLen < ipv4MinHeader || h.hdrLen > len(b) || h.totalLen < h.hdrLen || h.totalLen > len(b) {
		return ipv4{}, reasonMalformed
	}
	return h, reasonOK
}

// v4net is an IPv4 prefix as a masked address and a mask, for allocation-free containment tests.
type v4net struct{ addr, mask uint32 }

func netOf(p netip.Prefix) v4net {
	m := ^(^uint32(0) >> p.Bits()) // a shift by 32 gives 0, so /32 is all ones
	return v4net{addr: u32(p.Addr()) & m, mask: m}
}

func (n v4net) contains(a uint32) bool { return a&n.mask == n.addr }

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func addrOf(a uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], a)
	return netip.AddrFrom4(b)
}

// peer is one remote node: where to send its packets and which subnets it may source packets from.
type peer struct {
	outer    netip.AddrPort // PublicIP:Port
	subnets  []v4net        // every subnet leased with this PublicIP (normally one)
	subnets6 []netip.Prefix // every IPv6 subnet leased with this PublicIP (see addIPv6)
}

// level is the set of peer subnets of one prefix length.
type level struct {
	mask  uint32
	peers map[uint32]*peer // keyed by masked network address
}

// table is an immutable snapshot of the forwarding state. Set builds a new one and publishes it through an
// atomic pointer; the packet loops load it once per packet and never see a partial update.
type table struct {
	own     v4net  // our own subnet; ownOK is false before the first Set
	ownOK   bool   //
	tunAddr uint32 // our TUN address (own subnet's network address): the source of ICMP errors we make

	levels   []level              // peer subnets grouped by prefix length, longest first
	byOuter  map[uint32]*peer     // peers by PublicIP
	byOuter6 map[netip.Addr]*peer // peers by PublicIPv6, over an IPv6 underlay (buildTable6); nil otherwise
	subnets  int                  // number of peer subnets in the table
	six      v6                   // the IPv6 side (forward6.go); zero without IPv6
}

// emptyTable is the table before the first Set: no route, nothing accepted.
func emptyTable() *table { return &table{byOuter: map[uint32]*peer{}} }

// buildTable makes the forwarding table for our subnet own in the overlay network and the peer leases. A
// lease is skipped (and described in skipped) when its BackendType is neither "udp" nor "" (flannel's udp
// backend writes none; a quiet skip), when backend.CheckPeer refuses it (no IPv4 subnet or unicast IPv4
// PublicIP, our own subnet or address, outside network, overlapping our subnet), or when another lease
// already has its subnet. So an inner source we accept is always an overlay address outside our own subnet:
// never one of this node's addresses (see accept_local in Up).
func buildTable(network, own netip.Prefix, ext backend.External, leases []subnet.Lease, port uint16) (t *table, skipped []backend.Skip) {
	t = emptyTable()
	if own.IsValid() && own.Addr().Is4() {
		own = own.Masked()
		t.own, t.ownOK, t.tunAddr = netOf(own), true, u32(own.Addr())
	}
	byLen := map[int]map[uint32]*peer{}
	for _, l := range leases {
		l.Attrs.PublicIP = l.Attrs.PublicIP.Unmap()
		sn, pub := l.Subnet.Masked(), l.Attrs.PublicIP
		if l.Attrs.BackendType != "" && l.Attrs.BackendType != subnet.BackendUDP {
			skipped = append(skipped, backend.Skip{Key: l.Key(), Kind: backend.SkipBackendType, Reason: fmt.Sprintf("backend type %q", l.Attrs.BackendType), Quiet: true})
			continue
		}
		kind, why := backend.CheckPeer(l, own, ext, network)
		if why == "" && byLen[sn.Bits()][netOf(sn).addr] != nil {
			kind, why = backend.SkipDuplicateSubnet, "duplicate subnet"
		}
		if why != "" {
			skipped = append(skipped, backend.Skip{Key: l.Key(), Kind: kind, Reason: why})
			continue
		}
		n := netOf(sn)
		p := t.byOuter[u32(pub)]
		if p == nil {
			p = &peer{outer: netip.AddrPortFrom(pub, port)}
			t.byOuter[u32(pub)] = p
		}
		p.subnets = append(p.subnets, n)
		if byLen[sn.Bits()] == nil {
			byLen[sn.Bits()] = map[uint32]*peer{}
		}
		byLen[sn.Bits()][n.addr] = p
		t.subnets++
	}
	lens := make([]int, 0, len(byLen))
	for bits := range byLen {
		lens = append(lens, bits)
	}
	slices.Sort(lens)
	slices.Reverse(lens)
	for _, bits := range lens {
		t.levels = append(t.levels, level{mask: netOf(netip.PrefixFrom(netip.IPv4Unspecified(), bits)).mask, peers: byLen[bits]})
	}
	return t, skipped
}

// lookup returns the peer owning the longest peer subnet that contains dst, or nil.
func (t *table) lookup(dst uint32) *peer {
	for i := range t.levels {
		l := &t.levels[i]
		if p := l.peers[dst&l.mask]; p != nil {
			return p
		}
	}
	return nil
}

// routeTx decides what to do with a packet read from the TUN: send h.totalLen bytes of it to p.outer
// (reasonOK), or drop it for the reason returned; for reasonNoRoute h is valid, so the caller can answer
// with an ICMP error.
func (t *table) routeTx(pkt []byte) (p *peer, h ipv4, r reason) {
	h, r = parseIPv4(pkt)
	if r == reasonNotIPv4 && pkt[0]>>4 == 6 {
		return t.routeTx6(pkt)
	}
	if r != reasonOK {
		return nil, h, r
	}
	if p = t.lookup(h.dst); p == nil {
		return nil, h, reasonNoRoute
	}
	return p, h, reasonOK
}

// acceptRx decides whether a datagram payload from outer may be written into the TUN. It accepts only a
// well-formed IPv4 (or IPv6, acceptRx6) packet from a current peer's PublicIP whose inner source lies in a
// subnet leased by that peer and whose inner destination lies in our own subnet; it then returns the packet's length (trailing
// bytes past the IPv4 total length are dropped). The outer source port is not checked: flanneld sends from
// the listening port, but a faster sender may spread flows over several source ports.
func (t *table) acceptRx(outer netip.Addr, pkt []byte) (int, reason) {
	outer = outer.Unmap()
	var p *peer
	switch {
	case outer.Is4():
		p = t.byOuter[u32(outer)]
	case t.byOuter6 != nil:
		p = t.byOuter6[outer]
	}
	if p == nil {
		return 0, reasonUnknownPeer
	}
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		return t.acceptRx6(p, pkt)
	}
	h, r := parseIPv4(pkt)
	if r != reasonOK {
		return 0, reasonMalformed
	}
	if !p.containsSource(h.src) {
		return 0, reasonBadInnerSource
	}
	if !t.ownOK || !t.own.contains(h.dst) {
		return 0, reasonNotOurSubnet
	}
	return h.totalLen, reasonOK
}

func (p *peer) containsSource(a uint32) bool {
	for _, n := range p.subnets {
		if n.contains(a) {
			return true
		}
	}
	return false
}

// ICMP types that are not error messages (RFC 792, 950; Linux's icmp_pointers[].error == 0). An ICMP error is
// never sent about an ICMP error (RFC 1122 3.2.2), and an unknown type is treated as an error, as Linux does.
func icmpIsQuery(typ uint8) bool {
	switch typ {
	case 0, 8, // echo reply, echo request
		9, 10, // router advertisement, solicitation
		13, 14, // timestamp, reply
		15, 16, // information request, reply
		17, 18: // address mask request, reply
		return true
	}
	return false
}

// singleHost reports whether a is usable as a unicast host address (RFC 1122 3.2.2, RFC 1812 4.3.2.7): not
// in 0/8, 127/8, multicast 224/4 or the reserved 240/4 (which holds the limited broadcast).
func singleHost(a uint32) bool {
	first := a >> 24
	return first != 0 && first != 127 && first < 224
}

const (
	icmpDestUnreachable = 3
	icmpNetUnreachable  = 0 // code: as flannel; ping prints "Destination Net Unreachable"
)

// buildUnreachable writes into out (at least icmpMaxLen bytes) an ICMP destination unreachable, code net
// unreachable, about the packet pkt with header h, from src to the packet's source, and returns its length.
// It returns 0 where no error may be sent: for a non-first fragment, an ICMP error, a source that is not a
// single host, a multicast or broadcast destination, or with no source address (src 0, before the first
// Set). The message quotes the offender's IP header and the first 8 bytes of its payload (RFC 792).
func buildUnreachable(out, pkt []byte, h ipv4, src uint32) int {
	if src == 0 || len(out) < icmpMaxLen || h.fragOff != 0 || !singleHost(h.src) || !singleHost(h.dst) {
		return 0
	}
	if h.proto == 1 && (h.totalLen <= h.hdrLen || !icmpIsQuery(pkt[h.hdrLen])) {
		return 0
	}
	quote := h.hdrLen + min(8, h.totalLen-h.hdrLen)
	n := ipv4MinHeader + 8 + quote
	ip := out[:ipv4MinHeader]
	ip[0] = 0x45
	ip[1] = 0xc0 // precedence: internetwork control, as Linux's ICMP errors
	binary.BigEndian.PutUint16(ip[2:4], uint16(n))
	clear(ip[4:8]) // ID 0, no flags, offset 0
	ip[8] = 64     // TTL
	ip[9] = 1      // ICMP
	clear(ip[10:12])
	binary.BigEndian.PutUint32(ip[12:16], src)
	binary.BigEndian.PutUint32(ip[16:20], h.src)
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip))
	icmp := out[ipv4MinHeader:n]
	icmp[0], icmp[1] = icmpDestUnreachable, icmpNetUnreachable
	clear(icmp[2:8]) // checksum, then 4 unused bytes
	copy(icmp[8:], pkt[:quote])
	binary.BigEndian.PutUint16(icmp[2:4], checksum(icmp))
	return n
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint64
	for len(b) >= 2 {
		sum += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// tokenBucket limits the ICMP errors the TUN reader generates, like the kernel's net.ipv4.icmp_msgs_per_sec
// and icmp_msgs_burst. It is owned by one goroutine.
type tokenBucket struct {
	rate   float64 // tokens per second
	burst  float64 // bucket size
	tokens float64
	last   time.Time
}

func (b *tokenBucket) allow(now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = b.burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

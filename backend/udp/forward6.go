package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// IPv6 inner packets. In a dual-stack network the udp backend carries IPv6 as it carries IPv4: the raw inner
// packet is the UDP payload, sent to the PublicIP of the peer leasing the destination's IPv6 subnet, over the
// same IPv4 sockets (so the outer family is IPv4 and the peer filter is unchanged; addIPv6). In an IPv6-only
// network the underlay is IPv6: peers are known by PublicIPv6 (buildTable6). A datagram is accepted only
// from a current peer, with an inner source inside that peer's IPv6 subnet and an inner destination inside
// ours, exactly as for IPv4. Like forward.go, nothing here does I/O or allocates per packet.

const ipv6Header = 40

// v6 is the IPv6 part of a table: our IPv6 subnet and the peers' IPv6 subnets.
type v6 struct {
	own     netip.Prefix // our IPv6 subnet; invalid without IPv6 (then IPv6 packets are not forwarded)
	tunAddr netip.Addr   // our TUN's IPv6 address (own's network address): the source of ICMPv6 errors
	levels  []level6     // peer IPv6 subnets grouped by prefix length, longest first
	subnets int
}

type level6 struct {
	bits  int
	peers map[netip.Prefix]*peer // keyed by the masked subnet
}

// parseIPv6 checks that b starts with a well-formed IPv6 packet (version 6, the payload length within b; a
// jumbogram's zero payload length is refused) and returns its length and addresses.
func parseIPv6(b []byte) (n int, src, dst netip.Addr, r reason) {
	if len(b) < ipv6Header || b[0]>>4 != 6 {
		return 0, src, dst, reasonMalformed
	}
	n = ipv6Header + int(binary.BigEndian.Uint16(b[4:6]))
	if n == ipv6Header && b[6] != 59 || n > len(b) { // 59: no next header, the one legitimately empty payload
		return 0, src, dst, reasonMalformed
	}
	return n, netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40])), reasonOK
}

// addIPv6 adds the IPv6 side to t, built like buildTable's IPv4 side: network6 is the IPv6 overlay, own6 our
// IPv6 subnet. A lease's IPv6 subnet is routed to the peer its IPv4 side made (same PublicIP), so a lease
// buildTable skipped is skipped here too, silently; a lease without an IPv6 subnet is left out quietly. An
// IPv6 subnet outside network6, equal to or overlapping own6, or already routed is skipped with a reason.
func (t *table) addIPv6(network6, own6 netip.Prefix, leases []subnet.Lease) (skipped []backend.Skip) {
	if !own6.IsValid() || !own6.Addr().Is6() {
		return nil
	}
	own6, network6 = own6.Masked(), network6.Masked()
	t.six = v6{own: own6, tunAddr: own6.Addr()}
	byLen := map[int]map[netip.Prefix]*peer{}
	for _, l := range leases {
		sn := l.IPv6Subnet.Masked()
		if !sn.IsValid() || !sn.Addr().Is6() || !l.Attrs.PublicIP.Unmap().Is4() {
			continue
		}
		p := t.byOuter[u32(l.Attrs.PublicIP.Unmap())]
		if p == nil || !slices.Contains(p.subnets, netOf(l.Subnet.Masked())) {
			continue // refused on its IPv4 side, or of another backend type
		}
		var why string
		var kind backend.SkipKind
		switch {
		case network6.IsValid() && !(network6.Bits() <= sn.Bits() && network6.Contains(sn.Addr())):
			kind, why = backend.SkipOutsideNetwork, fmt.Sprintf("IPv6 subnet %s is outside the network %s", sn, network6)
		case sn.Overlaps(own6):
			kind, why = backend.SkipOverlapsOwn, fmt.Sprintf("IPv6 subnet %s overlaps this node's own IPv6 subnet %s", sn, own6)
		case byLen[sn.Bits()][sn] != nil:
			kind, why = backend.SkipDuplicateSubnet, "duplicate IPv6 subnet"
		}
		if why != "" {
			skipped = append(skipped, backend.Skip{Key: l.Key(), Kind: kind, Reason: why})
			continue
		}
		t.six.add(byLen, sn, p)
	}
	t.six.setLevels(byLen)
	return skipped
}

// buildTable6 makes the forwarding table of an IPv6-only network (network6, our IPv6 subnet own6) over an
// IPv6 underlay: a peer is a lease's PublicIPv6 (port port), routed to for its IPv6 subnet. A lease is
// skipped as buildTable skips one, with backend.IPv6.CheckPeer's reasons (no IPv6 subnet or unicast
// PublicIPv6, our own subnet or address, outside network6, overlapping our subnet) or as a duplicate.
func buildTable6(network6, own6 netip.Prefix, ext backend.External, leases []subnet.Lease, port uint16) (t *table, skipped []backend.Skip) {
	t = emptyTable()
	t.byOuter6 = map[netip.Addr]*peer{}
	if own6.IsValid() && own6.Addr().Is6() {
		own6 = own6.Masked()
		t.six = v6{own: own6, tunAddr: own6.Addr()}
	}
	byLen := map[int]map[netip.Prefix]*peer{}
	for _, l := range leases {
		if l.Attrs.BackendType != "" && l.Attrs.BackendType != subnet.BackendUDP {
			skipped = append(skipped, backend.Skip{Key: l.Key(), Kind: backend.SkipBackendType, Reason: fmt.Sprintf("backend type %q", l.Attrs.BackendType), Quiet: true})
			continue
		}
		sn, pub := l.IPv6Subnet.Masked(), l.Attrs.PublicIPv6
		kind, why := backend.IPv6.CheckPeer(l, own6, ext, network6)
		if why == "" && byLen[sn.Bits()][sn] != nil {
			kind, why = backend.SkipDuplicateSubnet, "duplicate IPv6 subnet"
		}
		if why != "" {
			skipped = append(skipped, backend.Skip{Key: l.Key(), Kind: kind, Reason: why})
			continue
		}
		p := t.byOuter6[pub]
		if p == nil {
			p = &peer{outer: netip.AddrPortFrom(pub, port)}
			t.byOuter6[pub] = p
		}
		t.six.add(byLen, sn, p)
	}
	t.six.setLevels(byLen)
	return t, skipped
}

// add routes IPv6 subnet sn to p, in byLen (subnets by prefix length) for setLevels.
func (s *v6) add(byLen map[int]map[netip.Prefix]*peer, sn netip.Prefix, p *peer) {
	p.subnets6 = append(p.subnets6, sn)
	if byLen[sn.Bits()] == nil {
		byLen[sn.Bits()] = map[netip.Prefix]*peer{}
	}
	byLen[sn.Bits()][sn] = p
	s.subnets++
}

func (s *v6) setLevels(byLen map[int]map[netip.Prefix]*peer) {
	s.levels = s.levels[:0]
	for bits, peers := range byLen {
		s.levels = append(s.levels, level6{bits: bits, peers: peers})
	}
	slices.SortFunc(s.levels, func(a, b level6) int { return b.bits - a.bits })
}

func (s *v6) lookup(dst netip.Addr) *peer {
	for i := range s.levels {
		l := &s.levels[i]
		if p := l.peers[netip.PrefixFrom(dst, l.bits).Masked()]; p != nil {
			return p
		}
	}
	return nil
}

// routeTx6 is routeTx for an IPv6 packet: the returned header has v6 set and only totalLen valid. Without an
// IPv6 side, and for multicast and link-local destinations (the kernel's own IPv6 chatter on the TUN), it
// returns reasonNotIPv4, as before IPv6 was carried.
func (t *table) routeTx6(pkt []byte) (*peer, ipv4, reason) {
	if !t.six.own.IsValid() {
		return nil, ipv4{}, reasonNotIPv4
	}
	n, _, dst, r := parseIPv6(pkt)
	if r != reasonOK {
		return nil, ipv4{}, r
	}
	if dst.IsMulticast() || dst.IsLinkLocalUnicast() {
		return nil, ipv4{}, reasonNotIPv4
	}
	h := ipv4{totalLen: n, v6: true}
	if p := t.six.lookup(dst); p != nil {
		return p, h, reasonOK
	}
	return nil, h, reasonNoRoute
}

// acceptRx6 is acceptRx's check of an IPv6 inner packet from peer p.
func (t *table) acceptRx6(p *peer, pkt []byte) (int, reason) {
	if !t.six.own.IsValid() {
		return 0, reasonMalformed
	}
	n, src, dst, r := parseIPv6(pkt)
	if r != reasonOK {
		return 0, reasonMalformed
	}
	if !slices.ContainsFunc(p.subnets6, func(s netip.Prefix) bool { return s.Contains(src) }) {
		return 0, reasonBadInnerSource
	}
	if !t.six.own.Contains(dst) {
		return 0, reasonNotOurSubnet
	}
	return n, reasonOK
}

// unreachable writes into out the ICMP error for a packet routeTx found no route for (header h): ICMP net
// unreachable for IPv4 (buildUnreachable), ICMPv6 no route to destination for IPv6 (buildUnreachable6).
func (t *table) unreachable(out, pkt []byte, h ipv4) int {
	if h.v6 {
		return buildUnreachable6(out, pkt, t.six.tunAddr)
	}
	return buildUnreachable(out, pkt, h, t.tunAddr)
}

const (
	icmp6DestUnreachable = 1
	icmp6NoRoute         = 0
	icmp6Proto           = 58
	icmp6Quote           = icmpMaxLen - ipv6Header - 8 // bytes of the offender quoted (its header and 8 more)
)

// buildUnreachable6 writes into out (at least icmpMaxLen bytes) an ICMPv6 destination unreachable, code no
// route, about the IPv6 packet pkt (as parseIPv6 accepted it), from src to its source, and returns its
// length. It returns 0 where no error may be sent (RFC 4443 2.4): with no src, about an ICMPv6 error, a
// non-first fragment, or a packet from an unspecified or multicast source or to a multicast destination. The
// message quotes the start of the offender (its header and 8 more bytes): less than RFC 4443's "as much as
// fits in 1280", which the RFC allows.
func buildUnreachable6(out, pkt []byte, src netip.Addr) int {
	if !src.IsValid() || len(out) < icmpMaxLen || len(pkt) < ipv6Header {
		return 0
	}
	psrc, pdst := netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40]))
	if psrc.IsUnspecified() || psrc.IsMulticast() || pdst.IsMulticast() {
		return 0
	}
	switch next := pkt[6]; {
	case next == icmp6Proto && len(pkt) > ipv6Header && pkt[ipv6Header] < 128: // an ICMPv6 error
		return 0
	case next == 44 && len(pkt) >= ipv6Header+8 && binary.BigEndian.Uint16(pkt[ipv6Header+2:])&^7 != 0: // a later fragment
		return 0
	}
	quote := min(icmp6Quote, len(pkt))
	plen := 8 + quote
	ip := out[:ipv6Header]
	ip[0], ip[1], ip[2], ip[3] = 0x60, 0, 0, 0
	binary.BigEndian.PutUint16(ip[4:6], uint16(plen))
	ip[6], ip[7] = icmp6Proto, 64
	s16, d16 := src.As16(), psrc.As16()
	copy(ip[8:24], s16[:])
	copy(ip[24:40], d16[:])
	icmp := out[ipv6Header : ipv6Header+plen]
	icmp[0], icmp[1] = icmp6DestUnreachable, icmp6NoRoute
	clear(icmp[2:8])
	copy(icmp[8:], pkt[:quote])
	// The checksum covers the pseudo-header: source, destination, upper-layer length, next header.
	var pseudo [8]byte
	binary.BigEndian.PutUint32(pseudo[0:4], uint32(plen))
	pseudo[7] = icmp6Proto
	sum := sum16(ip[8:40], sum16(pseudo[:], sum16(icmp, 0)))
	binary.BigEndian.PutUint16(icmp[2:4], ^fold(sum))
	return ipv6Header + plen
}

// sum16 adds b, as big-endian 16-bit words (an odd last byte padded with zero), to sum.
func sum16(b []byte, sum uint64) uint64 {
	for len(b) >= 2 {
		sum += uint64(b[0])<<8 | uint64(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint64(b[0]) << 8
	}
	return sum
}

func fold(sum uint64) uint16 {
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return uint16(sum)
}

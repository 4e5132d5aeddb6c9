package udp

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// pkt6 builds an IPv6 packet from src to dst with next header next and the payload.
func pkt6(src, dst string, next uint8, payload ...byte) []byte {
	b := make([]byte, ipv6Header+len(payload))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(payload)))
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	copy(b[40:], payload)
	return b
}

func lease6(v4, v6, pub, typ string) subnet.Lease {
	l := lease(v4, pub, typ)
	l.IPv6Subnet = netip.MustParsePrefix(v6)
	return l
}

var (
	testNet6 = netip.MustParsePrefix("fd00:5::/48")
	ownNet6  = netip.MustParsePrefix("fd00:5:0:1::/64")
)

// testTable6: testTable's peers with IPv6 subnets: .12 fd00:5:0:2::/64, .13 fd00:5:0:3::/64.
func testTable6(t testing.TB) *table {
	t.Helper()
	leases := []subnet.Lease{
		lease6("10.5.2.0/24", "fd00:5:0:2::/64", "192.0.2.12", "udp"),
		lease6("10.5.3.0/24", "fd00:5:0:3::/64", "192.0.2.13", ""),
	}
	tb, skipped := buildTable(testNet, ownNet, testExt, leases, 8285)
	skipped = append(skipped, tb.addIPv6(testNet6, ownNet6, leases)...)
	if len(skipped) != 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	return tb
}

func TestAddIPv6(t *testing.T) {
	leases := []subnet.Lease{
		lease6("10.5.2.0/24", "fd00:5:0:2::/64", "192.0.2.12", "udp"),
		lease("10.5.3.0/24", "192.0.2.13", "udp"),                       // no IPv6 subnet: quietly IPv4 only
		lease6("10.5.4.0/24", "fd00:5:0:4::/64", "192.0.2.14", "vxlan"), // another backend: skipped on its IPv4 side
		lease6("10.5.1.0/24", "fd00:5:0:9::/64", "192.0.2.15", "udp"),   // our IPv4 subnet: skipped on its IPv4 side
		lease6("10.5.5.0/24", "fd00:6:0:5::/64", "192.0.2.16", "udp"),   // outside the IPv6 network
		lease6("10.5.6.0/24", "fd00:5:0:1::/64", "192.0.2.17", "udp"),   // our IPv6 subnet
		lease6("10.5.7.0/24", "fd00:5::/56", "192.0.2.18", "udp"),       // overlaps ours
		lease6("10.5.8.0/24", "fd00:5:0:2::/64", "192.0.2.19", "udp"),   // duplicate
		lease6("10.5.9.0/24", "fd00:5:0:9:1::/80", "192.0.2.12", "udp"), // a second, longer one of .12
	}
	tb, _ := buildTable(testNet, ownNet, testExt, leases, 8285)
	var got []string
	for _, sk := range tb.addIPv6(testNet6, ownNet6, leases) {
		got = append(got, sk.Key+": "+sk.Reason)
	}
	want := []string{
		"10.5.5.0-24&fd00:6:0:5::-64: IPv6 subnet fd00:6:0:5::/64 is outside the network fd00:5::/48",
		"10.5.6.0-24&fd00:5:0:1::-64: IPv6 subnet fd00:5:0:1::/64 overlaps this node's own IPv6 subnet fd00:5:0:1::/64",
		"10.5.7.0-24&fd00:5::-56: IPv6 subnet fd00:5::/56 overlaps this node's own IPv6 subnet fd00:5:0:1::/64",
		"10.5.8.0-24&fd00:5:0:2::-64: duplicate IPv6 subnet",
	}
	if !slices.Equal(got, want) {
		t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if tb.six.subnets != 2 || tb.six.tunAddr != netip.MustParseAddr("fd00:5:0:1::") || len(tb.six.levels) != 2 || tb.six.levels[0].bits != 80 {
		t.Errorf("IPv6 side: %+v", tb.six)
	}
	for dst, want := range map[string]string{"fd00:5:0:2::2": "192.0.2.12:8285", "fd00:5:0:9:1::5": "192.0.2.12:8285", "fd00:5:0:4::2": "", "fd00:5:0:9::2": ""} {
		p := tb.six.lookup(netip.MustParseAddr(dst))
		if (p == nil) != (want == "") || p != nil && p.outer.String() != want {
			t.Errorf("lookup(%s) = %v, want %q", dst, p, want)
		}
	}
}

func TestRouteTxAcceptRxIPv6(t *testing.T) {
	tb := testTable6(t)
	udp := []byte{0, 1, 0, 2, 0, 12, 0, 0, 'h', 'i', '!', '!'}
	tests := []struct {
		name  string
		pkt   []byte
		want  reason
		outer string // routeTx: the peer; acceptRx: from
	}{
		{"tx to a peer", pkt6("fd00:5:0:1::2", "fd00:5:0:3::2", 17, udp...), reasonOK, "192.0.2.13:8285"},
		{"tx no route", pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 17, udp...), reasonNoRoute, ""},
		{"tx multicast chatter", pkt6("fe80::1", "ff02::2", 58, 133, 0, 0, 0, 0, 0, 0, 0), reasonNotIPv4, ""},
		{"tx link-local", pkt6("fe80::1", "fe80::2", 17, udp...), reasonNotIPv4, ""},
		{"tx short", pkt6("fd00:5:0:1::2", "fd00:5:0:3::2", 17, udp...)[:39], reasonMalformed, ""},
		{"tx payload length beyond the data", with(pkt6("fd00:5:0:1::2", "fd00:5:0:3::2", 17, udp...), func(p []byte) { p[5]++ }), reasonMalformed, ""},
	}
	for _, tt := range tests {
		p, h, r := tb.routeTx(tt.pkt)
		if r != tt.want || (p == nil) != (tt.outer == "") || p != nil && p.outer.String() != tt.outer {
			t.Errorf("%s: routeTx = %v %v, want %v %s", tt.name, p, r, tt.want, tt.outer)
		}
		if r == reasonOK && (!h.v6 || h.totalLen != len(tt.pkt)) {
			t.Errorf("%s: header %+v", tt.name, h)
		}
	}
	rx := []struct {
		name, from string
		pkt        []byte
		want       reason
	}{
		{"from the peer", "192.0.2.12", pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udp...), reasonOK},
		{"trailing bytes", "192.0.2.12", append(pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udp...), 0, 0), reasonOK},
		{"inner source of another peer", "192.0.2.12", pkt6("fd00:5:0:3::2", "fd00:5:0:1::2", 17, udp...), reasonBadInnerSource},
		{"inner source outside every subnet", "192.0.2.12", pkt6("2001:db8::99", "fd00:5:0:1::2", 17, udp...), reasonBadInnerSource},
		{"inner destination not ours", "192.0.2.12", pkt6("fd00:5:0:2::2", "fd00:5:0:3::2", 17, udp...), reasonNotOurSubnet},
		{"unknown outer source", "192.0.2.99", pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udp...), reasonUnknownPeer},
		{"malformed", "192.0.2.12", pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udp...)[:30], reasonMalformed},
	}
	for _, tt := range rx {
		n, r := tb.acceptRx(netip.MustParseAddr(tt.from), tt.pkt)
		if r != tt.want || r == reasonOK && n != ipv6Header+len(udp) {
			t.Errorf("%s: acceptRx = %d %v, want %v", tt.name, n, r, tt.want)
		}
	}
	// Without an IPv6 side (an IPv4 network), IPv6 packets are neither sent nor accepted, as before.
	v4only := testTable(t)
	if _, _, r := v4only.routeTx(tests[0].pkt); r != reasonNotIPv4 {
		t.Errorf("IPv4-only table: routeTx(IPv6) = %v, want not IPv4", r)
	}
	if _, r := v4only.acceptRx(netip.MustParseAddr("192.0.2.12"), rx[0].pkt); r != reasonMalformed {
		t.Errorf("IPv4-only table: acceptRx(IPv6) = %v, want malformed", r)
	}
}

func TestBuildUnreachable6(t *testing.T) {
	tb := testTable6(t)
	out := make([]byte, icmpMaxLen)
	udp := []byte{0, 1, 0, 2, 0, 12, 0, 0, 'h', 'i', '!', '!'}
	nr := pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 17, udp...)
	_, h, _ := tb.routeTx(nr)
	n := tb.unreachable(out, nr, h)
	if n != icmpMaxLen { // the offender's header and 8 bytes of its payload
		t.Fatalf("length %d, want %d", n, icmpMaxLen)
	}
	m := out[:n]
	if m[0] != 0x60 || m[6] != 58 || netip.AddrFrom16([16]byte(m[8:24])).String() != "fd00:5:0:1::" ||
		netip.AddrFrom16([16]byte(m[24:40])).String() != "fd00:5:0:1::2" || m[40] != 1 || m[41] != 0 ||
		int(binary.BigEndian.Uint16(m[4:6])) != n-ipv6Header || string(m[48:]) != string(nr[:icmp6Quote]) {
		t.Errorf("message % x", m)
	}
	// The checksum over the pseudo-header and the message verifies (sums to all ones).
	var pseudo [8]byte
	binary.BigEndian.PutUint32(pseudo[:4], uint32(n-ipv6Header))
	pseudo[7] = 58
	if s := fold(sum16(m[8:40], sum16(pseudo[:], sum16(m[40:], 0)))); s != 0xffff {
		t.Errorf("checksum does not verify: sum %#x", s)
	}
	// A short packet is quoted whole.
	short := pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 59)
	if n := buildUnreachable6(out, short, tb.six.tunAddr); n != ipv6Header+8+len(short) {
		t.Errorf("short packet: length %d, want %d", n, ipv6Header+8+len(short))
	}
	for name, p := range map[string][]byte{
		"about an ICMPv6 error": pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 58, 1, 0, 0, 0, 0, 0, 0, 0),
		"unspecified source":    pkt6("::", "fd00:5:0:7::2", 17, udp...),
		"multicast destination": pkt6("fd00:5:0:1::2", "ff05::2", 17, udp...),
		"a non-first fragment":  pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 44, 17, 0, 0, 8, 0, 0, 0, 1),
	} {
		if n := buildUnreachable6(out, p, tb.six.tunAddr); n != 0 {
			t.Errorf("%s: built %d bytes, want none", name, n)
		}
	}
	if n := buildUnreachable6(out, pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 58, 128, 0, 0, 0), tb.six.tunAddr); n == 0 {
		t.Errorf("about an echo request: no message")
	}
	if n := buildUnreachable6(out, nr, netip.Addr{}); n != 0 {
		t.Errorf("without a source: built %d bytes", n)
	}
}

// TestHotPathAllocs6: the per-packet work for IPv6 allocates nothing either.
func TestHotPathAllocs6(t *testing.T) {
	tb := testTable6(t)
	udp := []byte{0, 1, 0, 2, 0, 12, 0, 0, 'h', 'i', '!', '!'}
	tx := pkt6("fd00:5:0:1::2", "fd00:5:0:3::2", 17, udp...)
	rx := pkt6("fd00:5:0:2::2", "fd00:5:0:1::2", 17, udp...)
	nr := pkt6("fd00:5:0:1::2", "fd00:5:0:7::2", 17, udp...)
	peer := netip.MustParseAddr("192.0.2.12")
	out := make([]byte, icmpMaxLen)
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, r := tb.routeTx(tx); r != reasonOK {
			t.Fatal(r)
		}
		if _, r := tb.acceptRx(peer, rx); r != reasonOK {
			t.Fatal(r)
		}
		_, h, _ := tb.routeTx(nr)
		if tb.unreachable(out, nr, h) == 0 {
			t.Fatal("no ICMPv6")
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet, want 0", allocs)
	}
}

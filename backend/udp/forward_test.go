package udp

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// pkt builds an IPv4 packet: header of hdrLen bytes (options zero-filled) with a correct checksum, protocol
// proto, then payload. Total Length covers header and payload.
func pkt(src, dst string, proto uint8, hdrLen int, payload ...byte) []byte {
	p := make([]byte, hdrLen+len(payload))
	p[0] = 0x40 | byte(hdrLen/4)
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8], p[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:hdrLen]))
	copy(p[hdrLen:], payload)
	return p
}

// with returns a copy of p with f applied.
func with(p []byte, f func([]byte)) []byte {
	p = slices.Clone(p)
	f(p)
	return p
}

var (
	udpPayload = []byte{0x0f, 0xa0, 0x23, 0x8f, 0, 12, 0, 0, 'd', 'a', 't', 'a'} // UDP 4000 → 9103, "data"
	echo       = []byte{8, 0, 0xf7, 0xfe, 0, 1, 0, 0}                            // ICMP echo request, id 1 seq 0
)

func TestParseIPv4(t *testing.T) {
	good := pkt("10.5.1.2", "10.5.2.2", 17, 20, udpPayload...)
	for _, tc := range []struct {
		name string
		b    []byte
		want ipv4
		r    reason
	}{
		{"empty", nil, ipv4{}, reasonMalformed},
		{"IPv6", []byte{0x60, 0, 0, 0}, ipv4{}, reasonNotIPv4},
		{"version 0", make([]byte, 40), ipv4{}, reasonNotIPv4},
		{"one byte", []byte{0x45}, ipv4{}, reasonMalformed},
		{"19 bytes", good[:19], ipv4{}, reasonMalformed},
		{"IHL 4", with(good, func(p []byte) { p[0] = 0x44 }), ipv4{}, reasonMalformed},
		{"IHL beyond the data", with(good[:24], func(p []byte) { p[0] = 0x47; binary.BigEndian.PutUint16(p[2:], 24) }), ipv4{}, reasonMalformed},
		{"total length below IHL", with(good, func(p []byte) { binary.BigEndian.PutUint16(p[2:], 19) }), ipv4{}, reasonMalformed},
		{"total length beyond the data", with(good, func(p []byte) { binary.BigEndian.PutUint16(p[2:], uint16(len(good)+1)) }), ipv4{}, reasonMalformed},
		{"total length 0 (TSO-style)", with(good, func(p []byte) { binary.BigEndian.PutUint16(p[2:], 0) }), ipv4{}, reasonMalformed},
		{"good", good, ipv4{hdrLen: 20, totalLen: 32, proto: 17, src: 0x0a050102, dst: 0x0a050202}, reasonOK},
		{"header only", pkt("10.5.1.2", "10.5.2.2", 6, 20), ipv4{hdrLen: 20, totalLen: 20, proto: 6, src: 0x0a050102, dst: 0x0a050202}, reasonOK},
		{"options", pkt("10.5.1.2", "10.5.2.2", 17, 60, udpPayload...), ipv4{hdrLen: 60, totalLen: 72, proto: 17, src: 0x0a050102, dst: 0x0a050202}, reasonOK},
		{"trailing bytes", append(slices.Clone(good), 1, 2, 3), ipv4{hdrLen: 20, totalLen: 32, proto: 17, src: 0x0a050102, dst: 0x0a050202}, reasonOK},
		{"fragment offset, flags masked", with(good, func(p []byte) { p[6], p[7] = 0x20|0x40|0x01, 0x02 }), ipv4{hdrLen: 20, totalLen: 32, fragOff: 0x102, proto: 17, src: 0x0a050102, dst: 0x0a050202}, reasonOK},
	} {
		h, r := parseIPv4(tc.b)
		if h != tc.want || r != tc.r {
			t.Errorf("%s: parseIPv4 = %+v, %v; want %+v, %v", tc.name, h, r, tc.want, tc.r)
		}
	}
}

func TestNetOf(t *testing.T) {
	for _, tc := range []struct {
		p          string
		addr, mask uint32
		in, out    string
	}{
		{"10.5.1.0/24", 0x0a050100, 0xffffff00, "10.5.1.255", "10.5.2.0"},
		{"10.5.1.7/24", 0x0a050100, 0xffffff00, "10.5.1.0", "10.5.0.255"},
		{"10.5.0.0/16", 0x0a050000, 0xffff0000, "10.5.255.1", "10.6.0.0"},
		{"10.5.1.1/32", 0x0a050101, 0xffffffff, "10.5.1.1", "10.5.1.2"},
		{"0.0.0.0/0", 0, 0, "255.255.255.255", ""},
	} {
		n := netOf(netip.MustParsePrefix(tc.p))
		if n.addr != tc.addr || n.mask != tc.mask {
			t.Errorf("netOf(%s) = %#x/%#x, want %#x/%#x", tc.p, n.addr, n.mask, tc.addr, tc.mask)
		}
		if !n.contains(u32(netip.MustParseAddr(tc.in))) {
			t.Errorf("%s does not contain %s", tc.p, tc.in)
		}
		if tc.out != "" && n.contains(u32(netip.MustParseAddr(tc.out))) {
			t.Errorf("%s contains %s", tc.p, tc.out)
		}
	}
	if a := addrOf(0x0a050102); a != netip.MustParseAddr("10.5.1.2") {
		t.Errorf("addrOf = %s", a)
	}
}

func lease(sn, pub, typ string) subnet.Lease {
	l := subnet.Lease{Subnet: netip.MustParsePrefix(sn), Attrs: subnet.Attrs{BackendType: typ}}
	if pub != "" {
		l.Attrs.PublicIP = netip.MustParseAddr(pub)
	}
	return l
}

var (
	testExt = backend.External{Name: "eth0", MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11"), PublicIP: netip.MustParseAddr("192.0.2.11")}
	testNet = netip.MustParsePrefix("10.5.0.0/16")
	ownNet  = netip.MustParsePrefix("10.5.1.0/24")
)

// testTable: own 10.5.1.0/24; peers .12 (10.5.2.0/24 and 10.5.4.0/24: two leases, one PublicIP), .13
// (10.5.3.0/24, flanneld style: no BackendType), .14 (10.5.32.0/20, a shorter prefix containing .15's
// 10.5.33.0/24).
func testTable(t testing.TB) *table {
	t.Helper()
	tb, skipped := buildTable(testNet, ownNet, testExt, []subnet.Lease{
		lease("10.5.2.0/24", "192.0.2.12", "udp"),
		lease("10.5.3.0/24", "192.0.2.13", ""),
		lease("10.5.4.0/24", "192.0.2.12", "udp"),
		lease("10.5.32.0/20", "192.0.2.14", "udp"),
		lease("10.5.33.0/24", "192.0.2.15", "udp"),
	}, 8285)
	if len(skipped) != 0 {
		t.Fatalf("skipped: %v", skipped)
	}
	return tb
}

func TestBuildTable(t *testing.T) {
	tb, skipped := buildTable(testNet, ownNet, testExt, []subnet.Lease{
		lease("10.5.2.0/24", "192.0.2.12", "udp"),
		lease("10.5.3.0/24", "192.0.2.13", ""),
		lease("10.5.5.0/24", "192.0.2.15", "vxlan"),
		lease("10.5.6.0/24", "", "udp"),
		lease("10.5.7.0/24", "0.0.0.0", "udp"),
		lease("10.5.8.0/24", "2001:db8::1", "udp"),
		{Subnet: netip.MustParsePrefix("fd00::/64"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.16")}},
		{Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.17")}},
		lease("10.5.1.0/24", "192.0.2.18", "udp"),         // our own subnet
		lease("10.5.0.0/20", "192.0.2.19", "udp"),         // contains our own
		lease("10.6.1.0/24", "192.0.2.20", "udp"),         // outside the network
		lease("10.0.0.0/8", "192.0.2.21", "udp"),          // contains the network
		lease("192.0.2.0/24", "192.0.2.22", "udp"),        // the underlay
		lease("10.5.2.0/24", "192.0.2.23", "udp"),         // duplicate
		lease("10.5.9.77/24", "192.0.2.24", "udp"),        // unmasked: masked
		lease("10.5.10.0/24", "::ffff:192.0.2.25", "udp"), // 4in6 PublicIP: unmapped
		lease("10.5.11.0/24", "192.0.2.11", "udp"),        // our own PublicIP
	}, 8285)
	wantSkipped := []string{
		`10.5.5.0-24: backend type "vxlan" (quiet)`,
		`10.5.6.0-24: no IPv4 PublicIP`,
		`10.5.7.0-24: its PublicIP 0.0.0.0 is not a unicast address`,
		`10.5.8.0-24: no IPv4 PublicIP`,
		`fd00::-64: no IPv4 subnet`,
		`0.0.0.0-0: no IPv4 subnet`,
		`10.5.1.0-24: it is this node's own subnet`,
		`10.5.0.0-20: subnet 10.5.0.0/20 overlaps this node's own subnet 10.5.1.0/24`,
		`10.6.1.0-24: subnet 10.6.1.0/24 is outside the network 10.5.0.0/16`,
		`10.0.0.0-8: subnet 10.0.0.0/8 is outside the network 10.5.0.0/16`,
		`192.0.2.0-24: subnet 192.0.2.0/24 is outside the network 10.5.0.0/16`,
		`10.5.2.0-24: duplicate subnet`,
		`10.5.11.0-24: its PublicIP 192.0.2.11 is this node's`,
	}
	var got []string
	for _, sk := range skipped {
		g := sk.Key + ": " + sk.Reason
		if sk.Quiet {
			g += " (quiet)"
		}
		got = append(got, g)
	}
	if !slices.Equal(got, wantSkipped) {
		t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(wantSkipped, "\n"))
	}
	if !tb.ownOK || tb.tunAddr != 0x0a050100 || tb.own != (v4net{0x0a050100, 0xffffff00}) {
		t.Errorf("own = %+v ok=%v tunAddr=%#x", tb.own, tb.ownOK, tb.tunAddr)
	}
	if tb.subnets != 4 || len(tb.byOuter) != 4 {
		t.Errorf("table has %d subnets and %d peers, want 4 and 4", tb.subnets, len(tb.byOuter))
	}
	for sn, pub := range map[string]string{"10.5.2.1": "192.0.2.12:8285", "10.5.3.1": "192.0.2.13:8285", "10.5.9.1": "192.0.2.24:8285", "10.5.10.1": "192.0.2.25:8285"} {
		p := tb.lookup(u32(netip.MustParseAddr(sn)))
		if p == nil || p.outer.String() != pub {
			t.Errorf("lookup(%s) = %v, want %s", sn, p, pub)
		}
	}
	if p := tb.lookup(u32(netip.MustParseAddr("10.5.5.1"))); p != nil {
		t.Errorf("skipped lease routed: %v", p.outer)
	}

	// Before a lease (own invalid): peers are routed but nothing is accepted, and no ICMP source.
	tb, _ = buildTable(testNet, netip.Prefix{}, testExt, []subnet.Lease{lease("10.5.2.0/24", "192.0.2.12", "udp")}, 8285)
	if tb.ownOK || tb.tunAddr != 0 || tb.lookup(0x0a050201) == nil {
		t.Errorf("table without own lease: %+v", tb)
	}
}

func TestLookupLongestPrefix(t *testing.T) {
	tb := testTable(t)
	if len(tb.levels) != 2 || tb.levels[0].mask != 0xffffff00 || tb.levels[1].mask != 0xfffff000 {
		t.Fatalf("levels not longest first: %+v", tb.levels)
	}
	for dst, want := range map[string]string{
		"10.5.2.9":    "192.0.2.12:8285",
		"10.5.4.9":    "192.0.2.12:8285",
		"10.5.3.255":  "192.0.2.13:8285",
		"10.5.32.1":   "192.0.2.14:8285",
		"10.5.47.255": "192.0.2.14:8285",
		"10.5.33.1":   "192.0.2.15:8285", // the /24 inside the /20
		"10.5.1.2":    "",                // our own
		"10.5.99.2":   "",
		"10.5.48.0":   "",
		"192.0.2.12":  "",
	} {
		got := ""
		if p := tb.lookup(u32(netip.MustParseAddr(dst))); p != nil {
			got = p.outer.String()
		}
		if got != want {
			t.Errorf("lookup(%s) = %q, want %q", dst, got, want)
		}
	}
	if emptyTable().lookup(0x0a050201) != nil {
		t.Error("empty table routes")
	}
}

func TestRouteTx(t *testing.T) {
	tb := testTable(t)
	good := pkt("10.5.1.2", "10.5.2.2", 17, 20, udpPayload...)
	for _, tc := range []struct {
		name  string
		b     []byte
		outer string
		n     int
		r     reason
	}{
		{"to a peer", good, "192.0.2.12:8285", 32, reasonOK},
		{"trailing bytes are not sent", append(slices.Clone(good), 0, 0, 0, 0), "192.0.2.12:8285", 32, reasonOK},
		{"to the second subnet of a peer", pkt("10.5.1.2", "10.5.4.2", 1, 20, echo...), "192.0.2.12:8285", 28, reasonOK},
		{"TTL 1 is forwarded unchanged (not decremented)", with(good, func(p []byte) { p[8] = 1 }), "192.0.2.12:8285", 32, reasonOK},
		{"no lease", pkt("10.5.1.2", "10.5.99.2", 17, 20, udpPayload...), "", 32, reasonNoRoute},
		{"IPv6", []byte{0x60, 0, 0, 0, 0, 0, 58, 255}, "", 0, reasonNotIPv4},
		{"malformed", good[:10], "", 0, reasonMalformed},
	} {
		p, h, r := tb.routeTx(tc.b)
		got := ""
		if p != nil {
			got = p.outer.String()
		}
		if got != tc.outer || r != tc.r || (r == reasonOK || r == reasonNoRoute) && h.totalLen != tc.n {
			t.Errorf("%s: routeTx = %q, len %d, %v; want %q, %d, %v", tc.name, got, h.totalLen, r, tc.outer, tc.n, tc.r)
		}
	}
	if _, _, r := emptyTable().routeTx(good); r != reasonNoRoute {
		t.Errorf("empty table: %v", r)
	}
}

func TestAcceptRx(t *testing.T) {
	tb := testTable(t)
	good := pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...)
	peer2 := netip.MustParseAddr("192.0.2.12")
	for _, tc := range []struct {
		name  string
		outer netip.Addr
		b     []byte
		n     int
		r     reason
	}{
		{"good", peer2, good, 32, reasonOK},
		{"4in6 outer", netip.MustParseAddr("::ffff:192.0.2.12"), good, 32, reasonOK},
		{"from the peer's second subnet", peer2, pkt("10.5.4.200", "10.5.1.2", 1, 20, echo...), 28, reasonOK},
		{"flanneld peer (no BackendType)", netip.MustParseAddr("192.0.2.13"), pkt("10.5.3.2", "10.5.1.255", 6, 24), 24, reasonOK},
		{"trailing bytes are dropped", peer2, append(slices.Clone(good), 9, 9), 32, reasonOK},
		{"to the TUN address", peer2, pkt("10.5.2.2", "10.5.1.0", 1, 20, echo...), 28, reasonOK},
		{"IP options", peer2, pkt("10.5.2.2", "10.5.1.2", 17, 44, udpPayload...), 56, reasonOK},
		{"unknown outer source", netip.MustParseAddr("192.0.2.99"), good, 0, reasonUnknownPeer},
		{"IPv6 outer source", netip.MustParseAddr("2001:db8::12"), good, 0, reasonUnknownPeer},
		{"invalid outer source", netip.Addr{}, good, 0, reasonUnknownPeer},
		{"unknown peer wins over malformed", netip.MustParseAddr("192.0.2.99"), []byte{1}, 0, reasonUnknownPeer},
		{"inner source of another peer", peer2, pkt("10.5.3.2", "10.5.1.2", 17, 20, udpPayload...), 0, reasonBadInnerSource},
		{"inner source in our subnet", peer2, pkt("10.5.1.7", "10.5.1.2", 17, 20, udpPayload...), 0, reasonBadInnerSource},
		{"inner source outside the network", peer2, pkt("192.0.2.12", "10.5.1.2", 17, 20, udpPayload...), 0, reasonBadInnerSource},
		{"inner source our underlay", peer2, pkt("192.0.2.11", "10.5.1.2", 17, 20, udpPayload...), 0, reasonBadInnerSource},
		{"inner source loopback", peer2, pkt("127.0.0.1", "10.5.1.2", 17, 20, udpPayload...), 0, reasonBadInnerSource},
		{"a /20 peer sourcing from its /20", netip.MustParseAddr("192.0.2.14"), pkt("10.5.32.9", "10.5.1.2", 17, 20), 20, reasonOK},
		{"inner destination another peer's (no relaying)", peer2, pkt("10.5.2.2", "10.5.3.2", 17, 20, udpPayload...), 0, reasonNotOurSubnet},
		{"inner destination outside the network", peer2, pkt("10.5.2.2", "192.0.2.11", 17, 20, udpPayload...), 0, reasonNotOurSubnet},
		{"inner destination the sender's own subnet", peer2, pkt("10.5.2.2", "10.5.2.3", 17, 20, udpPayload...), 0, reasonNotOurSubnet},
		{"empty", peer2, nil, 0, reasonMalformed},
		{"IPv6 inner", peer2, []byte{0x60, 0, 0, 0, 0, 8, 17, 64}, 0, reasonMalformed},
		{"short", peer2, good[:19], 0, reasonMalformed},
		{"total length beyond the datagram", peer2, good[:31], 0, reasonMalformed},
	} {
		n, r := tb.acceptRx(tc.outer, tc.b)
		if n != tc.n || r != tc.r {
			t.Errorf("%s: acceptRx = %d, %v; want %d, %v", tc.name, n, r, tc.n, tc.r)
		}
	}
	// The owner of 10.5.33.0/24 (inside .14's /20) may not source from the rest of the /20.
	if _, r := tb.acceptRx(netip.MustParseAddr("192.0.2.15"), pkt("10.5.34.1", "10.5.1.2", 17, 20)); r != reasonBadInnerSource {
		t.Errorf("/24 peer sourcing from the /20: %v", r)
	}
	// Before the first Set nothing is accepted.
	if _, r := emptyTable().acceptRx(peer2, good); r != reasonUnknownPeer {
		t.Errorf("empty table: %v", r)
	}
	noOwn, _ := buildTable(testNet, netip.Prefix{}, testExt, []subnet.Lease{lease("10.5.2.0/24", "192.0.2.12", "udp")}, 8285)
	if _, r := noOwn.acceptRx(peer2, good); r != reasonNotOurSubnet {
		t.Errorf("table without own lease: %v", r)
	}
}

// verifyICMP checks that b is an ICMP destination unreachable (net) from src to dst quoting quote, with
// correct checksums, and returns nothing; it reports through t.
func verifyICMP(t *testing.T, name string, b []byte, src, dst string, quote []byte) {
	t.Helper()
	h, r := parseIPv4(b)
	if r != reasonOK || h.totalLen != len(b) || h.hdrLen != 20 || h.proto != 1 || h.fragOff != 0 {
		t.Fatalf("%s: bad IP header %+v %v: % x", name, h, r, b)
	}
	if addrOf(h.src).String() != src || addrOf(h.dst).String() != dst {
		t.Errorf("%s: %s → %s, want %s → %s", name, addrOf(h.src), addrOf(h.dst), src, dst)
	}
	if b[8] != 64 || b[1] != 0xc0 {
		t.Errorf("%s: TTL %d TOS %#x", name, b[8], b[1])
	}
	if checksum(b[:20]) != 0 {
		t.Errorf("%s: bad IP header checksum", name)
	}
	icmp := b[20:]
	if checksum(icmp) != 0 {
		t.Errorf("%s: bad ICMP checksum", name)
	}
	if icmp[0] != 3 || icmp[1] != 0 || binary.BigEndian.Uint32(icmp[4:8]) != 0 {
		t.Errorf("%s: ICMP type/code/unused % x, want 03 00 .. .. 00 00 00 00", name, icmp[:8])
	}
	if !slices.Equal(icmp[8:], quote) {
		t.Errorf("%s: quote\n% x\nwant\n% x", name, icmp[8:], quote)
	}
}

func TestBuildUnreachable(t *testing.T) {
	tun := uint32(0x0a050100)
	long := pkt("10.5.1.2", "10.5.99.2", 17, 20, append(slices.Clone(udpPayload), make([]byte, 100)...)...)
	withOpts := pkt("10.5.1.2", "10.5.99.2", 6, 60, make([]byte, 40)...)
	for _, tc := range []struct {
		name  string
		b     []byte
		src   uint32
		quote int // bytes of b quoted; 0: no ICMP
	}{
		{"UDP", long, tun, 28},
		{"header with options", withOpts, tun, 68},
		{"payload shorter than 8 bytes", pkt("10.5.1.2", "10.5.99.2", 17, 20, 1, 2, 3), tun, 23},
		{"no payload", pkt("10.5.1.2", "10.5.99.2", 6, 20), tun, 20},
		{"ICMP echo request", pkt("10.5.1.2", "10.5.99.2", 1, 20, echo...), tun, 28},
		{"ICMP echo reply", pkt("10.5.1.2", "10.5.99.2", 1, 20, 0, 0, 0, 0, 0, 0, 0, 0), tun, 28},
		{"ICMP timestamp", pkt("10.5.1.2", "10.5.99.2", 1, 20, 13, 0, 0, 0), tun, 24},
		{"first fragment (MF set)", with(long, func(p []byte) { p[6] = 0x20 }), tun, 28},
		{"DF set", with(long, func(p []byte) { p[6] = 0x40 }), tun, 28},
		{"TUN address as source (node-local)", pkt("10.5.1.0", "10.5.99.2", 17, 20, udpPayload...), tun, 28},
		{"ICMP dest unreachable", pkt("10.5.1.2", "10.5.99.2", 1, 20, 3, 1, 0, 0, 0, 0, 0, 0), tun, 0},
		{"ICMP time exceeded", pkt("10.5.1.2", "10.5.99.2", 1, 20, 11, 0, 0, 0, 0, 0, 0, 0), tun, 0},
		{"ICMP redirect", pkt("10.5.1.2", "10.5.99.2", 1, 20, 5, 0, 0, 0), tun, 0},
		{"ICMP parameter problem", pkt("10.5.1.2", "10.5.99.2", 1, 20, 12, 0, 0, 0), tun, 0},
		{"ICMP source quench", pkt("10.5.1.2", "10.5.99.2", 1, 20, 4, 0, 0, 0), tun, 0},
		{"ICMP unknown type", pkt("10.5.1.2", "10.5.99.2", 1, 20, 42, 0, 0, 0), tun, 0},
		{"ICMP without a type byte", pkt("10.5.1.2", "10.5.99.2", 1, 20), tun, 0},
		{"non-first fragment", with(long, func(p []byte) { p[7] = 1 }), tun, 0},
		{"last fragment", with(long, func(p []byte) { p[6] = 0x10 }), tun, 0},
		{"source unspecified", pkt("0.0.0.0", "10.5.99.2", 17, 20, udpPayload...), tun, 0},
		{"source loopback", pkt("127.0.0.1", "10.5.99.2", 17, 20, udpPayload...), tun, 0},
		{"source multicast", pkt("224.0.0.1", "10.5.99.2", 17, 20, udpPayload...), tun, 0},
		{"source broadcast", pkt("255.255.255.255", "10.5.99.2", 17, 20, udpPayload...), tun, 0},
		{"source class E", pkt("240.0.0.1", "10.5.99.2", 17, 20, udpPayload...), tun, 0},
		{"destination multicast", pkt("10.5.1.2", "239.1.1.1", 17, 20, udpPayload...), tun, 0},
		{"destination broadcast", pkt("10.5.1.2", "255.255.255.255", 17, 20, udpPayload...), tun, 0},
		{"no TUN address yet", long, 0, 0},
	} {
		h, r := parseIPv4(tc.b)
		if r != reasonOK {
			t.Fatalf("%s: test packet does not parse: %v", tc.name, r)
		}
		out := make([]byte, icmpMaxLen)
		n := buildUnreachable(out, tc.b, h, tc.src)
		if tc.quote == 0 {
			if n != 0 {
				t.Errorf("%s: built an ICMP error (%d bytes), want none", tc.name, n)
			}
			continue
		}
		if n != 28+tc.quote {
			t.Errorf("%s: length %d, want %d", tc.name, n, 28+tc.quote)
			continue
		}
		verifyICMP(t, tc.name, out[:n], "10.5.1.0", addrOf(h.src).String(), tc.b[:tc.quote])
	}
	// Too small an output buffer: nothing written.
	h, _ := parseIPv4(long)
	if n := buildUnreachable(make([]byte, icmpMaxLen-1), long, h, tun); n != 0 {
		t.Errorf("short buffer: %d", n)
	}
}

// TestBuildUnreachableGolden pins the exact bytes for one packet (checksums computed independently).
func TestBuildUnreachableGolden(t *testing.T) {
	in := pkt("10.5.1.2", "10.5.99.2", 1, 20, echo...)
	h, _ := parseIPv4(in)
	out := make([]byte, icmpMaxLen)
	n := buildUnreachable(out, in, h, 0x0a050100)
	want := []byte{
		0x45, 0xc0, 0x00, 0x38, 0x00, 0x00, 0x00, 0x00, 0x40, 0x01, 0x63, 0xfa, // IP: len 56, TTL 64, ICMP
		0x0a, 0x05, 0x01, 0x00, 0x0a, 0x05, 0x01, 0x02, // 10.5.1.0 → 10.5.1.2
		0x03, 0x00, 0xfc, 0xff, 0x00, 0x00, 0x00, 0x00, // type 3 code 0, checksum, unused
	}
	want = append(want, in...)
	if !slices.Equal(out[:n], want) {
		t.Errorf("got\n% x\nwant\n% x", out[:n], want)
	}
}

func TestChecksum(t *testing.T) {
	// RFC 1071 section 3's example: the one's complement sum of these bytes is 0xddf2.
	if got := checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("RFC 1071 example: %#04x, want %#04x", got, ^uint16(0xddf2))
	}
	if got := checksum([]byte{0x01}); got != ^uint16(0x0100) {
		t.Errorf("odd length: %#04x", got)
	}
	if got := checksum(nil); got != 0xffff {
		t.Errorf("empty: %#04x", got)
	}
	// A well-known IPv4 header (Wikipedia's example) whose checksum is 0xb861.
	hdr := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if got := checksum(hdr); got != 0xb861 {
		t.Errorf("IPv4 header: %#04x, want 0xb861", got)
	}
}

func TestTokenBucket(t *testing.T) {
	b := tokenBucket{rate: 10, burst: 3}
	now := time.Unix(1000, 0)
	for i := range 3 {
		if !b.allow(now) {
			t.Fatalf("burst: denied at %d", i)
		}
	}
	if b.allow(now) {
		t.Fatal("allowed beyond the burst")
	}
	if b.allow(now.Add(50 * time.Millisecond)) {
		t.Fatal("allowed after half a token")
	}
	if !b.allow(now.Add(100 * time.Millisecond)) {
		t.Fatal("denied after a full token")
	}
	if b.allow(now.Add(50 * time.Millisecond)) { // time going backwards adds nothing
		t.Fatal("allowed with time going backwards")
	}
	got, later := 0, now.Add(time.Hour)
	for b.allow(later) {
		got++
	}
	if got != 3 {
		t.Fatalf("after a long pause: %d allowed, want the burst of 3", got)
	}
}

func TestReasonString(t *testing.T) {
	for r := reasonOK; r <= reasonNoRoute; r++ {
		if s := r.String(); s == "" || strings.HasPrefix(s, "reason(") {
			t.Errorf("reason %d has no name", r)
		}
	}
	if s := reason(200).String(); s != "reason(200)" {
		t.Errorf("unknown reason: %q", s)
	}
}

func TestStatsKeys(t *testing.T) {
	seen := map[string]bool{}
	for k, name := range counterNames {
		if name == "" || seen[name] || strings.ToLower(name) != name || strings.ContainsAny(name, " -.") {
			t.Errorf("counter %d: bad or duplicate name %q", k, name)
		}
		seen[name] = true
	}
	var rx, tx counters
	rx.inc(dropUnknownPeer)
	tx.inc(dropUnknownPeer)
	tx.add(txBytes, 1500)
	m := sumStats(&rx, &tx)
	if len(m) != int(numCounters) || m["drop_unknown_peer"] != 2 || m["tx_bytes"] != 1500 || m["rx_packets"] != 0 {
		t.Errorf("sumStats = %v", m)
	}
	for _, r := range []reason{reasonMalformed, reasonNotIPv4, reasonUnknownPeer, reasonBadInnerSource, reasonNotOurSubnet} {
		if int(r) >= len(rxDrop) || (rxDrop[r] == 0 && r != reasonOK) {
			t.Errorf("receive verdict %v has no counter", r)
		}
	}
}

// TestHotPathAllocs: the per-packet work allocates nothing.
func TestHotPathAllocs(t *testing.T) {
	tb := testTable(t)
	tx := pkt("10.5.1.2", "10.5.33.2", 17, 20, udpPayload...)
	rx := pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...)
	nr := pkt("10.5.1.2", "10.5.99.2", 17, 20, udpPayload...)
	peer := netip.MustParseAddr("192.0.2.12")
	out := make([]byte, icmpMaxLen)
	var c counters
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, r := tb.routeTx(tx); r != reasonOK {
			t.Fatal(r)
		}
		if _, r := tb.acceptRx(peer, rx); r != reasonOK {
			t.Fatal(r)
		}
		_, h, _ := tb.routeTx(nr)
		if buildUnreachable(out, nr, h, tb.tunAddr) == 0 {
			t.Fatal("no ICMP")
		}
		c.inc(rxDrop[reasonBadInnerSource])
	})
	if allocs != 0 {
		t.Errorf("%v allocations per packet, want 0", allocs)
	}
}

func BenchmarkRouteTx(b *testing.B) {
	tb := testTable(b)
	p := pkt("10.5.1.2", "10.5.33.2", 17, 20, udpPayload...)
	for b.Loop() {
		tb.routeTx(p)
	}
}

func BenchmarkAcceptRx(b *testing.B) {
	tb := testTable(b)
	p := pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...)
	peer := netip.MustParseAddr("192.0.2.12")
	for b.Loop() {
		tb.acceptRx(peer, p)
	}
}

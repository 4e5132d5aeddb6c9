package udp

import (
	"net/netip"
	"testing"
)

// Fuzz tests of the parse and decision paths; `go test` runs their seeds. Run longer with
//
//	go test -run '^$' -fuzz FuzzAcceptRx ./backend/udp
//	go test -run '^$' -fuzz FuzzRouteTx ./backend/udp

func fuzzSeeds(f *testing.F, peerOuter []byte) {
	for _, p := range [][]byte{
		nil,
		{0x45},
		{0x60, 0, 0, 0},
		pkt("10.5.2.2", "10.5.1.2", 17, 20, udpPayload...),
		pkt("10.5.2.2", "10.5.1.2", 17, 60, udpPayload...),
		pkt("10.5.3.2", "10.5.1.2", 17, 20, udpPayload...),
		pkt("10.5.2.2", "10.5.99.2", 1, 20, echo...),
		pkt("10.5.2.2", "10.5.99.2", 1, 20, 3, 0, 0, 0),
		pkt("10.5.1.2", "10.5.99.2", 17, 24),
		pkt("10.5.1.2", "10.5.33.2", 6, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
		with(pkt("10.5.1.2", "10.5.99.2", 17, 20, udpPayload...), func(p []byte) { p[2], p[3] = 0xff, 0xff }),
		with(pkt("10.5.1.2", "10.5.99.2", 17, 20, udpPayload...), func(p []byte) { p[0] = 0x4f }),
		with(pkt("10.5.1.2", "10.5.99.2", 17, 20, udpPayload...), func(p []byte) { p[7] = 9 }),
	} {
		f.Add(peerOuter, p)
		f.Add([]byte{192, 0, 2, 99}, p)
	}
}

// FuzzAcceptRx: any datagram from any source gets a verdict without panicking, and an accepted one obeys
// every receive rule.
func FuzzAcceptRx(f *testing.F) {
	fuzzSeeds(f, []byte{192, 0, 2, 12})
	tb := testTable(f)
	f.Fuzz(func(t *testing.T, outer, b []byte) {
		src, ok := netip.AddrFromSlice(outer)
		if !ok {
			src = netip.Addr{}
		}
		n, r := tb.acceptRx(src, b)
		if r != reasonOK {
			if n != 0 {
				t.Fatalf("dropped (%v) with length %d", r, n)
			}
			if int(r) >= len(rxDrop) {
				t.Fatalf("verdict %v has no counter", r)
			}
			return
		}
		h, pr := parseIPv4(b)
		p := tb.byOuter[u32(src.Unmap())]
		switch {
		case pr != reasonOK:
			t.Fatalf("accepted an unparsable packet: %v", pr)
		case n != h.totalLen || n > len(b) || n < ipv4MinHeader:
			t.Fatalf("accepted length %d for total length %d, datagram %d", n, h.totalLen, len(b))
		case p == nil:
			t.Fatalf("accepted from a non-peer %s", src)
		case !p.containsSource(h.src):
			t.Fatalf("accepted inner source %s from peer %s", addrOf(h.src), src)
		case !tb.own.contains(h.dst):
			t.Fatalf("accepted inner destination %s", addrOf(h.dst))
		}
	})
}

// FuzzRouteTx: any TUN packet gets a verdict without panicking; a routed one goes to the peer owning its
// destination; an ICMP error built for an unroutable one is well formed and never about an ICMP error.
func FuzzRouteTx(f *testing.F) {
	fuzzSeeds(f, nil)
	tb := testTable(f)
	out := make([]byte, icmpMaxLen)
	f.Fuzz(func(t *testing.T, _, b []byte) {
		p, h, r := tb.routeTx(b)
		switch r {
		case reasonOK:
			if p == nil || h.totalLen > len(b) || tb.lookup(h.dst) != p {
				t.Fatalf("routed to %v, length %d of %d", p, h.totalLen, len(b))
			}
			return
		case reasonNoRoute:
		default:
			if p != nil {
				t.Fatalf("dropped (%v) but routed", r)
			}
			return
		}
		n := buildUnreachable(out, b, h, tb.tunAddr)
		if n == 0 {
			return
		}
		ih, ir := parseIPv4(out[:n])
		switch {
		case n > icmpMaxLen || ir != reasonOK || ih.totalLen != n || ih.proto != 1:
			t.Fatalf("bad ICMP error: % x", out[:n])
		case checksum(out[:20]) != 0 || checksum(out[20:n]) != 0:
			t.Fatalf("bad checksum: % x", out[:n])
		case ih.dst != h.src || ih.src != tb.tunAddr:
			t.Fatalf("ICMP %s → %s for a packet from %s", addrOf(ih.src), addrOf(ih.dst), addrOf(h.src))
		case h.fragOff != 0:
			t.Fatal("ICMP error for a non-first fragment")
		case h.proto == 1 && !icmpIsQuery(b[h.hdrLen]):
			t.Fatal("ICMP error about an ICMP error")
		}
	})
}

package kernel

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// routeMsg builds an RTM_NEWROUTE/RTM_DELROUTE payload: an rtmsg and the given attributes.
func routeMsg(protocol uint8, dst netip.Prefix, attrs ...*nl.RtAttr) []byte {
	m := nl.NewRtMsg()
	m.Family, m.Dst_len, m.Protocol = unix.AF_INET, uint8(dst.Bits()), protocol
	b := m.Serialize()
	b = append(b, nl.NewRtAttr(unix.RTA_DST, dst.Addr().AsSlice()).Serialize()...)
	for _, a := range attrs {
		b = append(b, a.Serialize()...)
	}
	return b
}

func TestDecodeOurRouteNexthop(t *testing.T) {
	dst := netip.MustParsePrefix("10.5.2.0/24")
	gw := nl.NewRtAttr(unix.RTA_GATEWAY, netip.MustParseAddr("10.5.2.0").AsSlice())
	oif := nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(7))
	tests := []struct {
		name   string
		msg    []byte
		want   Route
		wantID uint32
		ok     bool
	}{
		{"plain", routeMsg(RouteProtocol, dst, gw, oif),
			Route{Dst: dst, Gw: netip.MustParseAddr("10.5.2.0"), LinkIndex: 7}, 0, true},
		{"through an object, dumped with its gateway (nexthop_compat_mode 1)", routeMsg(RouteProtocol, dst, nl.NewRtAttr(rtaNHID, nl.Uint32Attr(1<<24+5)), gw, oif),
			Route{Dst: dst, Gw: netip.MustParseAddr("10.5.2.0"), LinkIndex: 7, Nexthop: true}, 1<<24 + 5, true},
		{"not ours", routeMsg(unix.RTPROT_BOOT, dst, nl.NewRtAttr(rtaNHID, nl.Uint32Attr(9)), gw, oif), Route{}, 0, false},
		{"short", []byte{unix.AF_INET, 24}, Route{}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, id, ok := decodeOurRoute(tt.msg)
			if r != tt.want || id != tt.wantID || ok != tt.ok {
				t.Errorf("decodeOurRoute = %v, %d, %t; want %v, %d, %t", r, id, ok, tt.want, tt.wantID, tt.ok)
			}
			if got := routeNHID(tt.msg); tt.ok && got != tt.wantID {
				t.Errorf("routeNHID = %d, want %d", got, tt.wantID)
			}
		})
	}
}

func TestDecodeNexthopGone(t *testing.T) {
	msg := func(protocol uint8, attrs ...*nl.RtAttr) []byte {
		b := (&nhmsg{unix.Nhmsg{Family: unix.AF_INET, Protocol: protocol}}).Serialize()
		for _, a := range attrs {
			b = append(b, a.Serialize()...)
		}
		return b
	}
	tests := []struct {
		name string
		data []byte
		want Event
		ok   bool
	}{
		{"ours", msg(RouteProtocol, nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(42)), nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(3))), Event{Kind: NexthopGone, ID: 42}, true},
		{"another protocol's", msg(unix.RTPROT_STATIC, nl.NewRtAttr(unix.NHA_ID, nl.Uint32Attr(42))), Event{}, false},
		{"no ID", msg(RouteProtocol, nl.NewRtAttr(unix.NHA_OIF, nl.Uint32Attr(3))), Event{}, false},
		{"short", []byte{unix.AF_INET}, Event{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := decodeEvent(unix.RTM_DELNEXTHOP, tt.data); got != tt.want || ok != tt.ok {
				t.Errorf("decodeEvent = %v, %t; want %v, %t", got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestNexthopIDs checks that the IDs searched for a destination's object stay in our range, start where
// the destination's hash says (the same across restarts) and wrap.
func TestNexthopIDs(t *testing.T) {
	a, b := netip.MustParsePrefix("10.5.1.0/24"), netip.MustParsePrefix("10.5.2.0/24")
	if firstID(a) != firstID(a) || firstID(a) == firstID(b) {
		t.Errorf("firstID: %d, %d for %s, %s", firstID(a), firstID(b), a, b)
	}
	for _, p := range []netip.Prefix{a, b, netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("255.255.255.0/24")} {
		if id := firstID(p); id < nhIDBase || id >= nhIDBase+nhIDSpan {
			t.Errorf("firstID(%s) = %d, outside [%d, %d)", p, id, nhIDBase, nhIDBase+nhIDSpan)
		}
	}
	if got := nextID(nhIDBase + nhIDSpan - 1); got != nhIDBase {
		t.Errorf("nextID(last) = %d, want %d", got, nhIDBase)
	}
}

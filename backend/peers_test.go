package backend

import (
	"log/slog"
	"maps"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

func TestCheckPeer(t *testing.T) {
	a := netip.MustParseAddr
	ext := External{Name: "eth0", Index: 2, MTU: 1500, Addr: a("192.0.2.11"), PublicIP: a("198.51.100.11")}
	own := netip.MustParsePrefix("10.5.1.0/24")
	network := netip.MustParsePrefix("10.5.0.0/16")
	lease := func(sub, pub string) subnet.Lease {
		var l subnet.Lease
		if sub != "" {
			l.Subnet = netip.MustParsePrefix(sub)
		}
		if pub != "" {
			l.Attrs.PublicIP = a(pub)
		}
		return l
	}
	for _, tt := range []struct {
		lease     subnet.Lease
		noNetwork bool
		want      string
		kind      SkipKind
	}{
		{lease: lease("10.5.2.0/24", "192.0.2.12"), want: "", kind: ""},
		{lease: lease("", "192.0.2.12"), want: "no IPv4 subnet", kind: SkipNoSubnet},
		{lease: lease("fd00::/64", "192.0.2.12"), want: "no IPv4 subnet", kind: SkipNoSubnet},
		{lease: lease("10.5.2.0/24", ""), want: "no IPv4 PublicIP", kind: SkipBadPublicIP},
		{lease: lease("10.5.2.0/24", "2001:db8::1"), want: "no IPv4 PublicIP", kind: SkipBadPublicIP},
		// Garbage PublicIPs: host-gw's route via them fails (network is unreachable) on every Set, or for
		// 0.0.0.0 becomes a device route onto the underlay.
		{lease: lease("10.5.2.0/24", "0.0.0.0"), want: "its PublicIP 0.0.0.0 is not a unicast address", kind: SkipBadPublicIP},
		{lease: lease("10.5.2.0/24", "127.0.0.1"), want: "its PublicIP 127.0.0.1 is not a unicast address", kind: SkipBadPublicIP},
		{lease: lease("10.5.2.0/24", "224.0.0.1"), want: "its PublicIP 224.0.0.1 is not a unicast address", kind: SkipBadPublicIP},
		{lease: lease("10.5.2.0/24", "255.255.255.255"), want: "its PublicIP 255.255.255.255 is not a unicast address", kind: SkipBadPublicIP},
		{lease: lease("10.5.1.0/24", "192.0.2.12"), want: "it is this node's own subnet", kind: SkipOwnSubnet},
		{lease: lease("10.5.1.7/24", "192.0.2.12"), want: "it is this node's own subnet", kind: SkipOwnSubnet},
		// A longer prefix inside our subnet would win over our own route and steal part of it; a shorter one
		// containing it is as broken (allocation never hands out overlapping subnets).
		{lease: lease("10.5.1.128/25", "192.0.2.12"), want: "subnet 10.5.1.128/25 overlaps this node's own subnet 10.5.1.0/24", kind: SkipOverlapsOwn},
		{lease: lease("10.5.0.0/23", "192.0.2.12"), want: "subnet 10.5.0.0/23 overlaps this node's own subnet 10.5.1.0/24", kind: SkipOverlapsOwn},
		{lease: lease("10.5.2.0/24", "192.0.2.11"), want: "its PublicIP 192.0.2.11 is this node's", kind: SkipBadPublicIP},
		{lease: lease("10.5.2.0/24", "198.51.100.11"), want: "its PublicIP 198.51.100.11 is this node's", kind: SkipBadPublicIP},
		{lease: lease("192.0.2.0/24", "192.0.2.12"), want: "subnet 192.0.2.0/24 is outside the network 10.5.0.0/16", kind: SkipOutsideNetwork},
		{lease: lease("10.0.0.0/8", "192.0.2.12"), want: "subnet 10.0.0.0/8 is outside the network 10.5.0.0/16", kind: SkipOutsideNetwork},
		{lease: lease("10.9.0.0/24", "192.0.2.12"), noNetwork: true, want: "", kind: ""},
		// The first failing check gives the reason.
		{lease: lease("10.5.1.0/24", "192.0.2.11"), want: "it is this node's own subnet", kind: SkipOwnSubnet},
	} {
		n := network
		if tt.noNetwork {
			n = netip.Prefix{}
		}
		if kind, got := CheckPeer(tt.lease, own, ext, n); got != tt.want || kind != tt.kind {
			t.Errorf("CheckPeer(%s via %s, network %s) = %q, %q; want %q, %q", tt.lease.Subnet, tt.lease.Attrs.PublicIP, n, kind, got, tt.kind, tt.want)
		}
	}
}

// skipLogger returns a SkipLog's logger at debug level and what it wrote.
func skipLogger() (*slog.Logger, *strings.Builder) {
	var buf strings.Builder
	return slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

func TestSkipLogWarnsOnce(t *testing.T) {
	log, buf := skipLogger()
	var l SkipLog
	bad := Skip{Key: "192.0.2.0-24", Reason: "outside"}
	other := Skip{Key: "10.5.2.0-24", Reason: "vxlan", Quiet: true}
	l.Log(log, []Skip{bad, other})
	l.Log(log, []Skip{bad, other})
	l.Log(log, nil)
	l.Log(log, []Skip{bad})
	if got := strings.Count(buf.String(), "level=WARN"); got != 2 {
		t.Errorf("%d warnings, want 2 (first time, and again after the lease was fine in between):\n%s", got, buf.String())
	}
	if got := strings.Count(buf.String(), "level=DEBUG"); got != 3 {
		t.Errorf("%d debug lines, want 3:\n%s", got, buf.String())
	}
}

func TestSkipLogWarnsAboutANewReason(t *testing.T) {
	log, buf := skipLogger()
	var l SkipLog
	s1 := Skip{Key: "10.5.2.0-24", Reason: `backend type "host-gw", not "vxlan"`}
	s1b := Skip{Key: "10.5.2.0-24", Reason: "no BackendData"}
	l.Log(log, []Skip{s1})
	l.Log(log, []Skip{s1})
	l.Log(log, []Skip{s1b}) // a new reason is warned about
	if got := strings.Count(buf.String(), "level=WARN"); got != 2 {
		t.Errorf("%d warnings, want 2:\n%s", got, buf.String())
	}
	if got := strings.Count(buf.String(), "level=DEBUG"); got != 1 {
		t.Errorf("%d debug lines, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "lease=10.5.2.0-24") {
		t.Errorf("log does not name the lease key:\n%s", buf.String())
	}
}

// TestSkipLogCounts: a skip is counted by kind when it starts (warned about), not on every Set that keeps
// it; every kind shows, zeros too.
func TestSkipLogCounts(t *testing.T) {
	log, _ := skipLogger()
	var l SkipLog
	bad := Skip{Key: "10.5.2.0-24", Reason: "its PublicIP 0.0.0.0 is not a unicast address", Kind: SkipBadPublicIP}
	mac := Skip{Key: "10.5.3.0-24", Reason: "its VtepMAC 0a:00:00:00:00:01 is lease 10.5.4.0-24's", Kind: SkipDuplicateVtepMAC}
	quiet := Skip{Key: "10.5.5.0-24", Reason: `backend type "udp"`, Kind: SkipBackendType, Quiet: true}
	l.Log(log, []Skip{bad, mac, quiet})
	l.Log(log, []Skip{bad, mac, quiet}) // the same skips: not counted again
	l.Log(log, []Skip{mac})             // bad routed now...
	l.Log(log, []Skip{bad, mac})        // ...and skipped again: counted again
	l.Change(log, []string{mac.Key}, nil)
	l.Change(log, []string{mac.Key}, []Skip{mac}) // skipped again after an update routed it
	got := map[string]uint64{}
	l.AddStats(got)
	want := map[string]uint64{}
	for _, k := range SkipKinds {
		want[`peers_skipped{reason="`+string(k)+`"}`] = 0
	}
	want[`peers_skipped{reason="bad_public_ip"}`] = 2
	want[`peers_skipped{reason="duplicate_vtepmac"}`] = 2
	if !maps.Equal(got, want) {
		t.Errorf("AddStats = %v, want %v", got, want)
	}
}

package kernel_test

import (
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestWatchUnderlay checks in a namespace that link, address and foreign route changes are told, and that
// Weft's own routes (RouteProtocol) are not: programming peers must not wake the underlay check.
func TestWatchUnderlay(t *testing.T) {
	ns := routeNS(t)
	// The kernel adds d0's IPv6 link-local address (and its local route) when duplicate address detection
	// ends, about a second after the link came up: a change the watch rightly tells. Wait for it first, or it
	// lands on whichever case runs then.
	waitLinkLocal(t, ns, "d0")
	var w *kernel.UnderlayWatch
	if err := ns.Do(func() (err error) { w, err = kernel.WatchUnderlay(); return err }); err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	drain := func() {
		time.Sleep(100 * time.Millisecond)
		for {
			select {
			case <-w.Changes():
			default:
				return
			}
		}
	}
	for _, tc := range []struct {
		name string
		ip   []string
		want bool
	}{
		{"own route added", []string{"route", "add", "10.9.1.0/24", "via", "192.0.2.11", "proto", "87"}, false},
		{"own route deleted", []string{"route", "del", "10.9.1.0/24", "via", "192.0.2.11", "proto", "87"}, false},
		{"own IPv6 route added", []string{"route", "add", "2001:db8:9::/64", "dev", "d0", "proto", "87"}, false},
		{"foreign route added", []string{"route", "add", "10.9.2.0/24", "via", "192.0.2.12"}, true},
		{"foreign route deleted", []string{"route", "del", "10.9.2.0/24", "via", "192.0.2.12"}, true},
		{"address added", []string{"addr", "add", "192.0.2.2/24", "dev", "d0"}, true},
		{"address deleted", []string{"addr", "del", "192.0.2.2/24", "dev", "d0"}, true},
		{"IPv6 address added", []string{"addr", "add", "2001:db8:1::1/64", "dev", "d0", "nodad"}, true},
		{"link down", []string{"link", "set", "d0", "down"}, true},
		{"link up", []string{"link", "set", "d0", "up"}, true},
	} {
		drain()
		ns.MustIP(t, tc.ip...)
		got := false
		select {
		case <-w.Changes():
			got = true
		case <-time.After(300 * time.Millisecond):
		}
		if got != tc.want {
			t.Errorf("%s (ip %v): change told %t, want %t", tc.name, tc.ip, got, tc.want)
		}
	}
}

// waitLinkLocal waits until dev in ns has an IPv6 link-local address that is no longer tentative.
func waitLinkLocal(t *testing.T, ns *kerneltest.NS, dev string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := ns.MustIP(t, "-6", "addr", "show", "dev", dev, "scope", "link")
		if strings.Contains(out, "fe80::") && !strings.Contains(out, "tentative") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no IPv6 link-local address after 10 s: %s", dev, out)
		}
	}
}

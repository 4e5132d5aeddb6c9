package kernel_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestSyncRoutesInNetns checks in a throwaway namespace that SyncRoutes installs the wanted routes with our
// protocol, removes a stale route of ours, and leaves a foreign route in the same range alone.
func TestSyncRoutesInNetns(t *testing.T) {
	// A stale route of ours and a foreign one (default protocol "boot") in the overlay range.
	ns := routeNS(t, []string{"10.5.9.0/24", "via", "192.0.2.9", "proto", "87"}, []string{"10.5.8.0/24", "via", "192.0.2.8"})
	for pass := range 2 { // the second pass must be a no-op
		if err := syncWanted(t, ns); err != nil {
			t.Fatalf("pass %d: %v", pass+1, err)
		}
	}
	got := ns.MustIP(t, "route", "show")
	for _, want := range []string{
		"10.5.1.0/24 via 192.0.2.11 dev d0 proto 87",
		"10.5.2.0/24 via 192.0.2.12 dev d0 proto 87",
		"10.5.8.0/24 via 192.0.2.8 dev d0",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("route table lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "10.5.9.0/24") {
		t.Errorf("stale route of ours not removed:\n%s", got)
	}

	// SetLinkAddrs keeps the wanted address and removes a stray one.
	ns.MustIP(t, "addr", "add", "198.51.100.7/24", "dev", "d0")
	withD0(t, ns, func(h *kernel.Handle, link int) {
		if err := h.SetLinkAddrs(link, netip.MustParsePrefix("192.0.2.1/24")); err != nil {
			t.Error(err)
		}
	})
	addrs := ns.MustIP(t, "-4", "-o", "addr", "show", "dev", "d0")
	if !strings.Contains(addrs, "192.0.2.1/24") || strings.Contains(addrs, "198.51.100.7") {
		t.Errorf("addresses after SetLinkAddrs(192.0.2.1/24):\n%s", addrs)
	}
}

// routeNS makes a namespace with a bridge d0 (192.0.2.1/24) and plants the routes given as `ip route add`
// arguments.
func routeNS(t *testing.T, plant ...[]string) *kerneltest.NS {
	t.Helper()
	kerneltest.RequireRoot(t)
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	ns.MustIP(t, "link", "add", "d0", "type", "bridge")
	ns.MustIP(t, "addr", "add", "192.0.2.1/24", "dev", "d0")
	ns.MustIP(t, "link", "set", "d0", "up")
	for _, args := range plant {
		ns.MustIP(t, append([]string{"route", "add"}, args...)...)
	}
	return ns
}

// syncWanted syncs our routes in ns to 10.5.1.0/24 via 192.0.2.11 and 10.5.2.0/24 via 192.0.2.12 on d0 and
// returns SyncRoutes' error.
func syncWanted(t *testing.T, ns *kerneltest.NS) error {
	t.Helper()
	var syncErr error
	withD0(t, ns, func(h *kernel.Handle, link int) {
		syncErr = h.SyncRoutes(false, []kernel.Route{
			{Dst: netip.MustParsePrefix("10.5.1.0/24"), Gw: netip.MustParseAddr("192.0.2.11"), LinkIndex: link},
			{Dst: netip.MustParsePrefix("10.5.2.0/24"), Gw: netip.MustParseAddr("192.0.2.12"), LinkIndex: link},
		}, nil)
	})
	return syncErr
}

// withD0 runs fn inside ns with a handle there and the link d0; not reaching the kernel fails the test.
func withD0(t *testing.T, ns *kerneltest.NS, fn func(h *kernel.Handle, link int)) {
	t.Helper()
	err := ns.Do(func() error {
		h, err := kernel.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		st, err := h.LinkStateByName("d0")
		if err != nil {
			return err
		}
		fn(h, st.Index)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSyncRoutesLeavesForeignRoutes checks that a foreign route holding the very destination we want, of
// any type (an operator's unicast, blackhole or unreachable route), is neither replaced nor adopted, that
// SyncRoutes reports it, and that our other routes are still installed.
func TestSyncRoutesLeavesForeignRoutes(t *testing.T) {
	tests := []struct {
		name   string
		plant  [][]string
		routes string // ip route show root 10.5.0.0/16 afterwards
	}{
		{"unicast", [][]string{{"10.5.1.0/24", "via", "192.0.2.99", "proto", "static"}}, `
			10.5.1.0/24 via 192.0.2.99 dev d0 proto static
			10.5.2.0/24 via 192.0.2.12 dev d0 proto 87`},
		{"blackhole and unreachable", [][]string{{"blackhole", "10.5.1.0/24"}, {"unreachable", "10.5.2.0/24", "proto", "static"}}, `
			blackhole 10.5.1.0/24
			unreachable 10.5.2.0/24 proto static`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := routeNS(t, tt.plant...)
			syncErr := syncWanted(t, ns)
			var fe *kernel.ForeignRouteError
			if !errors.As(syncErr, &fe) || fe.Dst.String() != "10.5.1.0/24" {
				t.Errorf("SyncRoutes err = %v, want a ForeignRouteError for 10.5.1.0/24", syncErr)
			}
			kerneltest.Expect(t, "routes after sync", ns.MustIP(t, "route", "show", "root", "10.5.0.0/16"), tt.routes)
		})
	}
}

// TestSyncRoutesAdoptsIdenticalForeignRoute checks that a foreign unicast route identical to a wanted one
// (as flanneld leaves it, with the default protocol, when weftd takes over a node) is retagged as ours
// without an error, while a foreign route to the other destination that differs is still left alone.
func TestSyncRoutesAdoptsIdenticalForeignRoute(t *testing.T) {
	ns := routeNS(t, []string{"10.5.1.0/24", "via", "192.0.2.11"}, []string{"10.5.2.0/24", "via", "192.0.2.99"})
	syncErr := syncWanted(t, ns)
	var fe *kernel.ForeignRouteError
	if !errors.As(syncErr, &fe) || fe.Dst.String() != "10.5.2.0/24" {
		t.Errorf("SyncRoutes err = %v, want a ForeignRouteError for 10.5.2.0/24 only", syncErr)
	}
	kerneltest.Expect(t, "routes after sync", ns.MustIP(t, "route", "show", "root", "10.5.0.0/16"), `
		10.5.1.0/24 via 192.0.2.11 dev d0 proto 87
		10.5.2.0/24 via 192.0.2.99 dev d0`)
}

// TestNewForwardingHandleInNetns checks that NewForwardingHandle refuses a missing link (with ErrNoLink)
// and, for a link that is there, enables IPv4 forwarding in the namespace.
func TestNewForwardingHandleInNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	kerneltest.Bridge(t, ns, "u0")
	err := ns.Do(func() error {
		if err := kernel.WriteSysctl("net.ipv4.ip_forward", "0"); err != nil {
			return err
		}
		if h, err := kernel.NewForwardingHandle(9999); !errors.Is(err, kernel.ErrNoLink) {
			if h != nil {
				h.Close()
			}
			t.Errorf("NewForwardingHandle(missing link) = %v, want ErrNoLink", err)
		}
		h, err := kernel.NewHandle()
		if err != nil {
			return err
		}
		u0, err := h.LinkStateByName("u0")
		h.Close()
		if err != nil {
			return err
		}
		fh, err := kernel.NewForwardingHandle(u0.Index)
		if err != nil {
			return err
		}
		fh.Close()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	kerneltest.Expect(t, "ip_forward", ns.MustExec(t, "cat", "/proc/sys/net/ipv4/ip_forward"), "1")
}

// TestUpdateRoutesInNetns checks UpdateRoutes, the change-only path: it adds a new route, replaces a changed
// one of ours, deletes one no longer wanted, takes over a stale route of ours at a new destination, and
// leaves a foreign route at a wanted destination alone (reporting it).
func TestUpdateRoutesInNetns(t *testing.T) {
	ns := routeNS(t,
		[]string{"10.5.1.0/24", "via", "192.0.2.11", "proto", "87"},
		[]string{"10.5.2.0/24", "via", "192.0.2.12", "proto", "87"},
		[]string{"10.5.3.0/24", "via", "192.0.2.13", "proto", "87"},
		[]string{"10.5.4.0/24", "via", "192.0.2.99", "proto", "87"},     // stale, ours, unknown to had
		[]string{"10.5.5.0/24", "via", "192.0.2.98", "proto", "static"}, // foreign
	)
	var err error
	withD0(t, ns, func(h *kernel.Handle, link int) {
		r := func(dst, gw string) kernel.Route {
			return kernel.Route{Dst: netip.MustParsePrefix(dst), Gw: netip.MustParseAddr(gw), LinkIndex: link}
		}
		had := []kernel.Route{r("10.5.1.0/24", "192.0.2.11"), r("10.5.2.0/24", "192.0.2.12"), r("10.5.3.0/24", "192.0.2.13")}
		want := []kernel.Route{r("10.5.1.0/24", "192.0.2.11"), r("10.5.2.0/24", "192.0.2.22"),
			r("10.5.4.0/24", "192.0.2.14"), r("10.5.5.0/24", "192.0.2.15"), r("10.5.6.0/24", "192.0.2.16")}
		err = h.UpdateRoutes(had, want)
	})
	var fe *kernel.ForeignRouteError
	if !errors.As(err, &fe) || fe.Dst.String() != "10.5.5.0/24" {
		t.Errorf("UpdateRoutes err = %v, want a ForeignRouteError for 10.5.5.0/24", err)
	}
	kerneltest.Expect(t, "routes after UpdateRoutes", ns.MustIP(t, "route", "show", "root", "10.5.0.0/16"), `
		10.5.1.0/24 via 192.0.2.11 dev d0 proto 87
		10.5.2.0/24 via 192.0.2.22 dev d0 proto 87
		10.5.4.0/24 via 192.0.2.14 dev d0 proto 87
		10.5.5.0/24 via 192.0.2.98 dev d0 proto static
		10.5.6.0/24 via 192.0.2.16 dev d0 proto 87`)
}

package kernel_test

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestVXLANNeighFDBInNetns creates a VXLAN device over a bridge underlay in a throwaway namespace, reads it
// back, and installs, lists, replaces and deletes neighbour and FDB entries on it.
func TestVXLANNeighFDBInNetns(t *testing.T) {
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "bridge")
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-k")
	kerneltest.Bridge(t, ns, "u0")
	ns.MustIP(t, "addr", "add", "192.0.2.1/24", "dev", "u0")
	ns.MustIP(t, "link", "add", "br9", "type", "bridge")

	a := netip.MustParseAddr
	m1, _ := net.ParseMAC("02:00:00:00:00:01")
	m2, _ := net.ParseMAC("02:00:00:00:00:02")
	own, _ := net.ParseMAC("02:aa:bb:cc:dd:ee")
	err := ns.Do(func() error {
		h, err := kernel.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		if _, err := h.VXLANByName("nope0"); !errors.Is(err, kernel.ErrNoLink) {
			t.Errorf("VXLANByName(missing) = %v, want ErrNoLink", err)
		}
		if _, err := h.VXLANByName("br9"); err == nil {
			t.Errorf("VXLANByName(bridge) succeeded")
		} else if te, ok := errors.AsType[*kernel.LinkTypeError](err); !ok || te.Type != "bridge" {
			t.Errorf("VXLANByName(bridge) = %v, want a LinkTypeError for a bridge", err)
		}
		u0, err := h.LinkStateByName("u0")
		if err != nil {
			return err
		}
		v, err := h.AddVXLAN(kernel.VXLAN{Name: "vx7", VNI: 7, Local: a("192.0.2.1"), VtepIndex: u0.Index,
			Port: 8472, GBP: true, MTU: 1400, MAC: own})
		if err != nil {
			return err
		}
		if v.VNI != 7 || v.Local != a("192.0.2.1") || v.VtepIndex != u0.Index || v.Port != 8472 ||
			v.Learning || !v.GBP || v.MTU != 1400 || v.MAC.String() != own.String() || v.Up || v.FlowBased || v.HasGroup {
			t.Errorf("read back %+v", *v)
		}
		if err := h.SetLinkUp(v.Index); err != nil {
			return err
		}
		if err := h.SetLinkMTU(v.Index, 1450); err != nil {
			return err
		}
		if err := h.SetLinkAddrs(v.Index, netip.MustParsePrefix("10.5.7.0/32")); err != nil {
			return err
		}
		for _, n := range []kernel.Neigh{
			{LinkIndex: v.Index, IP: a("10.5.1.0"), MAC: m2}, // replaced below
			{LinkIndex: v.Index, IP: a("10.5.1.0"), MAC: m1},
			{LinkIndex: v.Index, IP: a("10.5.2.0"), MAC: m2},
		} {
			if err := h.ReplaceNeigh(n); err != nil {
				return err
			}
		}
		for _, f := range []kernel.FDB{
			{LinkIndex: v.Index, MAC: m1, Dst: a("192.0.2.99")}, // remote replaced below
			{LinkIndex: v.Index, MAC: m1, Dst: a("192.0.2.11")},
			{LinkIndex: v.Index, MAC: m2, Dst: a("192.0.2.12")},
		} {
			if err := h.ReplaceFDB(f); err != nil {
				return err
			}
		}
		ns2, err := h.Neighs(v.Index)
		if err != nil {
			return err
		}
		if len(ns2) != 2 || !ns2[0].Permanent {
			t.Errorf("Neighs = %v", ns2)
		}
		fdbs, err := h.FDBs(v.Index)
		if err != nil {
			return err
		}
		if len(fdbs) != 2 || !fdbs[0].Permanent {
			t.Errorf("FDBs = %v", fdbs)
		}
		// Deleting twice is fine.
		for range 2 {
			if err := h.DeleteNeigh(kernel.Neigh{LinkIndex: v.Index, IP: a("10.5.2.0")}); err != nil {
				return err
			}
			if err := h.DeleteFDB(kernel.FDB{LinkIndex: v.Index, MAC: m2, Dst: a("192.0.2.12")}); err != nil {
				return err
			}
		}
		r, err := h.RouteTo(a("192.0.2.50"))
		if err != nil {
			return err
		}
		if r.Gw.IsValid() || r.LinkIndex != u0.Index {
			t.Errorf("RouteTo(192.0.2.50) = %v, want direct on u0", r)
		}
		for range 2 {
			if err := h.DeleteLink("br9"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	link := ns.MustIP(t, "-d", "link", "show", "vx7")
	for _, want := range []string{"mtu 1450", "state UNKNOWN", "link/ether 02:aa:bb:cc:dd:ee", "vxlan id 7 local 192.0.2.1 dev u0",
		"dstport 8472", "nolearning", "gbp"} {
		if !strings.Contains(link, want) {
			t.Errorf("vx7 lacks %q:\n%s", want, link)
		}
	}
	kerneltest.Expect(t, "neighbours", ns.MustIP(t, "neigh", "show", "dev", "vx7"), "10.5.1.0 lladdr 02:00:00:00:00:01 PERMANENT")
	kerneltest.Expect(t, "fdb", ns.MustExec(t, "bridge", "fdb", "show", "dev", "vx7"), "02:00:00:00:00:01 dst 192.0.2.11 self permanent")
	if out := ns.MustIP(t, "link", "show"); strings.Contains(out, "br9") {
		t.Errorf("br9 not deleted:\n%s", out)
	}
}

package vxlan

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// existingMAC returns the MAC of a leftover device that can be reused as want, or nil.
func existingMAC(h *kernel.Handle, want kernel.VXLAN) net.HardwareAddr {
	have, err := h.VXLANByName(want.Name)
	if err != nil || incompatible(*have, want) != "" {
		return nil
	}
	return have.MAC
}

// ensureDevice makes the device named want.Name exist with want's settings, MAC and MTU, and up: a
// compatible device is reused and adjusted in place; anything else of that name is deleted and the device
// created. It returns the device (with its index) and what it did.
func ensureDevice(h *kernel.Handle, want kernel.VXLAN) (*kernel.VXLAN, deviceAction, error) {
	var act deviceAction
	have, err := h.VXLANByName(want.Name)
	te, wrongType := errors.AsType[*kernel.LinkTypeError](err)
	switch {
	case wrongType:
		act = deviceAction{kind: replaced, reason: te.Error()}
	case errors.Is(err, kernel.ErrNoLink):
		act = deviceAction{kind: created}
	case err != nil:
		return nil, act, err
	default:
		if why := incompatible(*have, want); why != "" {
			act = deviceAction{kind: replaced, reason: why}
			break
		}
		act = deviceAction{kind: reused}
		if have.MAC.String() != want.MAC.String() {
			act.fixed = append(act.fixed, "mac was "+have.MAC.String())
			if err := h.SetLinkMAC(have.Index, want.MAC); err != nil {
				return nil, act, err
			}
		}
		if have.MTU != want.MTU {
			act.fixed = append(act.fixed, "mtu was "+strconv.Itoa(have.MTU))
			if err := h.SetLinkMTU(have.Index, want.MTU); err != nil {
				return nil, act, err
			}
		}
		if !have.Up {
			act.fixed = append(act.fixed, "was down")
			if err := h.SetLinkUp(have.Index); err != nil {
				return nil, act, err
			}
		}
		dev := want
		dev.Index, dev.Up = have.Index, true
		return &dev, act, nil
	}
	if act.kind == replaced {
		if err := h.DeleteLink(want.Name); err != nil {
			return nil, act, err
		}
	}
	dev, err := h.AddVXLAN(want)
	if err != nil {
		return nil, act, err
	}
	if err := h.SetLinkUp(dev.Index); err != nil {
		return nil, act, err
	}
	dev.Up = true
	return dev, act, nil
}

// directPeers returns the PublicIPs of vxlan peers that the kernel reaches directly (no gateway) on the
// external interface. It asks the kernel only about addresses not in direct already, and records the answers
// there.
func directPeers(h *kernel.Handle, fam backend.Family, ext backend.External, peers []subnet.Lease, direct map[netip.Addr]bool, log *slog.Logger) map[netip.Addr]bool {
	for _, p := range peers {
		ip := fam.PublicIP(p.Attrs)
		if p.Attrs.BackendType != Type || !fam.Is(ip) {
			continue
		}
		if _, done := direct[ip]; done {
			continue
		}
		r, err := h.RouteTo(ip)
		if err != nil {
			log.Debug("direct routing: no route to peer; using vxlan", "lease", p.Key(), "publicIP", ip, "err", err)
			direct[ip] = false
			continue
		}
		direct[ip] = !r.Gw.IsValid() && r.LinkIndex == ext.Index
	}
	return direct
}

// apply makes the kernel match d: the device address, then additions in the order neighbours, FDB
// entries, routes (so a route never points at a peer the device cannot reach yet), then removals in the
// reverse order. It keeps going after an error and returns the first one. With learning, entries the
// device learned are left alone.
func apply(h *kernel.Handle, dev int, d desired, learning bool, network netip.Prefix) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	keep(h.SetLinkAddrs(dev, d.addr))
	haveN, err := h.Neighs(dev)
	if err != nil {
		return errors.Join(first, err)
	}
	haveF, err := h.FDBs(dev)
	if err != nil {
		return errors.Join(first, err)
	}
	if learning {
		haveF = permanentOnly(haveF)
	}
	putN, delN := kernel.DiffNeighs(haveN, d.neighs)
	putF, delF := kernel.DiffFDB(haveF, d.fdb)
	for _, n := range putN {
		keep(h.ReplaceNeigh(n))
	}
	for _, f := range putF {
		keep(h.ReplaceFDB(f))
	}
	keep(h.SyncRoutes(d.addr.Addr().Is6(), d.routes, kernel.Owned(network, dev)))
	for _, f := range delF {
		keep(h.DeleteFDB(f))
	}
	for _, n := range delN {
		keep(h.DeleteNeigh(n))
	}
	return first
}

// update applies the difference between had, the state installed by the last Set, and want, in apply's
// order, without reading the kernel's tables. It keeps going after an error and returns the first one.
func update(h *kernel.Handle, dev int, had, want desired) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	if had.addr != want.addr {
		keep(h.SetLinkAddrs(dev, want.addr))
	}
	putN, delN := kernel.DiffNeighs(had.neighs, want.neighs)
	putF, delF := kernel.DiffFDB(had.fdb, want.fdb)
	for _, n := range putN {
		keep(h.ReplaceNeigh(n))
	}
	for _, f := range putF {
		keep(h.ReplaceFDB(f))
	}
	keep(h.UpdateRoutes(had.routes, want.routes))
	for _, f := range delF {
		keep(h.DeleteFDB(f))
	}
	for _, n := range delN {
		keep(h.DeleteNeigh(n))
	}
	return first
}

// applyPeer changes what one peer lease installs from old to next (either nil: none), in apply's order.
func applyPeer(h *kernel.Handle, old, next *peerEntries) error {
	var first error
	keep := func(err error) {
		if err != nil && first == nil {
			first = err
		}
	}
	var oldN, nextN *kernel.Neigh
	var oldF, nextF *kernel.FDB
	var oldR, nextR []kernel.Route
	if old != nil {
		oldN, oldF, oldR = old.neigh, old.fdb, []kernel.Route{old.route}
	}
	if next != nil {
		nextN, nextF, nextR = next.neigh, next.fdb, []kernel.Route{next.route}
	}
	if nextN != nil && (oldN == nil || oldN.IP != nextN.IP || !bytes.Equal(oldN.MAC, nextN.MAC)) {
		keep(h.ReplaceNeigh(*nextN))
	}
	if nextF != nil && (oldF == nil || oldF.Dst != nextF.Dst || !bytes.Equal(oldF.MAC, nextF.MAC)) {
		keep(h.ReplaceFDB(*nextF))
	}
	keep(h.UpdateRoutes(oldR, nextR))
	if oldF != nil && (nextF == nil || oldF.Dst != nextF.Dst || !bytes.Equal(oldF.MAC, nextF.MAC)) {
		keep(h.DeleteFDB(*oldF))
	}
	if oldN != nil && (nextN == nil || oldN.IP != nextN.IP) {
		keep(h.DeleteNeigh(*oldN))
	}
	return first
}

func permanentOnly(fs []kernel.FDB) []kernel.FDB {
	var out []kernel.FDB
	for _, f := range fs {
		if f.Permanent {
			out = append(out, f)
		}
	}
	return out
}

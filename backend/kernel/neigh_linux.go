package kernel

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neighs lists the IPv4 and IPv6 neighbour entries of the link, in every state.
func (h *Handle) Neighs(linkIndex int) ([]Neigh, error) {
	var nns []netlink.Neigh
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		fam, err := retry(func() ([]netlink.Neigh, error) { return h.nl.NeighList(linkIndex, family) })
		if err != nil {
			return nil, fmt.Errorf("list neighbours on %s: %w", h.linkLabel(linkIndex), err)
		}
		nns = append(nns, fam...)
	}
	var out []Neigh
	for _, nn := range nns {
		ip, ok := netip.AddrFromSlice(nn.IP)
		if !ok || nn.LinkIndex != linkIndex {
			continue
		}
		out = append(out, Neigh{
			LinkIndex: nn.LinkIndex,
			IP:        ip.Unmap(),
			MAC:       nn.HardwareAddr,
			Permanent: nn.State&netlink.NUD_PERMANENT != 0,
		})
	}
	return out, nil
}

// ReplaceNeigh adds n as a permanent entry or replaces the entry for the same IP on the link.
func (h *Handle) ReplaceNeigh(n Neigh) error {
	err := h.nl.NeighSet(&netlink.Neigh{
		LinkIndex:    n.LinkIndex,
		Family:       neighFamily(n.IP),
		State:        netlink.NUD_PERMANENT,
		Type:         unix.RTN_UNICAST,
		IP:           n.IP.AsSlice(),
		HardwareAddr: n.MAC,
	})
	if err != nil {
		return fmt.Errorf("replace neighbour %s lladdr %s on %s: %w", n.IP, n.MAC, h.linkLabel(n.LinkIndex), err)
	}
	return nil
}

// DeleteNeigh deletes the neighbour entry for n's IP on n's link; an entry already gone is not an error.
func (h *Handle) DeleteNeigh(n Neigh) error {
	ev := Event{Kind: NeighGone, Link: n.LinkIndex, IP: n.IP}
	h.expectGone(ev)
	err := h.nl.NeighDel(&netlink.Neigh{LinkIndex: n.LinkIndex, Family: neighFamily(n.IP), IP: n.IP.AsSlice()})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		h.notGone(ev)
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete neighbour %s on %s: %w", n.IP, h.linkLabel(n.LinkIndex), err)
	}
	return nil
}

// neighFamily is the address family of a neighbour entry for ip.
func neighFamily(ip netip.Addr) int {
	if ip.Is6() && !ip.Is4In6() {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// FDBs lists the forwarding-database entries of a VXLAN link that have a remote (NTF_SELF entries), IPv4
// or IPv6.
func (h *Handle) FDBs(linkIndex int) ([]FDB, error) {
	nns, err := retry(func() ([]netlink.Neigh, error) { return h.nl.NeighList(linkIndex, unix.AF_BRIDGE) })
	if err != nil {
		return nil, fmt.Errorf("list fdb entries on %s: %w", h.linkLabel(linkIndex), err)
	}
	var out []FDB
	for _, nn := range nns {
		dst, ok := netip.AddrFromSlice(nn.IP)
		if !ok || nn.LinkIndex != linkIndex || nn.Flags&netlink.NTF_SELF == 0 || dst.IsUnspecified() {
			continue
		}
		out = append(out, FDB{
			LinkIndex: nn.LinkIndex,
			MAC:       nn.HardwareAddr,
			Dst:       dst.Unmap(),
			Permanent: nn.State&netlink.NUD_PERMANENT != 0,
		})
	}
	return out, nil
}

func fdbToNetlink(f FDB) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    f.LinkIndex,
		Family:       unix.AF_BRIDGE,
		Flags:        netlink.NTF_SELF,
		State:        netlink.NUD_PERMANENT,
		IP:           f.Dst.AsSlice(),
		HardwareAddr: f.MAC,
	}
}

// ReplaceFDB adds f as a permanent entry, or replaces the remote of the existing entry for f's MAC.
func (h *Handle) ReplaceFDB(f FDB) error {
	if err := h.nl.NeighSet(fdbToNetlink(f)); err != nil {
		return fmt.Errorf("add fdb entry %s -> %s on %s: %w", f.MAC, f.Dst, h.linkLabel(f.LinkIndex), err)
	}
	return nil
}

// DeleteFDB deletes the remote f.Dst of the entry for f.MAC; an entry already gone is not an error.
func (h *Handle) DeleteFDB(f FDB) error {
	ev := Event{Kind: FDBGone, Link: f.LinkIndex, MAC: f.MAC.String()}
	h.expectGone(ev)
	err := h.nl.NeighDel(fdbToNetlink(f))
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		h.notGone(ev)
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete fdb entry %s -> %s on %s: %w", f.MAC, f.Dst, h.linkLabel(f.LinkIndex), err)
	}
	return nil
}

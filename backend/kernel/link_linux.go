package kernel

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkByName looks a link up by name; a missing link is an error wrapping ErrNoLink.
func (h *Handle) linkByName(name string) (netlink.Link, error) {
	l, err := h.nl.LinkByName(name)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("link %s: %w", name, ErrNoLink)
		}
		return nil, fmt.Errorf("look up link %s: %w", name, err)
	}
	return l, nil
}

// linkByIndex looks a link up by index; a missing link is an error wrapping ErrNoLink.
func (h *Handle) linkByIndex(index int) (netlink.Link, error) {
	l, err := h.nl.LinkByIndex(index)
	if err != nil {
		if _, ok := errors.AsType[netlink.LinkNotFoundError](err); ok || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("link #%d: %w", index, ErrNoLink)
		}
		return nil, fmt.Errorf("look up link #%d: %w", index, err)
	}
	return l, nil
}

// LinkName returns the name of the link with the given index (an error wrapping ErrNoLink if there is none).
func (h *Handle) LinkName(index int) (string, error) {
	l, err := h.linkByIndex(index)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

// linkLabel names a link for an error message: its name, or "#<index>" if it cannot be looked up.
func (h *Handle) linkLabel(index int) string {
	if name, err := h.LinkName(index); err == nil {
		return name
	}
	return fmt.Sprintf("#%d", index)
}

// VXLANByName reads the named VXLAN device. It returns an error wrapping ErrNoLink if no link has that
// name, and a *LinkTypeError if the link is not a VXLAN device.
func (h *Handle) VXLANByName(name string) (*VXLAN, error) {
	l, err := h.linkByName(name)
	if err != nil {
		return nil, err
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return nil, &LinkTypeError{Name: name, Type: l.Type(), Want: "vxlan"}
	}
	v := &VXLAN{
		Name:      vx.Name,
		Index:     vx.Index,
		VNI:       vx.VxlanId,
		VtepIndex: vx.VtepDevIndex,
		Port:      vx.Port,
		Learning:  vx.Learning,
		GBP:       vx.GBP,
		MTU:       vx.MTU,
		MAC:       vx.HardwareAddr,
		Up:        vx.Flags&net.FlagUp != 0,
		FlowBased: vx.FlowBased,
		HasGroup:  len(vx.Group) > 0 && !vx.Group.IsUnspecified(),
	}
	if a, ok := netip.AddrFromSlice(vx.SrcAddr); ok {
		v.Local = a.Unmap()
	}
	return v, nil
}

// AddVXLAN creates the VXLAN device v (down; bring it up with SetLinkUp) and returns it as read back from
// the kernel. A link of that name must not exist.
func (h *Handle) AddVXLAN(v VXLAN) (*VXLAN, error) {
	la := netlink.NewLinkAttrs()
	la.Name = v.Name
	la.MTU = v.MTU
	la.HardwareAddr = v.MAC
	vx := &netlink.Vxlan{
		LinkAttrs:    la,
		VxlanId:      v.VNI,
		VtepDevIndex: v.VtepIndex,
		Port:         v.Port,
		Learning:     v.Learning,
		GBP:          v.GBP,
	}
	if v.Local.IsValid() {
		vx.SrcAddr = v.Local.AsSlice()
	}
	if err := h.nl.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("add vxlan device %s (vni %d, local %s, port %d, mac %s): %w",
			v.Name, v.VNI, v.Local, v.Port, v.MAC, err)
	}
	return h.VXLANByName(v.Name)
}

// DeleteLink deletes the named link; a link already gone is not an error.
func (h *Handle) DeleteLink(name string) error {
	l, err := h.linkByName(name)
	if errors.Is(err, ErrNoLink) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := h.nl.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete link %s: %w", name, err)
	}
	return nil
}

// SetLinkUp brings the link up (a no-op if it is up).
func (h *Handle) SetLinkUp(index int) error {
	l, err := h.linkByIndex(index)
	if err != nil {
		return err
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.nl.LinkSetUp(l); err != nil {
		return fmt.Errorf("set link %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

// SetLinkMTU sets the link's MTU (a no-op if it has it).
func (h *Handle) SetLinkMTU(index, mtu int) error {
	l, err := h.linkByIndex(index)
	if err != nil {
		return err
	}
	if l.Attrs().MTU == mtu {
		return nil
	}
	if err := h.nl.LinkSetMTU(l, mtu); err != nil {
		return fmt.Errorf("set mtu of %s to %d: %w", l.Attrs().Name, mtu, err)
	}
	return nil
}

// SetLinkMAC sets the link's hardware address (a no-op if it has it).
func (h *Handle) SetLinkMAC(index int, mac net.HardwareAddr) error {
	l, err := h.linkByIndex(index)
	if err != nil {
		return err
	}
	if l.Attrs().HardwareAddr.String() == mac.String() {
		return nil
	}
	if err := h.nl.LinkSetHardwareAddr(l, mac); err != nil {
		return fmt.Errorf("set mac of %s to %s: %w", l.Attrs().Name, mac, err)
	}
	return nil
}

// SetLinkAddrs is SetAddrs for the link with the given index.
func (h *Handle) SetLinkAddrs(index int, want ...netip.Prefix) error {
	l, err := h.linkByIndex(index)
	if err != nil {
		return err
	}
	return h.setAddrs(l, want...)
}

// RouteTo asks the kernel which route it would use to reach dst (`ip route get`). The result's Dst is dst
// as a host prefix; Gw is zero when dst is directly reachable on LinkIndex.
func (h *Handle) RouteTo(dst netip.Addr) (Route, error) {
	nrs, err := h.nl.RouteGet(dst.AsSlice())
	if err != nil {
		return Route{}, fmt.Errorf("look up route to %s: %w", dst, err)
	}
	if len(nrs) == 0 {
		return Route{}, fmt.Errorf("look up route to %s: no route", dst)
	}
	nr := nrs[0]
	r := Route{Dst: netip.PrefixFrom(dst, dst.BitLen()), LinkIndex: nr.LinkIndex}
	if nr.Gw != nil {
		r.Gw, _ = netip.AddrFromSlice(nr.Gw)
		r.Gw = r.Gw.Unmap()
	}
	return r, nil
}

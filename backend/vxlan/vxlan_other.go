//go:build !linux

package vxlan

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

func existingMAC(*kernel.Handle, kernel.VXLAN) net.HardwareAddr { return nil }

func ensureDevice(*kernel.Handle, kernel.VXLAN) (*kernel.VXLAN, deviceAction, error) {
	return nil, deviceAction{}, errors.ErrUnsupported
}

func directPeers(*kernel.Handle, backend.External, []subnet.Lease, map[netip.Addr]bool, *slog.Logger) map[netip.Addr]bool {
	return nil
}

func apply(*kernel.Handle, int, desired, bool, netip.Prefix) error { return errors.ErrUnsupported }

func update(*kernel.Handle, int, desired, desired) error { return errors.ErrUnsupported }

func applyPeer(*kernel.Handle, *peerEntries, *peerEntries) error { return errors.ErrUnsupported }

package udp

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"
)

// The TUN side of the data path. wireguard-go's tun package (MIT) does the virtio-header work: Read splits a
// TSO/USO super-packet into MSS-sized packets with correct IPv4 IDs, lengths, TCP sequence numbers and
// checksums (gsoSplit), and finishes partial checksums; Write coalesces a batch of TCP segments back into
// super-packets (the kernel's GRO rules, checksums verified before merging). We open the queues ourselves
// (multi-queue, fallback without IFF_VNET_HDR) and hand each fd to CreateUnmonitoredTUNFromFD.

// openTUN creates (or attaches to) the TUN device name with the given number of queues (IFF_MULTI_QUEUE when
// more than one), in the calling thread's network namespace. With vnetHdr it asks for IFF_VNET_HDR, and
// wireguard-go turns on TUN_F_CSUM|TSO4|TSO6 (and USO4|USO6 where the kernel has them). It returns the
// queues, and whether the virtio header (and so the offloads) took. Every fd is non-blocking and owned by
// Go's poller, so closing a queue unblocks its Read. The device lives as long as its queues.
func openTUN(name string, queues int, vnetHdr bool) (_ []wgtun.Device, offload bool, err error) {
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if queues > 1 {
		flags |= unix.IFF_MULTI_QUEUE
	}
	if vnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	var devs []wgtun.Device
	defer func() {
		if err != nil {
			for _, d := range devs {
				d.Close()
			}
		}
	}()
	for q := range queues {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, false, fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return nil, false, fmt.Errorf("TUN name %q: %w", name, err)
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return nil, false, fmt.Errorf("create TUN %q queue %d (flags %#x): %w", name, q, flags, err)
		}
		dev, _, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
		if err != nil {
			unix.Close(fd)
			return nil, false, fmt.Errorf("TUN %q queue %d: set offloads: %w", name, q, err)
		}
		devs = append(devs, dev)
	}
	return devs, devs[0].BatchSize() > 1, nil
}

// openTUNWithFallback opens the TUN with what want allows, stepping down on failure: multi-queue with the
// virtio header, then a single queue, then without the header (the plain flannel-style TUN).
func openTUNWithFallback(name string, queues int, want offloads) ([]wgtun.Device, bool, []error) {
	var errs []error
	type try struct {
		queues int
		vnet   bool
	}
	var tries []try
	if want&offTUN != 0 {
		tries = append(tries, try{queues, true})
		if queues > 1 {
			tries = append(tries, try{1, true})
		}
	}
	tries = append(tries, try{queues, false})
	if queues > 1 {
		tries = append(tries, try{1, false})
	}
	for _, t := range tries {
		devs, off, err := openTUN(name, t.queues, t.vnet)
		if err == nil {
			return devs, off, errs
		}
		errs = append(errs, err)
	}
	return nil, false, errs
}

// errTUNClosed reports whether err from a TUN read or write means the queue is gone: closed by us, or the
// device deleted (wireguard-go maps EBADFD to os.ErrClosed).
func errTUNClosed(err error) bool {
	return errors.Is(err, unix.EBADFD) || errors.Is(err, os.ErrClosed)
}

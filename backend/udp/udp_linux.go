package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

// socketBuffer is the socket's send and receive buffer size: the 208 KB default loses datagrams in bursts.
const socketBuffer = 4 << 20

// Up creates and brings up the TUN device, opens the UDP socket and starts the packet loops, all in the
// calling thread's network namespace, and turns on IPv4 forwarding there.
func (b *Backend) Up(ctx context.Context) (_ backend.Local, err error) {
	if err := ctx.Err(); err != nil {
		return backend.Local{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateUp:
		return backend.Local{}, errors.New("udp backend: Up called twice")
	case stateClosed:
		return backend.Local{}, ErrClosed
	}

	var (
		h    *kernel.Handle
		tun  *os.File
		conn *net.UDPConn
	)
	defer func() {
		if err == nil {
			return
		}
		if conn != nil {
			conn.Close()
		}
		if tun != nil {
			tun.Close()
		}
		if h != nil {
			h.Close()
		}
	}()
	if h, err = kernel.NewHandle(); err != nil {
		return backend.Local{}, err
	}
	if err = kernel.WriteSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return backend.Local{}, err
	}
	if tun, err = openTUN(TUNName); err != nil {
		return backend.Local{}, err
	}
	// The ICMP errors we write into the TUN come from the TUN's own address; without accept_local the
	// kernel drops them as martians (a received packet with a local source). Peers cannot use this: an
	// inner source we accept lies in another node's subnet, never on this node (see buildTable).
	if err = kernel.WriteSysctl("net.ipv4.conf."+TUNName+".accept_local", "1"); err != nil {
		return backend.Local{}, err
	}
	link, err := h.NL.LinkByName(TUNName)
	if err != nil {
		return backend.Local{}, fmt.Errorf("find link %q: %w", TUNName, err)
	}
	if err = h.NL.LinkSetMTU(link, b.mtu); err != nil {
		return backend.Local{}, fmt.Errorf("set MTU of %q to %d: %w", TUNName, b.mtu, err)
	}
	if err = h.NL.LinkSetUp(link); err != nil {
		return backend.Local{}, fmt.Errorf("set %q up: %w", TUNName, err)
	}
	if conn, err = b.listen(ctx); err != nil {
		return backend.Local{}, err
	}

	b.h, b.tun, b.tunIdx, b.conn, b.state = h, tun, link.Attrs().Index, conn, stateUp
	b.wg.Go(func() { b.routineTUNReader(tun, conn) })
	b.wg.Go(func() { b.routineUDPReader(tun, conn) })
	b.log.Info("udp backend up", "device", TUNName, "mtu", b.mtu, "listen", conn.LocalAddr().String())
	return backend.Local{BackendType: "udp", MTU: b.mtu}, nil
}

// listen opens the UDP socket on the first bindable candidate address (see bindCandidates), with the outer
// DF bit clear (IP_PMTUDISC_DONT, as kernel VXLAN: a smaller underlay fragments instead of black-holing)
// and large socket buffers.
func (b *Backend) listen(ctx context.Context) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
			if serr != nil {
				serr = fmt.Errorf("set IP_MTU_DISCOVER: %w", serr)
				return
			}
			// Best effort: the *FORCE variants need CAP_NET_ADMIN, the plain ones are capped by rmem_max.
			for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
				if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], socketBuffer) != nil {
					_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], socketBuffer)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	var first error
	for _, a := range b.bindCandidates() {
		addr := netip.AddrPortFrom(a, b.port).String()
		pc, err := lc.ListenPacket(ctx, "udp4", addr)
		if err == nil {
			return pc.(*net.UDPConn), nil
		}
		err = fmt.Errorf("listen on udp %s: %w", addr, err)
		if first == nil {
			first = err
		}
		if !errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil, err
		}
	}
	return nil, first
}

// openTUN creates (or attaches to) the TUN device name with IFF_TUN|IFF_NO_PI in the calling thread's
// network namespace. The fd is non-blocking, so Go's poller owns it and Close unblocks a pending Read.
// The device lives as long as the fd: closing it removes a non-persistent TUN.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("create TUN %q: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// Set assigns the TUN its address (our subnet's network address /32), routes the whole overlay network into
// it, and publishes a new peer table built from cfg.Peers. The table is swapped first, so traffic to a new
// peer flows as soon as possible; kernel errors are returned after that (partial progress kept).
func (b *Backend) Set(cfg *backend.Config) error {
	own := cfg.Own.Subnet
	if !own.IsValid() || !own.Addr().Is4() {
		return fmt.Errorf("udp backend: own lease subnet %q is not IPv4", own)
	}
	network := cfg.Network.Network
	if !network.IsValid() || !network.Addr().Is4() {
		return fmt.Errorf("udp backend: network %q is not IPv4", network)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch b.state {
	case stateNew:
		return errors.New("udp backend: Set before Up")
	case stateClosed:
		return ErrClosed
	}

	t, skipped := buildTable(network.Masked(), own, cfg.Peers, b.port)
	b.table.Store(t)
	b.log.Debug("peer table swapped", "own", own.Masked(), "peers", len(t.byOuter), "subnets", t.subnets, "skipped", skipped)

	link, err := b.h.NL.LinkByIndex(b.tunIdx)
	if err != nil {
		return fmt.Errorf("find link %q (#%d): %w", TUNName, b.tunIdx, err)
	}
	if err := b.h.SetAddrs(link, netip.PrefixFrom(own.Masked().Addr(), 32)); err != nil {
		return err
	}
	// The backend owns every route of ours in the namespace: a nil scope removes stale ones.
	want := []kernel.Route{{Dst: network.Masked(), LinkIndex: b.tunIdx}}
	return b.h.SyncRoutes(false, want, nil)
}

// Close stops the packet loops by closing the TUN and the socket, waits for them, and closes the netlink
// handle. The TUN device disappears with its fd (and its route with it): for udp no traffic can flow without
// the agent anyway.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == stateClosed {
		return nil
	}
	wasUp := b.state == stateUp
	b.state = stateClosed
	close(b.done)
	if !wasUp {
		return nil
	}
	err := errors.Join(b.tun.Close(), b.conn.Close())
	b.wg.Wait()
	b.h.Close()
	b.log.Debug("udp backend closed")
	if err != nil {
		return fmt.Errorf("close udp backend: %w", err)
	}
	return nil
}

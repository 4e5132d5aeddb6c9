package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/weft-net/weft/backend/kernel"
)

// datapath is one generation of the data path: the TUN queues, one socket per queue, and a send and a receive
// loop per queue, each running to completion on its own buffers (no channel or lock per packet). Set replaces
// it when the TUN is lost (deleted under us); Close stops it.
type datapath struct {
	devs   []wgtun.Device
	socks  []*sock
	off    offloads    // what was negotiated at open
	tunGRO atomic.Bool // coalesce TCP segments on TUN writes; cleared on EINVAL from a coalesced write
	lost   atomic.Bool // a TUN queue reported the device gone
	stop   chan struct{}
	closed atomic.Bool
	wg     sync.WaitGroup
}

// txBatch is the number of packet buffers of a send loop: a TUN super-packet of 64 KB split at the smallest
// MSS the MTU allows must fit, and at least 128 for batching.
func txBatch(mtu int) int { return max(128, maxPacket/max(1, mtu-40)+1) }

// rxWriteBatch is the number of inner packets a receive loop writes into the TUN per batch.
const rxWriteBatch = 64

// vnetHdrLen is the virtio-net header wireguard-go's Write puts in front of each packet: packets handed to it
// start this far into their buffers.
const vnetHdrLen = 10

// openDatapath opens the TUN and the sockets and starts the loops, in the calling thread's network namespace.
func (b *Backend) openDatapath(ctx context.Context, h *kernel.Handle) (_ *datapath, err error) {
	devs, vnet, stepped := openTUNWithFallback(TUNName, b.queues, b.want)
	if devs == nil {
		return nil, fmt.Errorf("udp backend: %w", errors.Join(stepped...))
	}
	if len(stepped) > 0 {
		b.log.Warn("TUN offloads or queues unavailable; stepped down", "err", errors.Join(stepped...), "queues", len(devs), "virtio-header", vnet)
	}
	dp := &datapath{devs: devs, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			dp.close()
		}
	}()
	if vnet {
		dp.off |= offTUN
		if b.want&offTUNGRO != 0 {
			dp.off |= offTUNGRO
			dp.tunGRO.Store(true)
		}
		// wireguard-go asked for USO too; ask again to learn whether the kernel took it (idempotent).
		all := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_USO4 | unix.TUN_F_USO6
		if fd := int(devs[0].File().Fd()); b.want&offUSO != 0 && unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, all) == nil {
			dp.off |= offUSO
		}
	}
	// The ICMP errors we write into the TUN come from the TUN's own address; without accept_local the
	// kernel drops them as martians (a received packet with a local source). Peers cannot use this: an
	// inner source we accept lies in another node's subnet, never on this node (see buildTable).
	if err := kernel.WriteSysctl("net.ipv4.conf."+TUNName+".accept_local", "1"); err != nil {
		return nil, err
	}
	st, err := h.LinkStateByName(TUNName)
	if err != nil {
		return nil, err
	}
	if err := h.SetLinkMTU(st.Index, b.mtu); err != nil {
		return nil, err
	}
	if err := h.SetLinkUp(st.Index); err != nil {
		return nil, err
	}
	first, err := b.listenFirst(ctx)
	if err != nil {
		return nil, err
	}
	dp.socks = append(dp.socks, first)
	addr := first.conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap()
	for range devs[1:] { // the other queues' sockets join the first's SO_REUSEPORT group
		s, err := listen(ctx, addr, b.port, b.want)
		if err != nil {
			return nil, err
		}
		dp.socks = append(dp.socks, s)
	}
	if dp.socks[0].gso.Load() {
		dp.off |= offGSO
	}
	if dp.socks[0].gro {
		dp.off |= offGRO
	}
	for q := range devs {
		dp.wg.Go(func() { b.routineTx(dp, q) })
		dp.wg.Go(func() { b.routineRx(dp, q) })
	}
	return dp, nil
}

// listenFirst opens the first socket on the first bindable candidate address (see bindCandidates).
func (b *Backend) listenFirst(ctx context.Context) (*sock, error) {
	var first error
	for _, a := range b.bindCandidates() {
		s, err := listen(ctx, a, b.port, b.want)
		if err == nil {
			return s, nil
		}
		if first == nil {
			first = err
		}
		if !errors.Is(err, unix.EADDRNOTAVAIL) {
			return nil, err
		}
	}
	return nil, first
}

// close stops the loops by closing the TUN queues and the sockets, and waits for them. Idempotent.
func (dp *datapath) close() error {
	if dp.closed.Swap(true) {
		return nil
	}
	close(dp.stop)
	var errs []error
	for _, d := range dp.devs {
		errs = append(errs, d.Close())
	}
	for _, s := range dp.socks {
		errs = append(errs, s.conn.Close())
	}
	dp.wg.Wait()
	return errors.Join(errs...)
}

// gone reports the TUN lost (unless we are closing it) and asks the agent for a reconcile, which recreates it.
func (b *Backend) gone(dp *datapath, err error) {
	if dp.closed.Load() || dp.lost.Swap(true) {
		return
	}
	b.log.Error("TUN device lost; it is recreated by the next reconcile", "device", TUNName, "err", err)
	b.kick()
}

// routineTx moves packets from TUN queue q to peers until the queue is closed: one read (a super-packet split
// into up to 64 KB of packets), one route lookup per packet, one sendmmsg for the lot.
func (b *Backend) routineTx(dp *datapath, q int) {
	b.log.Debug("routine: TUN reader started", "queue", q)
	defer b.log.Debug("routine: TUN reader stopped", "queue", q)
	dev, c := dp.devs[q], &b.tx[q]
	batch := txBatch(b.mtu)
	bufs, sizes := make([][]byte, batch), make([]int, batch)
	for i := range bufs {
		n := max(b.mtu, 2048)
		if i == 0 {
			n = maxPacket // a packet read without the virtio header lands here whole
		}
		bufs[i] = make([]byte, n)
	}
	sd := newSender(dp.socks[q], batch)
	icmp := [][]byte{make([]byte, vnetHdrLen+icmpMaxLen)}
	limit := tokenBucket{rate: icmpRate, burst: icmpBurst}
	var failing int
	for {
		n, err := dev.Read(bufs, sizes, 0)
		if err != nil {
			switch {
			case errors.Is(err, wgtun.ErrTooManySegments) && n > 0:
				c.inc(dropTxMalformed) // the rest of an oversized super-packet
			case errTUNClosed(err):
				b.gone(dp, err)
				return
			default:
				// A bad virtio header or GSO type: drop that read, and back off if it persists.
				if !b.backOff(dp.stop, &failing, tunReadErrors, c, "read from TUN", err) {
					return
				}
				continue
			}
		}
		failing = 0
		c.inc(tunReads)
		t := b.table.Load()
		for i := range n {
			if sizes[i] > len(bufs[i]) {
				c.inc(dropTxMalformed)
				continue
			}
			pkt := bufs[i][:sizes[i]]
			p, h, r := t.routeTx(pkt)
			switch r {
			case reasonOK:
				sd.add(p.outer, pkt[:h.totalLen])
				c.add(txBytes, h.totalLen)
			case reasonNoRoute:
				c.inc(dropNoRoute)
				m := t.unreachable(icmp[0][vnetHdrLen:], pkt, h)
				if m == 0 {
					continue
				}
				if !limit.allow(time.Now()) {
					c.inc(dropICMPRateLimited)
					continue
				}
				icmp[0] = icmp[0][:vnetHdrLen+m]
				_, err := dev.Write(icmp, vnetHdrLen)
				icmp[0] = icmp[0][:cap(icmp[0])]
				if err != nil {
					c.inc(tunWriteErrors)
					continue
				}
				c.inc(txNoRouteICMP)
			case reasonNotIPv4:
				c.inc(dropTxNotIPv4)
			default:
				c.inc(dropTxMalformed)
			}
		}
		sent, failed, gsoOff, err := sd.flush()
		c.add(txPackets, sent)
		c.add(udpWriteErrors, failed)
		if failed > 0 && sd.lastErr != nil {
			b.log.Debug("udp send failed", "queue", q, "err", sd.lastErr)
			sd.lastErr = nil
		}
		if sent+failed > 0 { // a read of only dropped packets sends nothing
			c.inc(sendCalls)
		}
		if gsoOff {
			b.ctl.inc(gsoFallbacks)
			b.log.Warn("UDP GSO failed; sending without it on this socket", "queue", q, "err", err)
			b.refreshActive(dp)
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// routineRx moves datagrams from socket q into TUN queue q until the socket is closed: one recvmmsg (with GRO,
// each slot holds a run of datagrams), every inner packet checked on its own, the accepted ones written into
// the TUN in batches that wireguard-go coalesces into super-packets.
func (b *Backend) routineRx(dp *datapath, q int) {
	b.log.Debug("routine: UDP reader started", "queue", q)
	defer b.log.Debug("routine: UDP reader stopped", "queue", q)
	dev, c := dp.devs[q], &b.rx[q]
	rcv := newReceiver(dp.socks[q], maxPacket)
	f, err := newTUNFile(dev)
	if err != nil {
		b.gone(dp, err)
		return
	}
	w := newTUNWriter(b, dp, f, c)
	var failing int
	for {
		n, err := rcv.recv()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !b.backOff(dp.stop, &failing, udpReadErrors, c, "read from UDP socket", err) {
				return
			}
			continue
		}
		failing = 0
		c.inc(recvCalls)
		t := b.table.Load()
		for i := range n {
			payload, from, seg, truncated := rcv.datagram(i)
			switch {
			case truncated:
				c.inc(dropTruncated)
				continue
			case len(payload) == 0:
				c.inc(dropMalformed)
				continue
			}
			deliver(t, c, w, payload, from, seg)
		}
		w.flush()
	}
}

// deliver splits a received payload into its datagrams (seg bytes each, the last may be shorter; seg 0: one
// datagram), checks each inner packet on its own and queues the accepted ones on w.
func deliver(t *table, c *counters, w *tunWriter, payload []byte, from netip.Addr, seg int) {
	if seg <= 0 || seg > len(payload) {
		seg = len(payload)
	}
	for off := 0; off < len(payload); off += seg {
		d := payload[off:min(off+seg, len(payload))]
		m, r := t.acceptRx(from, d)
		if r != reasonOK {
			c.inc(rxDrop[r])
			continue
		}
		if m < len(d) {
			c.inc(rxTrailing) // flannel's datagrams are exactly one packet; this one carried more
		}
		w.add(d[:m])
		c.inc(rxPackets)
		c.add(rxBytes, m)
	}
}

// tunWriter writes a receive loop's accepted packets into the TUN straight from the receive buffer: runs of
// TCP segments of one flow as super-packets (see coalesce.go), anything else one packet per write. Nothing is
// copied in user space; the packets it holds point into the receive buffer, so flush must run before the
// next receive.
type tunWriter struct {
	b      *Backend
	dp     *datapath
	out    packetWriter
	c      *counters
	vnet   bool     // the TUN has the virtio-net header: every write starts with one
	g      tcpGroup // the super-packet being built
	hdr    [vnetHdrLen]byte
	none   [vnetHdrLen]byte // the header of a plain packet: no GSO, checksum complete
	pieces [][]byte         // one write's pieces; cap 2+maxCoalesce
}

// packetWriter writes one packet, given as pieces (the virtio-net header first when the TUN has one), with
// one writev.
type packetWriter interface {
	writev(pieces [][]byte) error
}

func newTUNWriter(b *Backend, dp *datapath, out packetWriter, c *counters) *tunWriter {
	return &tunWriter{b: b, dp: dp, out: out, c: c, vnet: dp.off&offTUN != 0, g: newTCPGroup(), pieces: make([][]byte, 0, 2+maxCoalesce)}
}

// add queues pkt, which must stay untouched until flush. Inner UDP is never coalesced: that breaks tunnels
// inside the overlay (two VXLAN frames in one datagram, tailscale #11026).
func (w *tunWriter) add(pkt []byte) {
	if !w.vnet || !w.dp.tunGRO.Load() {
		w.flush() // a group begun before another queue turned coalescing off
		w.single(pkt)
		return
	}
	s, ok := parseSegment(pkt)
	if ok && w.g.join(s) {
		return
	}
	w.flush()
	if !ok {
		w.single(pkt)
		return
	}
	w.g.start(s)
}

// flush writes the super-packet being built, if any.
func (w *tunWriter) flush() {
	switch len(w.g.segs) {
	case 0:
		return
	case 1:
		w.single(w.g.segs[0].pkt)
	default:
		err := w.write(w.g.finish(w.hdr[:], w.pieces[:0]), true)
		switch {
		case err == nil:
			w.c.inc(tunSuperPackets)
			w.c.add(tunSuperSegments, len(w.g.segs))
			if w.g.segs[0].v6() {
				w.c.inc(tunSuperPackets6)
			}
		case !w.dp.tunGRO.Load(): // coalesced writes refused: write the segments one by one
			w.g.restore()
			for _, s := range w.g.segs {
				w.single(s.pkt)
			}
		}
	}
	w.g.reset()
}

func (w *tunWriter) single(pkt []byte) {
	p := append(w.pieces[:0], w.none[:], pkt)
	if !w.vnet {
		p = p[1:]
	}
	w.write(p, false)
}

func (w *tunWriter) write(pieces [][]byte, coalesced bool) error {
	err := w.out.writev(pieces)
	if err == nil {
		return nil
	}
	switch {
	case errTUNClosed(err):
		w.b.gone(w.dp, err)
	case coalesced && errors.Is(err, unix.EINVAL) && w.dp.tunGRO.Swap(false):
		// Some kernels refuse coalesced writes (6.6.44-era virtio_net_hdr validation): write one by one.
		w.b.ctl.inc(tunGROFallbacks)
		w.b.log.Warn("coalesced TUN write failed; writing packets one by one from now on", "err", err)
		w.b.refreshActive(w.dp)
	}
	w.c.inc(tunWriteErrors)
	return err
}

// tunFile writes into one TUN queue with writev, through Go's poller (the fd stays non-blocking).
type tunFile struct {
	rc     syscall.RawConn
	iovs   []unix.Iovec
	n      int
	errno  syscall.Errno
	writer func(fd uintptr) bool // made once: no allocation per write
}

func newTUNFile(dev wgtun.Device) (*tunFile, error) {
	rc, err := dev.File().SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("TUN %s: %w", TUNName, err)
	}
	f := &tunFile{rc: rc, iovs: make([]unix.Iovec, 0, 2+maxCoalesce)}
	f.writer = func(fd uintptr) bool {
		_, _, e := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&f.iovs[0])), uintptr(len(f.iovs)))
		if e == unix.EAGAIN {
			return false
		}
		f.errno = e
		return true
	}
	return f, nil
}

func (f *tunFile) writev(pieces [][]byte) error {
	f.iovs = f.iovs[:len(pieces)]
	for i, p := range pieces {
		f.iovs[i].Base = unsafe.SliceData(p)
		f.iovs[i].SetLen(len(p))
	}
	f.errno = 0
	if err := f.rc.Write(f.writer); err != nil {
		return err // closed
	}
	if f.errno != 0 {
		if f.errno == unix.EBADFD {
			return os.ErrClosed
		}
		return f.errno
	}
	return nil
}

// refreshActive publishes which offloads the data path uses now.
func (b *Backend) refreshActive(dp *datapath) {
	on := dp.off
	if !dp.tunGRO.Load() {
		on &^= offTUNGRO
	}
	gso := true // in use only while every socket has it
	for _, s := range dp.socks {
		gso = gso && s.gso.Load()
	}
	if !gso {
		on &^= offGSO
	}
	b.active.Store(uint32(on))
}

package udp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The socket side of the data path: batched sends (sendmmsg) that carry runs of equal-size datagrams as one
// UDP_SEGMENT (GSO) message each, and batched receives (recvmmsg) with UDP_GRO. Every datagram on the wire
// is still one flannel datagram (the raw inner packet is the whole payload): GSO and GRO only change how
// many datagrams cross the syscall boundary at once. Buffers and message headers are allocated once per
// loop; nothing is allocated per packet.

const (
	// maxGSOSegments is the most datagrams in one UDP_SEGMENT send: 64 (UDP_MAX_SEGMENTS before Linux 6.9).
	maxGSOSegments = 64
	// maxGSOBytes is the largest UDP payload of one send over IPv4.
	maxGSOBytes = 65507
	// socketBuffer is the socket's send and receive buffer size: the 208 KB default loses datagrams in bursts.
	socketBuffer = 4 << 20
)

// sock is one UDP socket of the SO_REUSEPORT group on the backend port.
type sock struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	gso  atomic.Bool // UDP_SEGMENT may be used; cleared at run time on EIO
	gro  bool        // UDP_GRO is on: a received datagram may hold several, split by the cmsg's size
}

// listen opens a socket bound to addr:port with SO_REUSEPORT (so one socket per queue shares the port), the
// outer DF bit clear (IP_PMTUDISC_DONT, as kernel VXLAN: a smaller underlay fragments instead of
// black-holing), large buffers, and UDP_GRO if want has it. GSO needs no setup; it is probed here.
func listen(ctx context.Context, addr netip.Addr, port uint16, want offloads) (*sock, error) {
	s := &sock{}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			f := int(fd)
			if serr = unix.SetsockoptInt(f, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				serr = fmt.Errorf("set SO_REUSEPORT: %w", serr)
				return
			}
			if addr.Is6() {
				serr = unix.SetsockoptInt(f, unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DONT)
			} else {
				serr = unix.SetsockoptInt(f, unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DONT)
			}
			if serr != nil {
				serr = fmt.Errorf("set IP_MTU_DISCOVER: %w", serr)
				return
			}
			// Best effort: the *FORCE variants need CAP_NET_ADMIN, the plain ones are capped by rmem_max.
			for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
				if unix.SetsockoptInt(f, unix.SOL_SOCKET, o[0], socketBuffer) != nil {
					_ = unix.SetsockoptInt(f, unix.SOL_SOCKET, o[1], socketBuffer)
				}
			}
			if want&offGSO != 0 {
				_, err := unix.GetsockoptInt(f, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
				s.gso.Store(err == nil)
			}
			if want&offGRO != 0 {
				s.gro = unix.SetsockoptInt(f, unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
			}
			// An empty filter until the first Set: no peer, nothing admitted.
			serr = attachFilter(f, nil)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	a := netip.AddrPortFrom(addr, port).String()
	network := "udp4"
	if addr.Is6() {
		network = "udp6"
	}
	pc, err := lc.ListenPacket(ctx, network, a)
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s: %w", a, err)
	}
	s.conn = pc.(*net.UDPConn)
	if s.rc, err = s.conn.SyscallConn(); err != nil {
		s.conn.Close()
		return nil, fmt.Errorf("udp %s: %w", a, err)
	}
	return s, nil
}

// control runs f on the socket's fd.
func (s *sock) control(f func(fd int) error) error {
	var ferr error
	if err := s.rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// drops is the kernel's count of datagrams dropped at this socket (SK_MEMINFO_DROPS): those the peer filter
// refused and those that found the receive buffer full.
func (s *sock) drops() uint64 {
	var n uint64
	_ = s.control(func(fd int) error {
		var mi [unix.SK_MEMINFO_VARS]uint32
		l := uint32(unsafe.Sizeof(mi))
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_MEMINFO,
			uintptr(unsafe.Pointer(&mi[0])), uintptr(unsafe.Pointer(&l)), 0)
		if e == 0 {
			n = uint64(mi[unix.SK_MEMINFO_DROPS])
		}
		return nil
	})
	return n
}

// sockaddr4 fills a raw IPv4 socket address (port in network byte order).
func sockaddr4(sa *unix.RawSockaddrInet4, ap netip.AddrPort) {
	sa.Family = unix.AF_INET
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	sa.Addr = ap.Addr().As4()
}

// sockaddr6 fills a raw IPv6 socket address (port in network byte order).
func sockaddr6(sa *unix.RawSockaddrInet6, ap netip.AddrPort) {
	*sa = unix.RawSockaddrInet6{Family: unix.AF_INET6}
	p := (*[2]byte)(unsafe.Pointer(&sa.Port))
	p[0], p[1] = byte(ap.Port()>>8), byte(ap.Port())
	sa.Addr = ap.Addr().As16()
}

// sender batches the datagrams of one TUN read into sendmmsg messages: consecutive datagrams to the same
// peer and of equal size (the last of a run may be shorter) share one UDP_SEGMENT message. It is owned by one
// goroutine and points into the caller's packet buffers until flush returns. Its names have room for either
// family's socket address (sockaddr4 writes the start of one).
type sender struct {
	s     *sock
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	cmsgs []byte // cmsgLen bytes per message
	runs  []run  // per message: its datagrams in segs
	segs  [][]byte
	to    []netip.AddrPort // per message: the destination

	// sendmmsg arguments and results, for the closure handed to RawConn.Write (made once: no allocation).
	pending []unix.Mmsghdr
	n       int
	errno   syscall.Errno
	write   func(fd uintptr) bool
	lastErr error // the last failed send of a destination, for the caller's log
}

// run is one message: datagrams segs[first:first+count] of size seg each (the last may be shorter).
type run struct {
	first, count, seg, bytes int
	closed                   bool // the last datagram was shorter: nothing more may join
}

var cmsgLen = unix.CmsgSpace(2)

func newSender(s *sock, batch int) *sender {
	sd := &sender{
		s:     s,
		msgs:  make([]unix.Mmsghdr, batch),
		iovs:  make([]unix.Iovec, batch),
		names: make([]unix.RawSockaddrInet6, batch),
		cmsgs: make([]byte, batch*cmsgLen),
		runs:  make([]run, 0, batch),
		segs:  make([][]byte, 0, batch),
		to:    make([]netip.AddrPort, 0, batch),
	}
	sd.write = func(fd uintptr) bool {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&sd.pending[0])), uintptr(len(sd.pending)), 0, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		sd.n, sd.errno = int(r), e
		return true
	}
	return sd
}

// add queues pkt (which must stay untouched until flush) for to.
func (sd *sender) add(to netip.AddrPort, pkt []byte) {
	if k := len(sd.runs) - 1; k >= 0 && sd.s.gso.Load() {
		r := &sd.runs[k]
		if sd.to[k] == to && !r.closed && len(pkt) <= r.seg && r.count < maxGSOSegments && r.bytes+len(pkt) <= maxGSOBytes {
			r.count++
			r.bytes += len(pkt)
			r.closed = len(pkt) < r.seg
			sd.segs = append(sd.segs, pkt)
			return
		}
	}
	sd.runs = append(sd.runs, run{first: len(sd.segs), count: 1, seg: len(pkt), bytes: len(pkt)})
	sd.to = append(sd.to, to)
	sd.segs = append(sd.segs, pkt)
}

// reset forgets what was queued.
func (sd *sender) reset() { sd.runs, sd.segs, sd.to = sd.runs[:0], sd.segs[:0], sd.to[:0] }

// prepare fills the sendmmsg message headers for what is queued and returns them.
func (sd *sender) prepare() []unix.Mmsghdr {
	for i, p := range sd.segs {
		sd.iovs[i].Base = &p[0]
		sd.iovs[i].SetLen(len(p))
	}
	for k, r := range sd.runs {
		m := &sd.msgs[k].Hdr
		m.Name = (*byte)(unsafe.Pointer(&sd.names[k]))
		if to := sd.to[k]; to.Addr().Is6() {
			sockaddr6(&sd.names[k], to)
			m.Namelen = unix.SizeofSockaddrInet6
		} else {
			sockaddr4((*unix.RawSockaddrInet4)(unsafe.Pointer(&sd.names[k])), to)
			m.Namelen = unix.SizeofSockaddrInet4
		}
		m.Iov = &sd.iovs[r.first]
		m.SetIovlen(r.count)
		m.Control, m.Controllen = nil, 0
		if r.count > 1 {
			c := sd.cmsgs[k*cmsgLen : (k+1)*cmsgLen]
			h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
			h.SetLen(unix.CmsgLen(2))
			*(*uint16)(unsafe.Pointer(&c[unix.CmsgLen(0)])) = uint16(r.seg)
			m.Control = &c[0]
			m.SetControllen(cmsgLen)
		}
	}
	return sd.msgs[:len(sd.runs)]
}

// flush sends everything queued. It returns the datagrams sent and the datagrams that failed, and whether
// GSO was found unusable on this socket (then it has been switched off and the batch re-sent without it).
func (sd *sender) flush() (sent, failed int, gsoOff bool, err error) {
	if len(sd.runs) == 0 {
		return 0, 0, false, nil
	}
	defer sd.reset()
	msgs := sd.prepare()
	for i := 0; i < len(msgs); {
		sd.pending = msgs[i:]
		if err := sd.s.rc.Write(sd.write); err != nil {
			return sent, failed + sd.remaining(i), gsoOff, err // the socket is closed
		}
		if sd.errno == 0 {
			for _, r := range sd.runs[i : i+sd.n] {
				sent += r.count
			}
			i += sd.n
			continue
		}
		r := sd.runs[i]
		if r.count > 1 && (sd.errno == unix.EIO || sd.errno == unix.EINVAL || sd.errno == unix.EMSGSIZE) {
			// EIO: the egress device cannot checksum for GSO; EINVAL or EMSGSIZE: a datagram does not fit
			// the path MTU any more (the kernel fragments single datagrams, never GSO ones).
			// Either way: no more GSO on this socket, and this batch goes out one datagram at a time.
			if sd.s.gso.Swap(false) {
				gsoOff = true
				err = fmt.Errorf("UDP_SEGMENT send of %d datagrams of %d bytes to %s: %w", r.count, r.seg, sd.to[i], sd.errno)
			}
			for k := i; k < len(msgs); k++ {
				s, f := sd.sendEach(k)
				sent, failed = sent+s, failed+f
			}
			return sent, failed, gsoOff, err
		}
		// This destination failed (no route to the peer, say): skip its message, keep the others.
		failed += r.count
		sd.lastErr = fmt.Errorf("send %d datagrams of %d bytes to %s: %w", r.count, r.seg, sd.to[i], sd.errno)
		i++
	}
	return sent, failed, gsoOff, err
}

func (sd *sender) remaining(i int) (n int) {
	for _, r := range sd.runs[i:] {
		n += r.count
	}
	return n
}

// sendEach sends message k's datagrams one per send (the fallback without GSO).
func (sd *sender) sendEach(k int) (sent, failed int) {
	r := sd.runs[k]
	for _, p := range sd.segs[r.first : r.first+r.count] {
		var iov unix.Iovec
		iov.Base = &p[0]
		iov.SetLen(len(p))
		m := sd.msgs[k]
		m.Hdr.Iov = &iov
		m.Hdr.SetIovlen(1)
		m.Hdr.Control, m.Hdr.Controllen = nil, 0
		sd.pending = []unix.Mmsghdr{m}
		if err := sd.s.rc.Write(sd.write); err != nil || sd.errno != 0 || sd.n != 1 {
			failed++
			continue
		}
		sent++
	}
	return sent, failed
}

// receiver reads batches of datagrams with recvmmsg.
type receiver struct {
	s     *sock
	bufs  [][]byte
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // room for either family's address
	cmsgs []byte

	n     int
	errno syscall.Errno
	read  func(fd uintptr) bool
}

// Received datagrams per recvmmsg: with GRO each slot may hold ~45 datagrams, so a few slots suffice.
const (
	rxSlotsGRO   = 8
	rxSlotsNoGRO = 64
	rxCmsgLen    = 64 // room for the UDP_GRO cmsg (an int) and any other the kernel adds
)

func newReceiver(s *sock, slotSize int) *receiver {
	slots := rxSlotsNoGRO
	if s.gro {
		slots, slotSize = rxSlotsGRO, maxPacket
	}
	r := &receiver{
		s:     s,
		bufs:  make([][]byte, slots),
		msgs:  make([]unix.Mmsghdr, slots),
		iovs:  make([]unix.Iovec, slots),
		names: make([]unix.RawSockaddrInet6, slots),
		cmsgs: make([]byte, slots*rxCmsgLen),
	}
	for i := range r.bufs {
		r.bufs[i] = make([]byte, slotSize)
	}
	r.read = func(fd uintptr) bool {
		rr, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(len(r.msgs)), 0, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		r.n, r.errno = int(rr), e
		return true
	}
	return r
}

// recv waits for and reads a batch; it returns how many slots hold a datagram.
func (r *receiver) recv() (int, error) {
	for i := range r.msgs {
		m := &r.msgs[i].Hdr
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		m.Iov = &r.iovs[i]
		m.SetIovlen(1)
		m.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		m.Namelen = unix.SizeofSockaddrInet6
		m.Control = &r.cmsgs[i*rxCmsgLen]
		m.SetControllen(rxCmsgLen)
		m.Flags = 0
	}
	if err := r.s.rc.Read(r.read); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	return r.n, nil
}

// datagram returns slot i's payload, the sender's address, the GRO segment size (0 if the payload is one
// datagram) and whether the kernel truncated it.
func (r *receiver) datagram(i int) (payload []byte, from netip.Addr, seg int, truncated bool) {
	m := &r.msgs[i]
	payload = r.bufs[i][:m.Len]
	switch name := &r.names[i]; {
	case m.Hdr.Namelen >= unix.SizeofSockaddrInet4 && name.Family == unix.AF_INET:
		from = netip.AddrFrom4((*unix.RawSockaddrInet4)(unsafe.Pointer(name)).Addr)
	case m.Hdr.Namelen >= unix.SizeofSockaddrInet6 && name.Family == unix.AF_INET6:
		from = netip.AddrFrom16(name.Addr).Unmap()
	}
	truncated = m.Hdr.Flags&unix.MSG_TRUNC != 0
	if r.s.gro && m.Hdr.Controllen > 0 {
		seg = groSize(r.cmsgs[i*rxCmsgLen : i*rxCmsgLen+int(m.Hdr.Controllen)])
	}
	return payload, from, seg, truncated
}

// groSize finds the UDP_GRO cmsg in b and returns its segment size, or 0.
func groSize(b []byte) int {
	for len(b) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(b) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&b[unix.CmsgLen(0)])))
		}
		b = b[min(len(b), unix.CmsgSpace(l-unix.CmsgLen(0))):]
	}
	return 0
}

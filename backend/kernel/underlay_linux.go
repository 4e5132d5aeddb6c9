package kernel

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// UnderlayWatch tells of kernel changes that can change which external interface and address weftd
// selects: links, addresses and routes of the calling thread's namespace. Weft's own routes (RouteProtocol)
// are dropped in the kernel by a socket filter, so programming thousands of peers wakes nobody.
type UnderlayWatch struct {
	f  *os.File // closing it ends the reader
	rc syscall.RawConn
	c  chan struct{}
	wg sync.WaitGroup
}

// WatchUnderlay starts watching; Close stops it.
func WatchUnderlay() (*UnderlayWatch, error) {
	f, rc, err := subscribe("netlink-underlay", []uint32{unix.RTNLGRP_LINK, unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR,
		unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE}, 0, dropOwnRoutes)
	if err != nil {
		return nil, fmt.Errorf("watch the underlay: %w", err)
	}
	w := &UnderlayWatch{f: f, rc: rc, c: make(chan struct{}, 1)}
	w.wg.Go(w.read)
	return w, nil
}

// dropOwnRoutes attaches a socket filter that drops route messages carrying RouteProtocol.
func dropOwnRoutes(fd int) error {
	const protoOffset = unix.NLMSG_HDRLEN + 5 // rtmsg: family, dst_len, src_len, tos, table, protocol
	return attachFilter(fd, []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 4}, // nlmsg_type
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: bpfMsgType(unix.RTM_NEWROUTE)},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 2, K: bpfMsgType(unix.RTM_DELROUTE)},
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: protoOffset},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: RouteProtocol},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff}, // keep
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},          // drop
	})
}

func (w *UnderlayWatch) read() {
	buf := make([]byte, 32<<10)
	for {
		var rerr error
		err := w.rc.Read(func(fd uintptr) bool {
			_, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		if err != nil || (rerr != nil && !errors.Is(rerr, unix.ENOBUFS) && !errors.Is(rerr, unix.EINTR)) {
			return // closed
		}
		select { // a change, or changes the kernel could not queue (ENOBUFS): either way, look again
		case w.c <- struct{}{}:
		default:
		}
	}
}

// Changes delivers a value after one or more changes (coalesced).
func (w *UnderlayWatch) Changes() <-chan struct{} { return w.c }

// Close stops watching and waits for the reader.
func (w *UnderlayWatch) Close() {
	w.f.Close()
	w.wg.Wait()
}

package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The peer filter: a classic BPF socket filter on every socket of the group that admits only datagrams whose
// outer IPv4 source is a current peer's PublicIP. A flood from a stranger is then dropped in the kernel
// (counted in the socket's drops) and costs the agent nothing. The user-space checks stay: this is a cheap
// first gate, not the security boundary, and an outer source address is not authentication.

// skfNetOff is SKF_NET_OFF: a load at this negative offset reads from the network header, so the filter of a
// UDP socket (whose data starts at the UDP header) can see the IP source.
const skfNetOff = -0x100000

// netSrcOff is the load offset of the IPv4 source address (SKF_NET_OFF + 12, as the unsigned K field).
var netSrcOff = func() uint32 { off := int32(skfNetOff + 12); return uint32(off) }()

// maxFilterPeers bounds the program (two instructions per peer, BPF_MAXINSNS 4096). With more peers the
// filter admits every source and the user-space check alone decides.
const maxFilterPeers = 2000

// filterProgram returns the program for the given peer PublicIPs (host byte order values of the address).
func filterProgram(peers []uint32) []unix.SockFilter {
	const (
		accept = 0xffffffff
		drop   = 0
	)
	if len(peers) > maxFilterPeers {
		return []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: accept}}
	}
	p := make([]unix.SockFilter, 0, 2*len(peers)+2)
	p = append(p, unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: netSrcOff})
	for _, a := range peers {
		p = append(p,
			unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: a},
			unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: accept})
	}
	return append(p, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: drop})
}

// netSrc6Off is the load offset of the IPv6 source address (SKF_NET_OFF + 8).
var netSrc6Off = func() uint32 { off := int32(skfNetOff + 8); return uint32(off) }()

// maxFilterPeers6 bounds the IPv6 program (nine instructions per peer).
const maxFilterPeers6 = 400

// filterProgram6 returns the program for the given peer PublicIPv6s: per peer, the four words of the IPv6
// source are compared in turn, a mismatch jumping to the next peer's block, a full match accepting.
func filterProgram6(peers []netip.Addr) []unix.SockFilter {
	const (
		accept = 0xffffffff
		drop   = 0
		block  = 9
	)
	if len(peers) > maxFilterPeers6 {
		return []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: accept}}
	}
	p := make([]unix.SockFilter, 0, block*len(peers)+1)
	for _, a := range peers {
		b := a.As16()
		for w := range 4 {
			p = append(p,
				unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: netSrc6Off + uint32(4*w)},
				// On a mismatch, skip the rest of the block: the other words' loads and tests and the accept.
				unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: uint8(block - 2 - 2*w), K: binary.BigEndian.Uint32(b[4*w:])})
		}
		p = append(p, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: accept})
	}
	return append(p, unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: drop})
}

// attachFilter6 replaces the socket's filter with one admitting the IPv6 peers.
func attachFilter6(fd int, peers []netip.Addr) error {
	return attachProgram(fd, filterProgram6(peers), len(peers))
}

// attachFilter replaces the socket's filter (atomically, in the kernel) with one admitting peers.
func attachFilter(fd int, peers []uint32) error {
	return attachProgram(fd, filterProgram(peers), len(peers))
}

func attachProgram(fd int, prog []unix.SockFilter, peers int) error {
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: (*unix.SockFilter)(unsafe.Pointer(&prog[0]))}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp); err != nil {
		return fmt.Errorf("attach peer filter (%d peers): %w", peers, err)
	}
	return nil
}

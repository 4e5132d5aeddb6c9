package kernel

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os/exec"
	"strings"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Packet filter generations: a number that changes whenever the rules may have changed, read without
// running a command, so that a periodic check of the rules can skip the listing (an iptables or nft run)
// when nothing changed since the last one. Read in the calling thread's network namespace.

// Generation returns nf_tables' ruleset generation (any nft transaction, by nft or iptables-nft, changes it)
// or, with iptables-legacy, a fingerprint of the filter and nat tables' sizes and entry points (a rule
// replaced by one of the same size goes unseen: the caller still compares in full now and then).
func (t *IPTables) Generation() (uint64, error) {
	if t.legacy {
		return xtFingerprint(t.v6, "filter", "nat")
	}
	return nftGeneration()
}

// Generation returns nf_tables' ruleset generation.
func (t *NFTables) Generation() (uint64, error) { return nftGeneration() }

// isLegacy reports whether the iptables binary at path is iptables-legacy (or older than 1.8, which knew no
// other), from its --version line: "iptables v1.8.9 (nf_tables)" or "(legacy)".
func isLegacy(path string) (bool, error) {
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return false, fmt.Errorf("%s --version: %w", path, err)
	}
	return !strings.Contains(string(out), "(nf_tables)"), nil
}

// nfgenmsg is the netfilter netlink message header.
type nfgenmsg struct {
	family  uint8
	version uint8
	resID   uint16 // big-endian
}

func (m *nfgenmsg) Len() int { return 4 }
func (m *nfgenmsg) Serialize() []byte {
	return []byte{m.family, m.version, byte(m.resID >> 8), byte(m.resID)}
}

// nftGeneration asks nf_tables for its ruleset generation (NFT_MSG_GETGEN).
func nftGeneration() (uint64, error) {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETGEN, 0)
	req.AddData(&nfgenmsg{family: unix.AF_UNSPEC, version: unix.NFNETLINK_V0})
	msgs, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	if err != nil {
		return 0, fmt.Errorf("nf_tables ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m) < 4 {
			continue
		}
		attrs, err := nl.ParseRouteAttr(m[4:])
		if err != nil {
			return 0, fmt.Errorf("nf_tables ruleset generation: %w", err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED == unix.NFTA_GEN_ID && len(a.Value) >= 4 {
				return uint64(binary.BigEndian.Uint32(a.Value)), nil
			}
		}
	}
	return 0, fmt.Errorf("nf_tables ruleset generation: no NFTA_GEN_ID in the answer")
}

// xtGetinfo is struct ipt_getinfo (ip6t_getinfo is the same).
type xtGetinfo struct {
	Name       [32]byte
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
	NumEntries uint32
	Size       uint32
}

// xtFingerprint hashes the x_tables (legacy) information of tables: their entry counts, sizes and hook
// offsets, which change when a rule is added or deleted.
func xtFingerprint(v6 bool, tables ...string) (uint64, error) {
	const getInfo = 64 // IPT_SO_GET_INFO and IP6T_SO_GET_INFO (linux/netfilter_ipv4/ip_tables.h)
	family, level := unix.AF_INET, unix.SOL_IP
	if v6 {
		family, level = unix.AF_INET6, unix.SOL_IPV6
	}
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return 0, fmt.Errorf("x_tables fingerprint: raw socket: %w", err)
	}
	defer unix.Close(fd)
	h := fnv.New64a()
	for _, name := range tables {
		var info xtGetinfo
		copy(info.Name[:], name)
		size := uint32(unsafe.Sizeof(info))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), getInfo,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			return 0, fmt.Errorf("x_tables fingerprint: table %s: %w", name, errno)
		}
		binary.Write(h, binary.NativeEndian, &info) // a hash.Hash never fails to write
	}
	return h.Sum64(), nil
}

package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// rtfGateway is RTF_GATEWAY in /proc/net/route's Flags column.
const rtfGateway = 0x2

// checkRoutes fails when the IPv4 routing table in path (/proc/net/route format: the main table) has a
// route to exactly the subnet of flannelSubnet with a gateway: the script's `ip route show | grep SUBNET |
// grep via` check, which catches a subnet that something else already routes elsewhere. An unreadable
// table or an empty or unparsable flannelSubnet skips the check, as the script does in effect.
func checkRoutes(path, flannelSubnet string) error {
	if flannelSubnet == "" {
		return nil
	}
	p, err := netip.ParsePrefix(flannelSubnet)
	if err != nil || !p.Addr().Is4() {
		return nil
	}
	table, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read routing table: %w", err)
	}
	if r := routedViaGateway(table, p.Masked()); r != "" {
		return fmt.Errorf("your routing table already contains the subnet: %s", r)
	}
	return nil
}

// routedViaGateway returns the first route in table (/proc/net/route format) to exactly p that has a
// gateway, formatted like `ip route show` ("10.1.74.0/24 via 192.0.2.1 dev eth0"), or "" if there is none.
// Lines it cannot parse are skipped.
func routedViaGateway(table []byte, p netip.Prefix) string {
	sc := bufio.NewScanner(bytes.NewReader(table))
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 8 {
			continue
		}
		dst, ok1 := procAddr(f[1])
		gw, ok2 := procAddr(f[2])
		flags, err := strconv.ParseUint(f[3], 16, 32)
		mask, ok3 := procAddr(f[7])
		if !ok1 || !ok2 || err != nil || !ok3 || flags&rtfGateway == 0 {
			continue
		}
		m := binary.BigEndian.Uint32(mask.AsSlice())
		ones := bits.LeadingZeros32(^m)
		if bits.OnesCount32(m) != ones { // not a contiguous mask
			continue
		}
		if netip.PrefixFrom(dst, ones) == p {
			return fmt.Sprintf("%s via %s dev %s", p, gw, f[0])
		}
	}
	return ""
}

// procAddr parses an IPv4 address as /proc/net/route prints it: 8 hex digits of the address in host
// byte order.
func procAddr(s string) (netip.Addr, bool) {
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil || len(s) != 8 {
		return netip.Addr{}, false
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(v))
	return netip.AddrFrom4(b), true
}

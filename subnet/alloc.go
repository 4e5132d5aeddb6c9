package subnet

import (
	"math/rand/v2"
	"net/netip"
	"slices"
)

// NextSubnet returns the subnet of the same length that follows p (wrapping at the end of the address space).
func NextSubnet(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(addOffset(p.Addr(), p.Bits()), p.Bits())
}

// addOffset adds one unit of a /bits prefix to a.
func addOffset(a netip.Addr, bits int) netip.Addr {
	b := a.AsSlice()
	// Add 1 at bit position bits-1 (counting from the most significant bit), carrying leftwards.
	i := (bits - 1) / 8
	carry := uint(1) << (7 - uint((bits-1)%8))
	for ; i >= 0 && carry > 0; i-- {
		s := uint(b[i]) + carry
		b[i] = byte(s)
		carry = s >> 8
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// LastSubnet returns the last /bits subnet inside network n.
func LastSubnet(n netip.Prefix, bits int) netip.Prefix {
	b := n.Masked().Addr().AsSlice()
	for i := n.Bits(); i < bits; i++ {
		b[i/8] |= 1 << (7 - uint(i%8))
	}
	a, _ := netip.AddrFromSlice(b)
	return netip.PrefixFrom(a, bits)
}

// FirstAddr returns the subnet's network address plus one: the gateway address written as FLANNEL_SUBNET.
func FirstAddr(p netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(p.Masked().Addr().Next(), p.Bits())
}

// maxCandidates is how many free subnets the random choice is made among (flannel uses 100).
const maxCandidates = 100

// FreeSubnets returns up to limit free /bits subnets in [lo, hi], in order, skipping every subnet that
// overlaps a prefix in taken (as flannel does): a taken prefix of another length, such as a lease made under
// an earlier SubnetLen or a reservation, blocks every /bits subnet it overlaps. Entries of the other address
// family, invalid ones and those mapped to false are ignored.
func FreeSubnets(bits int, lo, hi netip.Addr, taken map[netip.Prefix]bool, limit int) []netip.Prefix {
	// Index taken by /bits subnet: a prefix at least as long blocks the one /bits subnet around it; a
	// shorter one blocks every /bits subnet inside it, found by looking up each candidate's ancestors.
	blocked := map[netip.Prefix]bool{}
	wider := map[netip.Prefix]bool{}
	var widerLens []int
	for q, ok := range taken {
		if !ok || !q.IsValid() || q.Addr().BitLen() != lo.BitLen() {
			continue
		}
		if q.Bits() >= bits {
			blocked[netip.PrefixFrom(q.Addr(), bits).Masked()] = true
			continue
		}
		wider[q.Masked()] = true
		if !slices.Contains(widerLens, q.Bits()) {
			widerLens = append(widerLens, q.Bits())
		}
	}
	isTaken := func(p netip.Prefix) bool {
		if blocked[p.Masked()] {
			return true
		}
		for _, l := range widerLens {
			if wider[netip.PrefixFrom(p.Addr(), l).Masked()] {
				return true
			}
		}
		return false
	}

	var out []netip.Prefix
	for p := netip.PrefixFrom(lo, bits); !hi.Less(p.Addr()) && len(out) < limit; {
		if !isTaken(p) {
			out = append(out, p)
		}
		next := NextSubnet(p)
		if !p.Addr().Less(next.Addr()) { // wrapped around the address space
			break
		}
		p = next
	}
	return out
}

// PickFree chooses a free subnet at random among the first 100 free ones, for the IPv4 side (v6 false) or the
// IPv6 side of cfg. A subnet is free when it overlaps no lease's subnet of that family (see FreeSubnets).
// It returns false when none is free.
func PickFree(cfg *Config, leases []Lease, v6 bool) (netip.Prefix, bool) {
	taken := map[netip.Prefix]bool{}
	for _, l := range leases {
		if v6 {
			taken[l.IPv6Subnet] = true
		} else {
			taken[l.Subnet] = true
		}
	}
	var free []netip.Prefix
	if v6 {
		free = FreeSubnets(cfg.IPv6SubnetLen, cfg.IPv6SubnetMin, cfg.IPv6SubnetMax, taken, maxCandidates)
	} else {
		free = FreeSubnets(cfg.SubnetLen, cfg.SubnetMin, cfg.SubnetMax, taken, maxCandidates)
	}
	if len(free) == 0 {
		return netip.Prefix{}, false
	}
	return free[rand.IntN(len(free))], true
}

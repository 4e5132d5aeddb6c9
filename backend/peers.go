package backend

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/weft-net/weft/subnet"
)

// Skip is a peer lease that a backend leaves out of its data path, and why.
type Skip struct {
	Key    string // the lease's key name (subnet.Lease.Key)
	Reason string
	Kind   SkipKind // the reason as a fixed label, for metrics
	Quiet  bool     // expected rather than broken (a peer of another backend type): logged at debug level only
}

// SkipKind is a skip's reason as one of a fixed set of labels (weft_peers_skipped_total{reason}), so the
// metric's cardinality stays bounded whatever the leases say.
type SkipKind string

const (
	SkipBackendType      SkipKind = "backend_type"        // a peer of another backend
	SkipNoSubnet         SkipKind = "no_subnet"           // no subnet of the family
	SkipBadPublicIP      SkipKind = "bad_public_ip"       // no unicast PublicIP of the family, or this node's
	SkipOwnSubnet        SkipKind = "own_subnet"          // claims this node's subnet
	SkipOutsideNetwork   SkipKind = "outside_network"     // its subnet lies outside the network
	SkipOverlapsOwn      SkipKind = "overlaps_own_subnet" // its subnet overlaps this node's
	SkipOverlap          SkipKind = "overlap"             // overlaps another lease and does not fit the config
	SkipDuplicateSubnet  SkipKind = "duplicate_subnet"    // another lease has its subnet
	SkipBadBackendData   SkipKind = "bad_backend_data"    // BackendData unreadable or without a usable VtepMAC
	SkipDuplicateVtepMAC SkipKind = "duplicate_vtepmac"   // its VtepMAC is this node's or another lease's
)

// SkipKinds are every SkipKind, for metrics that show each one from the start.
var SkipKinds = []SkipKind{SkipBackendType, SkipNoSubnet, SkipBadPublicIP, SkipOwnSubnet, SkipOutsideNetwork,
	SkipOverlapsOwn, SkipOverlap, SkipDuplicateSubnet, SkipBadBackendData, SkipDuplicateVtepMAC}

// CheckPeer is IPv4.CheckPeer.
func CheckPeer(p subnet.Lease, own netip.Prefix, ext External, network netip.Prefix) (SkipKind, string) {
	return IPv4.CheckPeer(p, own, ext, network)
}

// CheckPeer says why a backend that reaches a peer's subnet of family f via the peer's public address of f
// over ext must leave the lease p out, or "" if it need not: p has no subnet or no unicast public address of
// f, claims own (this node's subnet of f, in any form) or one of this node's addresses (of f: the
// interface's, the published one), lies outside network (when valid), or overlaps own (a longer prefix
// inside own would take part of this node's subnet away from its containers). Such a lease is broken or
// hostile: routing it could hijack this node's subnet or the underlay. The checks run in that order and the
// first that fails gives the reason, with its kind. The peer's backend type and backend data are the
// caller's to check.
func (f Family) CheckPeer(p subnet.Lease, own netip.Prefix, ext External, network netip.Prefix) (SkipKind, string) {
	sub, pub := f.Subnet(p), f.PublicIP(p.Attrs)
	switch {
	case !sub.IsValid() || !f.Is(sub.Addr()):
		return SkipNoSubnet, fmt.Sprintf("no %s subnet", f)
	case !f.Is(pub):
		return SkipBadPublicIP, fmt.Sprintf("no %s PublicIP", f)
	case !unicast(pub):
		return SkipBadPublicIP, fmt.Sprintf("its PublicIP %s is not a unicast address", pub)
	case sub.Masked() == own.Masked():
		return SkipOwnSubnet, "it is this node's own subnet"
	case pub == f.Addr(ext) || pub == f.Public(ext):
		return SkipBadPublicIP, fmt.Sprintf("its PublicIP %s is this node's", pub)
	case network.IsValid() && !(network.Bits() <= sub.Bits() && network.Contains(sub.Addr())):
		return SkipOutsideNetwork, fmt.Sprintf("subnet %s is outside the network %s", sub, network)
	case own.IsValid() && sub.Overlaps(own):
		return SkipOverlapsOwn, fmt.Sprintf("subnet %s overlaps this node's own subnet %s", sub, own.Masked())
	}
	return "", ""
}

// unicast reports whether a can be a peer's public address: not unspecified, loopback, multicast, IPv6
// link-local (a gateway that needs a zone) or the IPv4 limited broadcast, which the kernel refuses as a
// gateway (or, for 0.0.0.0, takes as "no gateway").
func unicast(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() && !(a.Is6() && a.IsLinkLocalUnicast()) &&
		a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// SkipLog logs the peers a backend skips without repeating a warning on every Set: a skip is warned about
// the first time its lease is skipped for its reason, and logged at debug level while that lasts; a lease
// skipped again after a Set that did not skip it, or skipped for another reason, is warned about again.
// Quiet skips are always logged at debug level. The zero value is ready to use; a SkipLog is not safe for
// concurrent use.
type SkipLog struct {
	warned map[string]string // lease key → reason, for the skips of the last Log that were not quiet
	counts sync.Map          // SkipKind → *atomic.Uint64: skips warned about (each counted when it starts)
}

// count counts s, a skip warned about now.
func (l *SkipLog) count(s Skip) {
	k := s.Kind
	if k == "" {
		k = "other"
	}
	v, _ := l.counts.LoadOrStore(k, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// AddStats adds to stats the skips counted so far, as peers_skipped{reason="<kind>"} (every kind, zeros
// too), for a backend's Stats. Safe for concurrent use with Log and Change.
func (l *SkipLog) AddStats(stats map[string]uint64) {
	for _, k := range SkipKinds {
		stats[`peers_skipped{reason="`+string(k)+`"}`] = 0
	}
	l.counts.Range(func(k, v any) bool {
		stats[`peers_skipped{reason="`+string(k.(SkipKind))+`"}`] = v.(*atomic.Uint64).Load()
		return true
	})
}

// Log logs skipped, the complete list of skips of one Set, to log.
func (l *SkipLog) Log(log *slog.Logger, skipped []Skip) {
	seen := map[string]string{}
	for _, s := range skipped {
		if !s.Quiet {
			seen[s.Key] = s.Reason
		}
		if s.Quiet || l.warned[s.Key] == s.Reason {
			log.Debug("not routing to peer", "lease", s.Key, "reason", s.Reason)
			continue
		}
		l.count(s)
		log.Warn("not routing to peer", "lease", s.Key, "reason", s.Reason)
	}
	l.warned = seen
}

// Change logs the skips of an update that handled the leases keys alone: skipped are those of them skipped
// now (each with its Key in keys); the others in keys are routed now, or gone. Skips of leases not in keys
// keep their state. The same warn-once rule as Log applies.
func (l *SkipLog) Change(log *slog.Logger, keys []string, skipped []Skip) {
	if l.warned == nil {
		l.warned = map[string]string{}
	}
	before := map[string]string{}
	for _, k := range keys {
		if r, ok := l.warned[k]; ok {
			before[k] = r
			delete(l.warned, k)
		}
	}
	for _, s := range skipped {
		if s.Quiet || before[s.Key] == s.Reason {
			log.Debug("not routing to peer", "lease", s.Key, "reason", s.Reason)
		} else {
			l.count(s)
			log.Warn("not routing to peer", "lease", s.Key, "reason", s.Reason)
		}
		if !s.Quiet {
			l.warned[s.Key] = s.Reason
		}
	}
}

// DropOverlapping removes from peers every lease that overlaps another lease (own, this node's, or a
// peer's) in either family and does not fit the network config n (another length, or outside
// [SubnetMin, SubnetMax]): such a lease can only come from a garbage or hostile write, since the store never
// hands out overlapping subnets, and routing it would take part of a live node's subnet. Leases that fit n
// overlap each other only by naming the same subnet, which in dual stack two keys can do (the key names
// both subnets: "10.5.9.0-24&fd00:5:0:2::-64" claims the IPv6 subnet of "10.5.2.0-24&fd00:5:0:2::-64"):
// of those the lease created first keeps the subnet (own always; equal revisions: the smaller key) and the
// others are dropped as duplicates, so an established peer is never dropped for a newcomer. Two misfits
// that overlap are both dropped. It returns the peers kept, in their order, and a Skip for each one dropped.
func DropOverlapping(n *subnet.Config, own subnet.Lease, peers []subnet.Lease) ([]subnet.Lease, []Skip) {
	kept, skips := IPv4.dropOverlapping(n, own, peers)
	kept, skips6 := IPv6.dropOverlapping(n, own, kept)
	return kept, append(skips, skips6...)
}

func (f Family) dropOverlapping(n *subnet.Config, own subnet.Lease, peers []subnet.Lease) ([]subnet.Lease, []Skip) {
	all := append(slices.Clip(peers), own) // own is last; it is never dropped
	idx := make([]int, 0, len(all))
	for i, p := range all {
		if f.Subnet(p).IsValid() {
			idx = append(idx, i)
		}
	}
	// Sorted by address then length, a prefix overlaps an earlier one only by lying inside it, and then it
	// also lies inside the last prefix that was not inside any earlier one (the cover).
	slices.SortFunc(idx, func(a, b int) int {
		pa, pb := f.Subnet(all[a]).Masked(), f.Subnet(all[b]).Masked()
		if c := pa.Addr().Compare(pb.Addr()); c != 0 {
			return c
		}
		return pa.Bits() - pb.Bits()
	})
	overlaps := map[int]string{} // peer index → the key of a lease it overlaps
	cover := -1
	for _, i := range idx {
		if cover >= 0 && f.Subnet(all[cover]).Masked().Contains(f.Subnet(all[i]).Addr()) {
			overlaps[i], overlaps[cover] = all[cover].Key(), all[i].Key()
			continue
		}
		cover = i
	}
	if len(overlaps) == 0 {
		return peers, nil
	}
	// Equal subnets are adjacent in idx: each run of them has one keeper, own, else a lease that fits n
	// before one that does not (which is dropped below), else the one created first.
	keeper := map[int]int{} // index → the index of the lease that keeps its subnet (itself if none other has it)
	better := func(i, k int) bool {
		if i == len(all)-1 || k == len(all)-1 {
			return i == len(all)-1
		}
		if fi, fk := n.Fits(all[i]), n.Fits(all[k]); fi != fk {
			return fi
		}
		return CreatedBefore(all[i], all[k])
	}
	for g := 0; g < len(idx); {
		e := g + 1
		for e < len(idx) && f.Subnet(all[idx[e]]).Masked() == f.Subnet(all[idx[g]]).Masked() {
			e++
		}
		k := idx[g]
		for _, i := range idx[g+1 : e] {
			if better(i, k) {
				k = i
			}
		}
		for _, i := range idx[g:e] {
			keeper[i] = k
		}
		g = e
	}
	bits, lo, hi := n.SubnetLen, n.SubnetMin, n.SubnetMax
	if f.V6 {
		bits, lo, hi = n.IPv6SubnetLen, n.IPv6SubnetMin, n.IPv6SubnetMax
	}
	var kept []subnet.Lease
	var skips []Skip
	for i, p := range peers {
		other, ok := overlaps[i]
		if ok && !n.Fits(p) {
			skips = append(skips, Skip{Key: p.Key(), Kind: SkipOverlap, Reason: fmt.Sprintf("subnet %s overlaps lease %s and does not fit the network config (/%d subnets in %s..%s)",
				f.Subnet(p), other, bits, lo, hi)})
			continue
		}
		if k, ok := keeper[i]; ok && k != i {
			skips = append(skips, Skip{Key: p.Key(), Kind: SkipDuplicateSubnet, Reason: fmt.Sprintf("subnet %s is also lease %s's, which was created first",
				f.Subnet(p), all[k].Key())})
			continue
		}
		kept = append(kept, p)
	}
	return kept, skips
}

// CreatedBefore reports whether lease a was created before b (the smaller key for equal revisions): the
// order in which conflicting leases keep what they claim.
func CreatedBefore(a, b subnet.Lease) bool {
	if a.Created != b.Created {
		return a.Created < b.Created
	}
	return a.Key() < b.Key()
}

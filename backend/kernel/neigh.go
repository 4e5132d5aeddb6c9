package kernel

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Neigh is an IPv4 neighbour (ARP) entry: IP → MAC on a link. Entries Weft installs are always permanent
// (NUD_PERMANENT).
type Neigh struct {
	LinkIndex int
	IP        netip.Addr
	MAC       net.HardwareAddr
	// Permanent reports, for an entry read from the kernel, whether it is NUD_PERMANENT. It is ignored in a
	// wanted entry (those are always installed permanent).
	Permanent bool
}

func (n Neigh) String() string {
	return fmt.Sprintf("%s lladdr %s dev #%d", n.IP, n.MAC, n.LinkIndex)
}

// FDB is a forwarding-database entry of a VXLAN device (AF_BRIDGE, NTF_SELF): frames for MAC are sent to
// the remote VTEP Dst. Entries Weft installs are always permanent.
type FDB struct {
	LinkIndex int
	MAC       net.HardwareAddr
	Dst       netip.Addr
	// Permanent reports, for an entry read from the kernel, whether it is NUD_PERMANENT (not learned). It is
	// ignored in a wanted entry.
	Permanent bool
}

func (f FDB) String() string {
	return fmt.Sprintf("%s dst %s dev #%d", f.MAC, f.Dst, f.LinkIndex)
}

// DiffNeighs compares the neighbour entries we have with those we want, keyed by (link, IP). It returns
// the entries to add or replace (missing, with another MAC, or not permanent) and those to delete (no
// longer wanted). Both results are sorted, so plans are deterministic.
func DiffNeighs(have, want []Neigh) (put, del []Neigh) {
	type key struct {
		link int
		ip   netip.Addr
	}
	haveBy := map[key]Neigh{}
	for _, n := range have {
		haveBy[key{n.LinkIndex, n.IP}] = n
	}
	wantBy := map[key]Neigh{}
	for _, n := range want {
		wantBy[key{n.LinkIndex, n.IP}] = n
	}
	for k, w := range wantBy {
		if h, ok := haveBy[k]; !ok || !h.Permanent || !bytes.Equal(h.MAC, w.MAC) {
			put = append(put, w)
		}
	}
	for k, h := range haveBy {
		if _, ok := wantBy[k]; !ok {
			del = append(del, h)
		}
	}
	cmp := func(a, b Neigh) int {
		if a.LinkIndex != b.LinkIndex {
			return a.LinkIndex - b.LinkIndex
		}
		return a.IP.Compare(b.IP)
	}
	slices.SortFunc(put, cmp)
	slices.SortFunc(del, cmp)
	return put, del
}

// DiffFDB compares the FDB entries we have with those we want, keyed by (link, MAC, Dst): a MAC may have
// several remotes, and a remote that is not wanted is deleted on its own. It returns the entries to add or
// replace (missing or not permanent) and those to delete. Both results are sorted.
func DiffFDB(have, want []FDB) (put, del []FDB) {
	type key struct {
		link int
		mac  string
		dst  netip.Addr
	}
	k := func(f FDB) key { return key{f.LinkIndex, f.MAC.String(), f.Dst} }
	haveBy := map[key]FDB{}
	for _, f := range have {
		haveBy[k(f)] = f
	}
	wantBy := map[key]FDB{}
	for _, f := range want {
		wantBy[k(f)] = f
	}
	for kw, w := range wantBy {
		if h, ok := haveBy[kw]; !ok || !h.Permanent {
			put = append(put, w)
		}
	}
	for kh, h := range haveBy {
		if _, ok := wantBy[kh]; !ok {
			del = append(del, h)
		}
	}
	cmp := func(a, b FDB) int {
		if a.LinkIndex != b.LinkIndex {
			return a.LinkIndex - b.LinkIndex
		}
		if c := bytes.Compare(a.MAC, b.MAC); c != 0 {
			return c
		}
		return a.Dst.Compare(b.Dst)
	}
	slices.SortFunc(put, cmp)
	slices.SortFunc(del, cmp)
	return put, del
}

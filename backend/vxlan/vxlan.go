// Package vxlan is the "vxlan" backend, wire- and kernel-compatible with flannel's: a VXLAN device
// "flannel.<VNI>" over the external interface, and per peer a permanent neighbour (peer subnet's network
// address → peer's VTEP MAC), a permanent FDB entry (VTEP MAC → peer's PublicIP) and an onlink route of the
// peer subnet via its network address. With DirectRouting, a peer whose PublicIP is on the external
// interface's own L2 segment gets a host-gw route instead.
//
// Up opens a netlink handle in the network namespace of the calling thread, enables IPv4 forwarding there
// and creates (or reuses) the device; Set and Close act on that namespace through the handle, from any
// thread. Set owns the main-table routes tagged with kernel.RouteProtocol that lie in the network or go
// out the device (kernel.Owned), and every neighbour and FDB entry on the device; a second weftd for
// another network (another VNI) on the node keeps its own. Between Sets, Update (backend.Updater)
// programs single changed leases. Close leaves the device and its state in place, and a restarted agent
// reuses a compatible device with its MAC, so peers' state stays valid and no packet is lost.
//
// IPv6, as flannel: a network that enables IPv6 gets a second device "flannel-v6.<VNI>" over the external
// interface's IPv6 address, with its own MAC (published in BackendV6Data), and per peer the same three
// entries for the peer's IPv6 subnet, with the FDB entry pointing at the peer's PublicIPv6. Its MTU is the
// underlay's − 70 (an IPv6 outer header is 20 bytes longer; flannel subtracts 50). In a dual-stack network
// the two devices run side by side (backend.Pair); in an IPv6-only one the IPv6 device alone.
package vxlan

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// Type is the backend's type name in the network config and in leases.
const Type = subnet.BackendVXLAN

const (
	// DefaultPort is the UDP port used when the config's Port is 0 (the Linux kernel's default, not IANA's 4789).
	DefaultPort = 8472
	// Overhead is what VXLAN encapsulation adds to an inner packet over IPv4: outer IP 20, UDP 8, VXLAN 8,
	// inner Ethernet 14.
	Overhead = 50
	// Overhead6 is what VXLAN encapsulation adds over IPv6: outer IP 40, UDP 8, VXLAN 8, inner Ethernet 14.
	Overhead6 = 70
	maxVNI    = 1<<24 - 1
	minMTU    = 68 // IPv4's minimum
)

// Config is the backend's part of the network config (its Backend object), flannel-compatible. Field names
// match case-insensitively.
type Config struct {
	VNI           int  // VXLAN network identifier, 1..16777215; default 1. The device is "flannel.<VNI>".
	Port          int  // UDP destination port; 0 (the default) means DefaultPort
	GBP           bool // VXLAN Group Based Policy extension; default false
	Learning      bool // let the device learn remote MACs from received packets; default false
	DirectRouting bool // route directly (as host-gw) to peers on the same L2 segment; default false
	MTU           int  // underlay MTU; 0 (the default) means the external interface's. The device gets MTU − 50.
}

// ParseConfig decodes and validates the backend keys of the network config n, applying the defaults.
// Validation errors are *subnet.ConfigError values naming the key and the value.
func ParseConfig(n *subnet.Config) (Config, error) {
	c := Config{VNI: 1}
	if err := backend.DecodeConfig(n, &c); err != nil {
		return Config{}, err
	}
	return c, c.validate()
}

func (c Config) validate() error {
	if c.VNI < 1 || c.VNI > maxVNI {
		return &subnet.ConfigError{Field: "Backend.VNI", Value: strconv.Itoa(c.VNI), Rule: fmt.Sprintf("must be in 1..%d", maxVNI)}
	}
	if c.Port < 0 || c.Port > 65535 {
		return &subnet.ConfigError{Field: "Backend.Port", Value: strconv.Itoa(c.Port), Rule: "must be in 0..65535 (0: 8472)"}
	}
	if c.MTU != 0 && (c.MTU < minMTU+Overhead || c.MTU > 65535) {
		return &subnet.ConfigError{Field: "Backend.MTU", Value: strconv.Itoa(c.MTU),
			Rule: fmt.Sprintf("must be 0 (the interface's MTU) or in %d..65535", minMTU+Overhead)}
	}
	return nil
}

// DeviceName is the VXLAN device's name for vni, as flannel names it.
func DeviceName(vni int) string { return fmt.Sprintf("flannel.%d", vni) }

// DeviceName6 is the IPv6 VXLAN device's name for vni, as flannel names it.
func DeviceName6(vni int) string { return fmt.Sprintf("flannel-v6.%d", vni) }

// LeaseData is the lease's BackendData for the vxlan backend, as flannel writes it:
// {"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}.
type LeaseData struct {
	VNI     int    `json:"VNI"`
	VtepMAC string `json:"VtepMAC"`
}

// parseLeaseData decodes a peer's BackendData and its VTEP MAC, which must be a unicast Ethernet address.
func parseLeaseData(raw json.RawMessage) (LeaseData, net.HardwareAddr, error) {
	if len(raw) == 0 {
		return LeaseData{}, nil, errors.New("no BackendData")
	}
	var d LeaseData
	if err := json.Unmarshal(raw, &d); err != nil {
		return LeaseData{}, nil, fmt.Errorf("BackendData %s: %w", raw, err)
	}
	mac, err := net.ParseMAC(d.VtepMAC)
	if err != nil {
		return LeaseData{}, nil, fmt.Errorf("BackendData VtepMAC %q: %w", d.VtepMAC, err)
	}
	if len(mac) != 6 || mac[0]&1 != 0 || [6]byte(mac) == [6]byte{} {
		return LeaseData{}, nil, fmt.Errorf("BackendData VtepMAC %q: not a unicast Ethernet address", d.VtepMAC)
	}
	return d, mac, nil
}

// randomMAC returns a random locally administered unicast MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	rand.Read(m)
	m[0] = m[0]&^1 | 2
	return m
}

// New returns the vxlan backend for d, validating the config's vxlan keys: one device per address family
// the network enables. It changes nothing in the kernel.
func New(d backend.Deps) (backend.Backend, error) {
	if d.Log == nil {
		return nil, errors.New("vxlan backend: Deps.Log is required")
	}
	if d.Network == nil {
		return nil, errors.New("vxlan backend: Deps.Network is required")
	}
	cfg, err := ParseConfig(d.Network)
	if err != nil {
		return nil, err
	}
	switch n := d.Network; {
	case n.EnableIPv4 && n.EnableIPv6:
		v4, err := newFamily(d, cfg, backend.IPv4)
		if err != nil {
			return nil, err
		}
		v6, err := newFamily(d, cfg, backend.IPv6)
		if err != nil {
			return nil, err
		}
		return backend.Pair(v4, v6), nil
	case n.EnableIPv6:
		return newFamily(d, cfg, backend.IPv6)
	}
	return newFamily(d, cfg, backend.IPv4)
}

// newFamily returns the data path of one address family: flannel.<VNI> for IPv4, flannel-v6.<VNI> for IPv6.
func newFamily(d backend.Deps, cfg Config, fam backend.Family) (*vxlan, error) {
	ext := d.External
	if a := fam.Addr(ext); !fam.Is(a) {
		return nil, fmt.Errorf("vxlan backend: external interface %s: no %s address (have %q)", ext.Name, fam, a)
	}
	if ext.Index <= 0 {
		return nil, fmt.Errorf("vxlan backend: external interface %s: no index", ext.Name)
	}
	underlay := cfg.MTU
	if underlay == 0 {
		underlay = ext.MTU
	}
	overhead, name := Overhead, DeviceName(cfg.VNI)
	if fam.V6 {
		overhead, name = Overhead6, DeviceName6(cfg.VNI)
	}
	if underlay-overhead < minMTU {
		return nil, fmt.Errorf("vxlan backend: underlay MTU %d of %s leaves less than %d for the %s device", underlay, ext.Name, minMTU, fam)
	}
	if fam.V6 && underlay-overhead < 1280 {
		return nil, fmt.Errorf("vxlan backend: underlay MTU %d of %s leaves less than IPv6's minimum 1280 for device %s", underlay, ext.Name, name)
	}
	log := d.Log
	if d.Network.EnableIPv4 && d.Network.EnableIPv6 {
		log = log.With("family", fam.String())
	}
	port := cfg.Port
	if port == 0 {
		port = DefaultPort
	}
	var prevMAC net.HardwareAddr
	if len(d.PrevData) > 0 && !fam.V6 {
		if prev, mac, err := parseLeaseData(d.PrevData); err == nil && prev.VNI == cfg.VNI {
			prevMAC = mac
		}
	}
	b := &vxlan{
		log:     log,
		fam:     fam,
		ext:     ext,
		cfg:     cfg,
		prevMAC: prevMAC,
		plain:   d.PlainRoutes,
		network: fam.Network(d.Network),
		want: kernel.VXLAN{
			Name:      name,
			VNI:       cfg.VNI,
			Local:     fam.Addr(ext),
			VtepIndex: ext.Index,
			Port:      port,
			Learning:  cfg.Learning,
			GBP:       cfg.GBP,
			MTU:       underlay - overhead,
		},
	}
	b.k = kernel.NewKeeper("vxlan backend", log, b.repairLocked, b.wantsLocked)
	return b, nil
}

type vxlan struct {
	log  *slog.Logger
	fam  backend.Family // the address family of the device, its peers' subnets and the underlay
	ext  backend.External
	cfg  Config
	want kernel.VXLAN // the device we want; MAC is set by Up
	// prevMAC is the VtepMAC this node published before (Deps.PrevData); nil: unknown.
	prevMAC net.HardwareAddr
	network netip.Prefix // the network's prefix of fam, for the ownership of routes (kernel.Owned)
	plain   bool         // Deps.PlainRoutes
	// nexthops: peer routes go through nexthop objects (not plain, and the kernel has them); set by Up.
	nexthops bool

	k *kernel.Keeper // the handle and the lock over the fields below

	dev   int             // the device's index
	skips backend.SkipLog // which skipped peers were warned about
	// owners maps a VTEP MAC to the lease key routed to it at the last Set (first come keeps a MAC); it is
	// applied.owners while applied is set, and survives an error for the next plan.
	owners map[string]string
	// applied is the state the last successful Set installed; nil before it and after an error, when the
	// next Set compares with the kernel.
	applied *desired
	last    *backend.Config     // Network and Own of the state applied last (Peers unused)
	direct  map[netip.Addr]bool // DirectRouting's answer per peer PublicIP, kept between resyncs
	copied  map[string]bool     // lease keys refused at the last Set for publishing a VTEP MAC already in use

	conflicts atomic.Uint64 // leases refused for a copied VTEP MAC, counted when first refused
}

// Stats returns the backend's counters for /metrics: vtepmac_conflicts_total counts the leases refused
// because their VtepMAC was this node's or another routed lease's (each counted when it starts being
// refused); drift_repairs_total the repairs of state deleted behind the backend's back (kernel.Keeper).
func (b *vxlan) Stats() map[string]uint64 {
	m := map[string]uint64{"vtepmac_conflicts_total": b.conflicts.Load(), "drift_repairs_total": b.k.Repairs()}
	b.skips.AddStats(m)
	return m
}

func (b *vxlan) Up(ctx context.Context) (backend.Local, error) {
	var dev *kernel.VXLAN
	err := b.k.Up(b.ext.Index, func(h *kernel.Handle) error {
		if b.fam.V6 {
			if err := kernel.EnableIPv6Forwarding(); err != nil {
				return err
			}
		}
		b.nexthops = !b.plain && !b.fam.V6 && h.Nexthops()
		var err error
		dev, err = b.ensure(h, true)
		return err
	})
	if err != nil {
		return backend.Local{}, err
	}
	data, err := json.Marshal(LeaseData{VNI: b.cfg.VNI, VtepMAC: dev.MAC.String()})
	if err != nil {
		return backend.Local{}, fmt.Errorf("vxlan backend: encode lease data: %w", err)
	}
	if b.fam.V6 {
		return backend.Local{BackendType: Type, BackendV6Data: data, MTU: b.want.MTU}, nil
	}
	return backend.Local{BackendType: Type, BackendData: data, MTU: b.want.MTU}, nil
}

// ensure makes the device exist as wanted and up, and records its index. The first time (from Up), a
// compatible leftover device's MAC is kept, else the MAC published before (Deps.PrevData), else a random
// one is generated; afterwards the published MAC is enforced. It tells the keeper the device is the
// backend's. The caller holds the keeper's lock.
func (b *vxlan) ensure(h *kernel.Handle, inUp bool) (*kernel.VXLAN, error) {
	if b.want.MAC == nil {
		if b.want.MAC = existingMAC(h, b.want); b.want.MAC == nil {
			if b.want.MAC = b.prevMAC; b.want.MAC == nil {
				b.want.MAC = randomMAC()
			}
		}
	}
	dev, act, err := ensureDevice(h, b.want)
	if err != nil {
		return nil, fmt.Errorf("vxlan backend: device %s: %w", b.want.Name, err)
	}
	b.dev = dev.Index
	b.k.Scope(kernel.Owned(b.network, b.dev), b.dev)
	attrs := []any{"dev", dev.Name, "vni", dev.VNI, "local", dev.Local, "port", dev.Port, "mac", dev.MAC.String(), "mtu", dev.MTU}
	if inUp && !b.fam.V6 {
		attrs = append(attrs, "route_nexthops", b.nexthops) // why `ip route` shows "nhid N" (or not)
	}
	switch {
	case act.kind == replaced:
		b.log.Warn("replaced an incompatible link with the vxlan device", append(attrs, "reason", act.reason)...)
	case act.kind == created && inUp:
		b.log.Info("created the vxlan device", attrs...)
	case act.kind == created:
		b.log.Warn("the vxlan device was gone; recreated it with the published MAC", attrs...)
	case len(act.fixed) > 0:
		b.log.Warn("repaired the vxlan device", append(attrs, "fixed", strings.Join(act.fixed, ", "))...)
	case inUp:
		b.log.Info("reusing the existing vxlan device and its MAC", attrs...)
	}
	return dev, nil
}

// deviceAction says what ensureDevice did.
type deviceAction struct {
	kind   actionKind
	reason string   // why a link was replaced
	fixed  []string // what was adjusted on a reused device
}

type actionKind int

const (
	reused actionKind = iota
	created
	replaced
)

func (b *vxlan) Set(cfg *backend.Config) error {
	if cfg == nil {
		return errors.New("vxlan backend: Set with a nil config")
	}
	return b.k.Do(func(h *kernel.Handle) error { return b.setLocked(h, cfg) })
}

func (b *vxlan) setLocked(h *kernel.Handle, cfg *backend.Config) error {
	if !b.fam.Is(b.fam.Subnet(cfg.Own).Addr()) {
		return fmt.Errorf("vxlan backend: own lease %s has no %s subnet", cfg.Own.Key(), b.fam)
	}
	b.network = b.fam.Network(&cfg.Network)
	if _, err := b.ensure(h, false); err != nil {
		return err
	}
	full := cfg.Resync || b.applied == nil || b.applied.dev != b.dev
	if !full && b.applied.stale {
		b.applied.flatten()
	}
	var direct map[netip.Addr]bool
	if b.cfg.DirectRouting {
		if full || b.direct == nil {
			b.direct = map[netip.Addr]bool{}
		}
		direct = directPeers(h, b.fam, b.ext, cfg.Peers, b.direct, b.log)
	}
	want, skipped := plan(cfg, planInput{fam: b.fam, ext: b.ext, dev: b.dev, direct: direct, ownMAC: b.want.MAC, nexthops: b.nexthops, macOwners: b.owners})
	b.skips.Log(b.log, skipped)
	b.owners = want.owners
	copied := map[string]bool{}
	for _, s := range skipped {
		if strings.HasPrefix(s.Reason, macConflictPrefix) {
			copied[s.Key] = true
			if !b.copied[s.Key] {
				b.conflicts.Add(1)
			}
		}
	}
	b.copied = copied
	var err error
	if full {
		err = apply(h, b.dev, want, b.cfg.Learning, b.fam.Network(&cfg.Network))
	} else {
		err = update(h, b.dev, *b.applied, want)
	}
	if err != nil {
		b.applied = nil
		return fmt.Errorf("vxlan backend: %w", err)
	}
	b.applied = &want
	last := *cfg
	last.Peers = nil
	b.last = &last
	return nil
}

// Update applies a change of single peer leases to the state of the last Set (backend.Updater), planning
// and programming those leases alone. A change that touches a VtepMAC two leases claimed at the last plan,
// or a lease refused for its VtepMAC, is left to Set (ErrNeedSet), which weighs every claim.
func (b *vxlan) Update(ch *backend.Change) error {
	return b.k.Do(func(h *kernel.Handle) error { return b.updateLocked(h, ch) })
}

func (b *vxlan) updateLocked(h *kernel.Handle, ch *backend.Change) error {
	if b.applied == nil || b.last == nil {
		return fmt.Errorf("vxlan backend: no state to update: %w", backend.ErrNeedSet)
	}
	d := b.applied
	keys := make([]string, 0, len(ch.Put)+len(ch.Deleted))
	for _, p := range ch.Put {
		keys = append(keys, p.Key())
	}
	keys = append(keys, ch.Deleted...)
	for _, k := range keys {
		if b.copied[k] || d.contested[d.macOf[k]] {
			return fmt.Errorf("vxlan backend: lease %s: a VtepMAC two leases claim: %w", k, backend.ErrNeedSet)
		}
	}
	var direct map[netip.Addr]bool
	if b.cfg.DirectRouting {
		if b.direct == nil {
			b.direct = map[netip.Addr]bool{}
		}
		direct = directPeers(h, b.fam, b.ext, ch.Put, b.direct, b.log)
	}
	in := planInput{fam: b.fam, ext: b.ext, dev: b.dev, direct: direct, ownMAC: b.want.MAC, nexthops: b.nexthops}
	deleted := map[string]bool{}
	for _, k := range ch.Deleted {
		deleted[k] = true
	}
	var skipped []backend.Skip
	var first error
	change := func(key string, next *peerEntries) {
		old, had := d.byKey[key]
		var oldp *peerEntries
		if had {
			oldp = &old
		}
		if err := applyPeer(h, oldp, next); err != nil && first == nil {
			first = err
		}
		if next != nil {
			d.byKey[key] = *next
		} else {
			delete(d.byKey, key)
		}
	}
	release := func(key string) {
		if mac, ok := d.macOf[key]; ok {
			delete(d.macOf, key)
			delete(d.owners, mac) // also b.owners: the same map
		}
	}
	for _, k := range ch.Deleted {
		change(k, nil)
		release(k)
	}
	for _, p := range ch.Put {
		key := p.Key()
		cfg := *b.last
		cfg.Peers = []subnet.Lease{p}
		one, sk := plan(&cfg, in)
		next, routed := one.byKey[key]
		release(key)
		for mac := range one.owners {
			if owner := d.owners[mac]; owner != "" && owner != key && !deleted[owner] {
				routed = false
				sk = append(sk, backend.Skip{Key: key, Kind: backend.SkipDuplicateVtepMAC, Reason: fmt.Sprintf("%s%s is lease %s's", macConflictPrefix, mac, owner)})
				d.contested[mac] = true
				b.copied[key] = true
				b.conflicts.Add(1)
				continue
			}
			d.owners[mac], d.macOf[key] = key, mac
		}
		for _, s := range sk {
			if strings.HasPrefix(s.Reason, macConflictPrefix) && !b.copied[key] {
				b.copied[key] = true // this node's own MAC
				b.conflicts.Add(1)
			}
		}
		skipped = append(skipped, sk...)
		if routed {
			change(key, &next)
		} else {
			change(key, nil)
		}
	}
	b.skips.Change(b.log, keys, skipped)
	d.stale = true
	if first != nil {
		b.applied = nil
		return fmt.Errorf("vxlan backend: %w", first)
	}
	return nil
}

func (b *vxlan) Close() error { return b.k.Close() }

// Following reports whether drift is repaired from kernel events (backend.Follower).
func (b *vxlan) Following() bool { return b.k.Following() }

// wantsLocked says whether an entry deleted behind the backend's back is one it installed last (and not,
// say, a neighbour entry the kernel made on the device and let expire).
func (b *vxlan) wantsLocked(e kernel.Event) bool {
	if b.applied == nil {
		return false
	}
	for _, p := range b.applied.byKey {
		switch {
		case e.Kind == kernel.RouteGone && p.route.Dst == e.Route.Dst,
			e.Kind == kernel.NeighGone && p.neigh != nil && p.neigh.IP == e.IP,
			e.Kind == kernel.FDBGone && p.fdb != nil && p.fdb.MAC.String() == e.MAC:
			return true
		}
	}
	return false
}

// repairLocked makes the kernel hold the state applied last again, after drift (kernel.Keeper): the device
// (recreated with its MAC if it was deleted), then every neighbour, FDB entry and route, compared with the
// kernel's tables.
func (b *vxlan) repairLocked(h *kernel.Handle) error {
	if _, err := b.ensure(h, false); err != nil {
		return err
	}
	if b.applied == nil || b.last == nil {
		return nil
	}
	d := b.applied
	if d.dev != b.dev {
		d.relink(b.dev)
	}
	if d.stale {
		d.flatten()
	}
	if err := apply(h, b.dev, *d, b.cfg.Learning, b.fam.Network(&b.last.Network)); err != nil {
		b.applied = nil
		return fmt.Errorf("vxlan backend: %w", err)
	}
	return nil
}

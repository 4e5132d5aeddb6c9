// Package udp is the user-space udp backend, wire-compatible with flannel's: a TUN device ("flannel0")
// carries the overlay's IPv4 packets, and each is sent as the entire payload of one UDP datagram to the
// PublicIP of the node that leases the destination's subnet, on the network-wide port (default 8285).
//
// Unlike flannel it accepts a datagram only from a current peer's PublicIP, only with an inner source inside
// a subnet leased by that peer and an inner destination inside our own subnet, and it counts what it drops
// by reason (Backend.Stats). Destinations in no lease get an ICMP net unreachable written back into the TUN.
//
// In a dual-stack network IPv6 inner packets are carried the same way, over the same IPv4 sockets, to the
// PublicIP of the node leasing the destination's IPv6 subnet, and checked the same way on receipt
// (forward6.go); no route gets an ICMPv6 destination unreachable. In an IPv6-only network the underlay is
// IPv6: the sockets are bound to the interface's IPv6 address, packets go to the peers' PublicIPv6, and the
// socket filter admits those.
//
// Threading: Up acts on the network namespace of the calling thread (TUN device, socket, netlink handle and
// the ip_forward sysctl); everything after Up uses those fds, so Set and Close may run on any thread.
//
// Files: udp.go (config, constructor, packet loops), udp_linux.go (devices, socket, Up/Set/Close),
// forward.go (pure packet logic and peer table), stats.go (counters).
package udp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

// Defaults and fixed names.
const (
	DefaultPort = 8285       // flannel's udp port
	TUNName     = "flannel0" // the TUN device, named as by flannel
	// Overhead is what encapsulation adds to an inner packet: an outer IPv4 header and a UDP header.
	Overhead = 28
	// Overhead6 is the same over an IPv6 underlay (IPv6-only networks): an outer IPv6 header and a UDP header.
	Overhead6 = 48
	// minMTU is the smallest MTU IPv4 allows (RFC 791).
	minMTU = 68
)

// ICMP errors generated for unroutable packets: at most icmpRate per second, with bursts of icmpBurst (the
// kernel's own defaults for net.ipv4.icmp_msgs_per_sec and icmp_msgs_burst).
const (
	icmpRate  = 1000
	icmpBurst = 50
)

// Config holds the udp backend's keys of the network config's Backend object (matched case-insensitively).
type Config struct {
	// Port is the UDP port every node listens on and sends to; it is not in the lease, so all nodes must
	// agree. Absent: DefaultPort. An explicit 0 is an error (flannel would bind a random port).
	Port int
}

// ParseConfig decodes and validates the udp keys of the network config.
func ParseConfig(n *subnet.Config) (Config, error) {
	c := Config{Port: DefaultPort}
	if err := backend.DecodeConfig(n, &c); err != nil {
		return Config{}, err
	}
	if c.Port < 1 || c.Port > 65535 {
		return Config{}, &subnet.ConfigError{Field: "Backend.Port", Value: strconv.Itoa(c.Port), Rule: "must be in 1..65535"}
	}
	return c, nil
}

// ErrClosed is returned by Up and Set after Close.
var ErrClosed = errors.New("udp backend closed")

// Backend is the udp backend. Create it with New.
type Backend struct {
	log    *slog.Logger
	ext    backend.External
	port   uint16
	mtu    int      // the TUN's MTU: External.MTU − Overhead
	want   offloads // what the operator allows (Deps.Offload)
	queues int      // TUN queues and sockets, one packet loop pair each
	kick   func()   // Deps.Kick; never nil
	ipv6   bool     // the network enables IPv6: IPv6 inner packets are carried too (forward6.go)
	outer6 bool     // the network is IPv6 only: the underlay (sockets, peers' addresses) is IPv6 too

	table atomic.Pointer[table] // the current forwarding table; never nil
	rx    [maxQueues]counters   // rx[q] written by queue q's receive loop only
	tx    [maxQueues]counters   // tx[q] written by queue q's send loop only
	ctl   counters              // data-path lifecycle events (TUN recreated, offload fallbacks)
	// active is the offloads in use (bits of feature), for Stats; updated on probe and fallback.
	active atomic.Uint32

	mu      sync.Mutex // guards all following fields
	state   int        // stateNew → stateUp → stateClosed (stateNew → stateClosed without Up)
	h       *kernel.Handle
	ns      *kernel.Namespace // the namespace Up ran in: a lost TUN is recreated there
	dp      *datapath         // the current devices, sockets and packet loops; nil after a failed repair
	filter  []uint32          // the peer PublicIPs the sockets' filter admits
	filter6 []netip.Addr      // the peer PublicIPv6s the sockets' filter admits (IPv6 underlay)
	skipLog backend.SkipLog   // peers left out, warned about once
	broken  error             // why the data path cannot work (a failed repair); nil while it can
	done    chan struct{}     // closed by Close, to cut short an error back-off
}

const (
	stateNew = iota
	stateUp
	stateClosed
)

var _ backend.Factory = New

// New validates the udp backend's config keys and the underlay description; it changes nothing in the
// kernel. d.External.Addr must be IPv4; d.External.PublicIP defaults to it.
func New(d backend.Deps) (backend.Backend, error) {
	if d.Network == nil {
		return nil, errors.New("udp backend: no network config")
	}
	cfg, err := ParseConfig(d.Network)
	if err != nil {
		return nil, err
	}
	want, err := parseOffload(d.Offload)
	if err != nil {
		return nil, err
	}
	if d.Queues < 0 {
		return nil, fmt.Errorf("udp queues %d: want 0 (automatic) or more", d.Queues)
	}
	ext := d.External
	outer6 := !d.Network.EnableIPv4 && d.Network.EnableIPv6 // IPv6 only: an IPv6 underlay
	overhead := Overhead
	if outer6 {
		if !ext.Addr6.Is6() || ext.Addr6.Is4In6() {
			return nil, fmt.Errorf("udp backend: IPv6-only network: external interface %q: address %q is not IPv6", ext.Name, ext.Addr6)
		}
		if !ext.PublicIPv6.IsValid() {
			ext.PublicIPv6 = ext.Addr6
		}
		overhead = Overhead6
	} else {
		if !ext.Addr.Unmap().Is4() {
			return nil, fmt.Errorf("udp backend: external interface %q: address %q is not IPv4", ext.Name, ext.Addr)
		}
		ext.Addr = ext.Addr.Unmap()
		if !ext.PublicIP.IsValid() {
			ext.PublicIP = ext.Addr
		}
		ext.PublicIP = ext.PublicIP.Unmap()
	}
	if ext.MTU-overhead < minMTU || outer6 && ext.MTU-overhead < 1280 {
		return nil, fmt.Errorf("udp backend: external interface %q: MTU %d leaves less than %d bytes for the TUN", ext.Name, ext.MTU, minMTU)
	}
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	kick := d.Kick
	if kick == nil {
		kick = func() {}
	}
	b := &Backend{
		log: log, ext: ext, port: uint16(cfg.Port), mtu: ext.MTU - overhead, want: want,
		queues: queues(d.Queues), kick: kick, done: make(chan struct{}), ipv6: d.Network.EnableIPv6, outer6: outer6,
	}
	b.table.Store(emptyTable())
	return b, nil
}

// maxQueues bounds the TUN queues: more than four buys little (fast-udp.md §6.1).
const maxQueues = 4

// defaultQueues is one queue per CPU the Go runtime uses, at most maxQueues.
// queues is the number of TUN queues for Deps.Queues: as asked (at most maxQueues), or for 0 one per CPU the
// Go runtime uses, at most maxQueues, and one on nodes with two CPUs or fewer (there the second queue's loops
// only compete with the traffic's own processes: measured 0.27 against 0.31 of vxlan's throughput with one).
func queues(asked int) int {
	if asked > 0 {
		return min(asked, maxQueues)
	}
	if n := runtime.GOMAXPROCS(0); n > 2 {
		return min(n, maxQueues)
	}
	return 1
}

// Stats returns the data path's counters by name (see stats.go), and the offloads in use as
// offload{feature="..."} (1 in use, 0 not); every key is always present.
func (b *Backend) Stats() map[string]uint64 {
	cs := make([]*counters, 0, 2*maxQueues+1)
	for q := range maxQueues {
		cs = append(cs, &b.rx[q], &b.tx[q])
	}
	m := sumStats(append(cs, &b.ctl)...)
	on := offloads(b.active.Load())
	for _, f := range features {
		m[`offload{feature="`+f.name+`"}`] = boolU64(on&f.bit != 0)
	}
	m[counterNames[socketDrops]] += b.socketDrops()
	b.skipLog.AddStats(m)
	return m
}

func boolU64(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// backOff handles a read error that is not the fd being closed: it counts it, logs the first of a run, and
// sleeps (1 ms doubling to 1 s) so a persistent error cannot spin a CPU. It returns false when the data
// path or the backend is closing.
func (b *Backend) backOff(stop <-chan struct{}, failing *int, k counter, c *counters, what string, err error) bool {
	c.inc(k)
	*failing++
	if *failing == 1 {
		b.log.Error(what+" failed; retrying with back-off", "err", err)
	}
	d := time.Millisecond << min(*failing-1, 10)
	select {
	case <-stop:
		return false
	case <-b.done:
		return false
	case <-time.After(d):
		return true
	}
}

// bindCandidates lists the local addresses to bind the socket to, in order of preference. The socket is
// bound to a specific address, not 0.0.0.0, so the outer source of what we send is deterministic: peers
// accept only datagrams whose source is our lease's PublicIP. PublicIP comes first when it differs from the
// interface address, for the case where it is a local address (then it is both what peers send to and what
// they expect as our source); behind NAT it is not local, the bind fails with EADDRNOTAVAIL, and the
// interface address is used (the NAT translates both ways).
func (b *Backend) bindCandidates() []netip.Addr {
	if b.outer6 {
		if b.ext.PublicIPv6 != b.ext.Addr6 {
			return []netip.Addr{b.ext.PublicIPv6, b.ext.Addr6}
		}
		return []netip.Addr{b.ext.Addr6}
	}
	if b.ext.PublicIP != b.ext.Addr {
		return []netip.Addr{b.ext.PublicIP, b.ext.Addr}
	}
	return []netip.Addr{b.ext.Addr}
}

// offloads is a set of data-path offloads (bits of feature).
type offloads uint32

const (
	offTUN    offloads = 1 << iota // IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO6): TCP super-packets across the TUN
	offUSO                         // TUN_F_USO4|USO6: UDP super-packets read from the TUN (Linux ≥ 6.2)
	offGSO                         // UDP_SEGMENT: one send carries many datagrams
	offGRO                         // UDP_GRO: one receive returns many datagrams
	offTUNGRO                      // TCP segments coalesced into super-packets written into the TUN
	offAll    = offTUN | offUSO | offGSO | offGRO | offTUNGRO
)

// features names the offloads, for --udp-offload, logs and metrics.
var features = []struct {
	name string
	bit  offloads
}{
	{"tun", offTUN}, {"uso", offUSO}, {"gso", offGSO}, {"gro", offGRO}, {"tun_gro", offTUNGRO},
}

func (o offloads) String() string {
	var names []string
	for _, f := range features {
		if o&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// parseOffload reads Deps.Offload: "" or "auto" (all), "off" (none) or a comma list of "tun", "gso", "gro".
// "tun" brings uso and tun_gro with it: they need the TUN's virtio header.
func parseOffload(s string) (offloads, error) {
	switch strings.TrimSpace(s) {
	case "", "auto":
		return offAll, nil
	case "off", "none":
		return 0, nil
	}
	var o offloads
	for _, name := range strings.Split(s, ",") {
		switch strings.TrimSpace(name) {
		case "tun":
			o |= offTUN | offUSO | offTUNGRO
		case "gso":
			o |= offGSO
		case "gro":
			o |= offGRO
		default:
			return 0, fmt.Errorf("udp offload %q in %q: want auto, off, or a comma list of tun, gso, gro", name, s)
		}
	}
	return o, nil
}

// Package udp is the user-space udp backend, wire-compatible with flannel's: a TUN device ("flannel0")
// carries the overlay's IPv4 packets, and each is sent as the entire payload of one UDP datagram to the
// PublicIP of the node that leases the destination's subnet, on the network-wide port (default 8285).
//
// Unlike flannel it accepts a datagram only from a current peer's PublicIP, only with an inner source inside
// a subnet leased by that peer and an inner destination inside our own subnet, and it counts what it drops
// by reason (Backend.Stats). Destinations in no lease get an ICMP net unreachable written back into the TUN.
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
	"net"
	"net/netip"
	"os"
	"strconv"
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
	log  *slog.Logger
	ext  backend.External
	port uint16
	mtu  int // the TUN's MTU: External.MTU − Overhead

	table atomic.Pointer[table] // the current forwarding table; never nil
	rx    counters              // written by routineUDPReader only
	tx    counters              // written by routineTUNReader only

	mu     sync.Mutex // guards all following fields
	state  int        // stateNew → stateUp → stateClosed (stateNew → stateClosed without Up)
	h      *kernel.Handle
	tun    *os.File
	tunIdx int
	conn   *net.UDPConn
	done   chan struct{} // closed by Close, to cut short an error back-off
	wg     sync.WaitGroup
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
	ext := d.External
	if !ext.Addr.Unmap().Is4() {
		return nil, fmt.Errorf("udp backend: external interface %q: address %q is not IPv4", ext.Name, ext.Addr)
	}
	ext.Addr = ext.Addr.Unmap()
	if !ext.PublicIP.IsValid() {
		ext.PublicIP = ext.Addr
	}
	ext.PublicIP = ext.PublicIP.Unmap()
	if ext.MTU-Overhead < minMTU {
		return nil, fmt.Errorf("udp backend: external interface %q: MTU %d leaves less than %d bytes for the TUN", ext.Name, ext.MTU, minMTU)
	}
	log := d.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Backend{log: log, ext: ext, port: uint16(cfg.Port), mtu: ext.MTU - Overhead, done: make(chan struct{})}
	b.table.Store(emptyTable())
	return b, nil
}

// Stats returns the data path's counters by name (see stats.go); every key is always present.
func (b *Backend) Stats() map[string]uint64 { return sumStats(&b.rx, &b.tx) }

// routineTUNReader moves packets from the TUN to peers until the TUN is closed.
func (b *Backend) routineTUNReader(tun *os.File, conn *net.UDPConn) {
	b.log.Debug("routine: TUN reader started")
	defer b.log.Debug("routine: TUN reader stopped")
	buf := make([]byte, maxPacket)
	var icmp [icmpMaxLen]byte
	limit := tokenBucket{rate: icmpRate, burst: icmpBurst}
	var failing int
	for {
		n, err := tun.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) || !b.backOff(&failing, tunReadErrors, &b.tx, "read from TUN", err) {
				return
			}
			continue
		}
		failing = 0
		t := b.table.Load()
		p, h, r := t.routeTx(buf[:n])
		switch r {
		case reasonOK:
			if _, err := conn.WriteToUDPAddrPort(buf[:h.totalLen], p.outer); err != nil {
				b.tx.inc(udpWriteErrors)
				continue
			}
			b.tx.inc(txPackets)
			b.tx.add(txBytes, h.totalLen)
		case reasonNoRoute:
			b.tx.inc(dropNoRoute)
			m := buildUnreachable(icmp[:], buf[:n], h, t.tunAddr)
			if m == 0 {
				continue
			}
			if !limit.allow(time.Now()) {
				b.tx.inc(dropICMPRateLimited)
				continue
			}
			if _, err := tun.Write(icmp[:m]); err != nil {
				b.tx.inc(tunWriteErrors)
				continue
			}
			b.tx.inc(txNoRouteICMP)
		case reasonNotIPv4:
			b.tx.inc(dropTxNotIPv4)
		default:
			b.tx.inc(dropTxMalformed)
		}
	}
}

// routineUDPReader moves datagrams from peers into the TUN until the socket is closed.
func (b *Backend) routineUDPReader(tun *os.File, conn *net.UDPConn) {
	b.log.Debug("routine: UDP reader started")
	defer b.log.Debug("routine: UDP reader stopped")
	buf := make([]byte, maxPacket)
	var failing int
	for {
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || !b.backOff(&failing, udpReadErrors, &b.rx, "read from UDP socket", err) {
				return
			}
			continue
		}
		failing = 0
		m, r := b.table.Load().acceptRx(from.Addr(), buf[:n])
		if r != reasonOK {
			b.rx.inc(rxDrop[r])
			continue
		}
		if _, err := tun.Write(buf[:m]); err != nil {
			b.rx.inc(tunWriteErrors)
			continue
		}
		b.rx.inc(rxPackets)
		b.rx.add(rxBytes, m)
	}
}

// backOff handles a read error that is not the fd being closed: it counts it, logs the first of a run, and
// sleeps (1 ms doubling to 1 s) so a persistent error (say, the device deleted under us) cannot spin a CPU.
// It returns false when the backend is closing.
func (b *Backend) backOff(failing *int, k counter, c *counters, what string, err error) bool {
	c.inc(k)
	*failing++
	if *failing == 1 {
		b.log.Error(what+" failed; retrying with back-off", "err", err)
	}
	d := time.Millisecond << min(*failing-1, 10)
	select {
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
	if b.ext.PublicIP != b.ext.Addr {
		return []netip.Addr{b.ext.PublicIP, b.ext.Addr}
	}
	return []netip.Addr{b.ext.Addr}
}

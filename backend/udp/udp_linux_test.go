package udp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// The kernel tier: a kerneltest.Topology of three nodes carrying real traffic through the backend. Every
// node runs one Backend (flannel0): Up inside the node's namespace, Set with hand-built leases; node 2's lease
// has BackendType "", as flanneld's udp backend writes it. The nodes filter reverse paths strictly, and the
// lan namespace gets 192.0.2.99/24 on br0 as a host that is no peer (ReceiveChecks).

const testNetwork = `{"Network": "10.5.0.0/16", "Backend": {"Type": "udp"}}`

type node struct {
	*kerneltest.Node
	b     *Backend
	lease subnet.Lease
	local backend.Local
	kicks chan struct{} // Deps.Kick
}

type cluster struct {
	t     *testing.T
	lan   *kerneltest.NS
	net   *subnet.Config
	nodes []*node
}

func newCluster(t *testing.T, count int) *cluster {
	t.Helper()
	return newClusterOffload(t, count, nil)
}

// newClusterOffload is newCluster with node i+1's Deps.Offload set to offload[i] (default "auto").
func newClusterOffload(t *testing.T, count int, offload []string) *cluster {
	t.Helper()
	tp := kerneltest.NewTopology(t, count)
	cfg, err := subnet.ParseConfig([]byte(testNetwork))
	if err != nil {
		t.Fatal(err)
	}
	cl := &cluster{t: t, lan: tp.LAN, net: cfg}
	for _, kn := range tp.Nodes {
		n := &node{Node: kn}
		// Strict reverse-path filtering, as many distributions configure it.
		if err := n.NS.Do(func() error {
			for _, k := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
				if err := kernel.WriteSysctl(k, "1"); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		n.lease = subnet.Lease{
			Subnet: n.Subnet,
			Attrs:  subnet.Attrs{PublicIP: n.Underlay, BackendType: "udp"},
		}
		if n.I == 2 {
			n.lease.Attrs.BackendType = "" // as flanneld's udp backend writes it
		}
		n.kicks = make(chan struct{}, 1)
		deps := backend.Deps{Queues: queuesForTest(offload), Kick: func() {
			select {
			case n.kicks <- struct{}{}:
			default:
			}
		}}
		if n.I <= len(offload) {
			deps.Offload = offload[n.I-1]
		}
		n.b = newTestBackendDeps(t, n.Underlay, fmt.Sprintf("n%d", n.I), cfg, deps)
		n.local = up(t, n.NS, n.b)
		cl.nodes = append(cl.nodes, n)
	}
	for _, n := range cl.nodes {
		cl.set(n, nil)
	}
	return cl
}

// queuesForTest: TestOffloads (offload given) runs two queues per node, so the multi-queue TUN and the
// SO_REUSEPORT group are exercised whatever the CPU count; the other tests run the automatic count.
func queuesForTest(offload []string) int {
	if offload != nil {
		return 2
	}
	return 0
}

// newTestBackend makes a backend for a node whose underlay is eth0 with addr, logging to t.
func newTestBackend(t *testing.T, ns *kerneltest.NS, addr netip.Addr, name string, cfg *subnet.Config) *Backend {
	t.Helper()
	return newTestBackendDeps(t, addr, name, cfg, backend.Deps{})
}

// newTestBackendDeps is newTestBackend with d's Offload and Kick.
func newTestBackendDeps(t *testing.T, addr netip.Addr, name string, cfg *subnet.Config, d backend.Deps) *Backend {
	t.Helper()
	d.Log = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	d.External = backend.External{Name: "eth0", MTU: 1500, Addr: addr, PublicIP: addr}
	d.Network = cfg
	be, err := New(d)
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	t.Cleanup(func() { b.Close() })
	return b
}

// up calls b.Up inside ns.
func up(t *testing.T, ns *kerneltest.NS, b *Backend) backend.Local {
	t.Helper()
	var local backend.Local
	if err := ns.Do(func() (err error) {
		local, err = b.Up(context.Background())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return local
}

// set hands n's backend the complete state: its own lease and every other node's, except those in skip.
func (cl *cluster) set(n *node, skip map[int]bool) {
	cl.t.Helper()
	cfg := &backend.Config{Network: *cl.net, Own: n.lease}
	for _, o := range cl.nodes {
		if o != n && !skip[o.I] {
			cfg.Peers = append(cfg.Peers, o.lease)
		}
	}
	if err := n.b.Set(cfg); err != nil {
		cl.t.Fatalf("node %d: Set: %v", n.I, err)
	}
}

// ping pings dst from the container of n and returns ping's output and whether every reply came back.
func ping(n *node, dst netip.Addr, args ...string) (string, bool) {
	out, err := n.Ping(dst, args...)
	return out, err == nil
}

func (cl *cluster) mustPing(n *node, dst netip.Addr, args ...string) string {
	cl.t.Helper()
	out, ok := ping(n, dst, args...)
	if !ok {
		cl.t.Fatalf("ping %s from container %d failed:\n%s", dst, n.I, out)
	}
	return out
}

// TestCluster carries ICMP and TCP between containers on three nodes and checks MTU handling, ICMP for
// unleased destinations, the receive-side checks, peer removal and re-adding, route reconcile and Close.
func TestCluster(t *testing.T) {
	cl := newCluster(t, 3)
	n1, n2, n3 := cl.nodes[0], cl.nodes[1], cl.nodes[2]

	t.Run("Local", func(t *testing.T) {
		if want := (backend.Local{BackendType: "udp", MTU: 1472}); n1.local.BackendType != want.BackendType || n1.local.MTU != want.MTU || n1.local.BackendData != nil {
			t.Errorf("Local = %+v, want %+v", n1.local, want)
		}
		if out := n1.NS.MustIP(t, "-d", "link", "show", "flannel0"); !strings.Contains(out, "mtu 1472") || !strings.Contains(out, "tun type tun pi off") {
			t.Errorf("flannel0 is not an IFF_NO_PI TUN with MTU 1472:\n%s", out)
		}
	})

	t.Run("Ping", func(t *testing.T) {
		for _, p := range [][2]*node{{n1, n2}, {n2, n1}, {n1, n3}, {n3, n2}} {
			out := cl.mustPing(p[0], p[1].CtrAddr)
			// The backend does not decrement the TTL: 64 less the two kernel forwarding hops.
			if !strings.Contains(out, "ttl=62") {
				t.Errorf("ping %d→%d: want ttl=62 (two routed hops):\n%s", p[0].I, p[1].I, out)
			}
		}
		// The node itself reaches a remote container through the TUN (source: the TUN address).
		if out, err := n1.NS.Exec("ping", "-n", "-c", "1", "-W", "2", n2.CtrAddr.String()); err != nil {
			t.Errorf("ping from node 1 itself: %v", err)
		} else if !strings.Contains(out, "1 received") {
			t.Errorf("ping from node 1 itself:\n%s", out)
		}
	})

	t.Run("TCP", func(t *testing.T) {
		tcpExchange(t, n2, n1)
		tcpExchange(t, n1, n2)
		tcpExchange(t, n3, n1)
	})

	t.Run("MTU", func(t *testing.T) {
		// An inner packet of exactly the TUN MTU (1472 = 1444 + 8 ICMP + 20 IP) passes with DF set.
		cl.mustPing(n1, n2.CtrAddr, "-M", "do", "-s", "1444")
		cl.mustPing(n2, n1.CtrAddr, "-M", "do", "-s", "1444")
		// One byte more: the node refuses to route it into the TUN and says so (frag needed); once the
		// container has learnt the path MTU its own stack says "message too long".
		out, ok := ping(n1, n2.CtrAddr, "-M", "do", "-s", "1445")
		if ok || !(strings.Contains(out, "Frag needed") || strings.Contains(out, "message too long")) {
			t.Errorf("DF ping one byte over the MTU: want frag needed / message too long:\n%s", out)
		}
		// DF clear: a packet over the MTU is fragmented by the node and still arrives.
		cl.mustPing(n1, n2.CtrAddr, "-s", "4000")
	})

	t.Run("NoLease", func(t *testing.T) {
		before := n1.b.Stats()
		start := time.Now()
		out, ok := ping(n1, netip.MustParseAddr("10.5.99.2"))
		if ok || !strings.Contains(out, "From 10.5.1.0 icmp_seq=1 Destination Net Unreachable") {
			t.Errorf("ping to an unleased subnet: want net unreachable from the TUN address:\n%s", out)
		}
		if d := time.Since(start); d > 1500*time.Millisecond {
			t.Errorf("ping to an unleased subnet took %v; the ICMP error should end it at once", d)
		}
		after := n1.b.Stats()
		if after["tx_no_route_icmp"] < before["tx_no_route_icmp"]+2 || after["drop_no_route"] < before["drop_no_route"]+2 {
			t.Errorf("counters: before %v, after %v", before, after)
		}
		// TCP to an unleased host fails promptly too: the kernel turns our ICMP error into a socket error.
		var err error
		n1.Ctr.Do(func() error {
			_, err = net.DialTimeout("tcp4", "10.5.99.2:80", 2*time.Second)
			return nil
		})
		if err == nil || !strings.Contains(err.Error(), "no route to host") && !strings.Contains(err.Error(), "network is unreachable") {
			t.Errorf("TCP dial to an unleased subnet: got %v, want an unreachable error", err)
		}
	})

	t.Run("ReceiveChecks", func(t *testing.T) {
		// A UDP listener in container 1 sees what the backend of node 1 delivers.
		lc, dst := listenInContainer(t, n1, 9999)
		to := netip.AddrPortFrom(n1.Underlay, DefaultPort)
		cl.lan.MustIP(t, "addr", "add", "192.0.2.99/24", "dev", "br0")

		cases := []struct {
			name    string
			from    *kerneltest.NS
			src     netip.Addr // outer source (bound, ephemeral port)
			payload []byte
			counter string // "" for delivered
		}{
			{"real peer, good packet (control)", n2.NS, n2.Underlay, udpPacket(n2.CtrAddr.String(), dst, "hello"), ""},
			{"no peer", cl.lan, netip.MustParseAddr("192.0.2.99"), udpPacket(n2.CtrAddr.String(), dst, "spoof"), "socket_drops"}, // by the peer filter, in the kernel
			{"inner source of another peer", n2.NS, n2.Underlay, udpPacket(n3.CtrAddr.String(), dst, "spoof"), "drop_bad_inner_source"},
			{"inner source in our subnet", n2.NS, n2.Underlay, udpPacket("10.5.1.7", dst, "spoof"), "drop_bad_inner_source"},
			{"inner destination not ours", n2.NS, n2.Underlay, udpPacket(n2.CtrAddr.String(), netip.AddrPortFrom(n3.CtrAddr, 9999), "relay"), "drop_not_our_subnet"},
			{"malformed", n2.NS, n2.Underlay, []byte{0x45, 0, 0, 200, 1, 2, 3}, "drop_malformed"},
			{"IPv6", n2.NS, n2.Underlay, append([]byte{0x60}, make([]byte, 60)...), "drop_malformed"},
		}
		for _, c := range cases {
			before := n1.b.Stats()
			sendFrom(t, c.from, c.src, to, c.payload)
			if c.counter == "" {
				lc.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 100)
				n, _, err := lc.ReadFromUDPAddrPort(buf)
				if err != nil || string(buf[:n]) != "hello" {
					t.Fatalf("%s: not delivered: %q, %v", c.name, buf[:n], err)
				}
				continue
			}
			// The drop counter rises and the listener gets nothing. (rx_packets is not compared: unrelated
			// overlay traffic from earlier subtests may still arrive meanwhile.)
			waitStat(t, n1.b, c.counter, before[c.counter]+1)
			lc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			if n, _, err := lc.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
				t.Errorf("%s: delivered %d bytes", c.name, n)
			}
		}
	})

	t.Run("PeerRemovedAndReAdded", func(t *testing.T) {
		cl.set(n1, map[int]bool{2: true})
		out, ok := ping(n1, n2.CtrAddr)
		if ok || !strings.Contains(out, "Destination Net Unreachable") {
			t.Errorf("ping to a removed peer: want net unreachable:\n%s", out)
		}
		before := n1.b.Stats()["socket_drops"] // the peer filter drops a removed peer's datagrams in the kernel
		if out, ok := ping(n2, n1.CtrAddr); ok {
			t.Errorf("ping from a removed peer went through:\n%s", out)
		}
		if after := n1.b.Stats()["socket_drops"]; after < before+2 {
			t.Errorf("socket_drops went from %d to %d, want +2", before, after)
		}
		cl.mustPing(n1, n3.CtrAddr) // others unaffected
		cl.set(n1, nil)
		cl.mustPing(n1, n2.CtrAddr)
		cl.mustPing(n2, n1.CtrAddr)
	})

	t.Run("Reconcile", func(t *testing.T) {
		n1.NS.MustIP(t, "route", "add", "10.5.77.0/24", "dev", "flannel0", "proto", "87") // stale, ours
		n1.NS.MustIP(t, "route", "add", "10.5.88.0/24", "dev", "cbr0")                    // foreign
		n1.NS.MustIP(t, "route", "add", "10.6.0.0/16", "dev", "cbr0", "proto", "87")      // another weftd's network
		n1.NS.MustIP(t, "route", "del", "10.5.0.0/16", "dev", "flannel0")                 // drift
		n1.NS.MustIP(t, "addr", "add", "10.9.9.9/32", "dev", "flannel0")                  // stray address
		cl.set(n1, nil)
		routes := n1.NS.MustIP(t, "route", "show")
		if !strings.Contains(routes, "10.5.0.0/16 dev flannel0 proto 87 scope link") {
			t.Errorf("network route not restored:\n%s", routes)
		}
		if strings.Contains(routes, "10.5.77.0") {
			t.Errorf("stale route of ours not removed:\n%s", routes)
		}
		if !strings.Contains(routes, "10.5.88.0/24 dev cbr0") {
			t.Errorf("foreign route removed:\n%s", routes)
		}
		if !strings.Contains(routes, "10.6.0.0/16 dev cbr0 proto 87") {
			t.Errorf("another network's route of ours removed (ownership scope):\n%s", routes)
		}
		addrs := n1.NS.MustIP(t, "-4", "-o", "addr", "show", "dev", "flannel0")
		if !strings.Contains(addrs, "inet 10.5.1.0/32") || strings.Contains(addrs, "10.9.9.9") {
			t.Errorf("flannel0 addresses: want only 10.5.1.0/32:\n%s", addrs)
		}
		cl.mustPing(n1, n2.CtrAddr)
	})

	t.Run("Close", func(t *testing.T) {
		if got, want := loopGoroutines(), 2*n1.b.queues*len(cl.nodes); got != want {
			t.Errorf("%d packet loops running, want %d (2 per queue, %d queues per node)", got, want, n1.b.queues)
		}
		for _, n := range cl.nodes {
			for range 2 { // idempotent
				if err := n.b.Close(); err != nil {
					t.Errorf("node %d: Close: %v", n.I, err)
				}
			}
		}
		if got := loopGoroutines(); got != 0 {
			t.Errorf("%d packet loops still running after Close", got)
		}
		if out, err := n1.NS.IP("link", "show", "flannel0"); err == nil {
			t.Errorf("flannel0 still exists after Close:\n%s", out)
		}
		if err := n1.b.Set(&backend.Config{Network: *cl.net, Own: n1.lease}); !errors.Is(err, ErrClosed) {
			t.Errorf("Set after Close: %v, want ErrClosed", err)
		}
	})
}

// TestLifecycle checks Up's namespace setup, a failed Up cleaning up after itself, Close before Up, and
// Up and Set after Close.
func TestLifecycle(t *testing.T) {
	kerneltest.RequireRoot(t)
	cfg, err := subnet.ParseConfig([]byte(testNetwork))
	if err != nil {
		t.Fatal(err)
	}
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-n")
	kerneltest.Bridge(t, ns, "eth0")
	ns.MustIP(t, "addr", "add", "192.0.2.11/24", "dev", "eth0")
	addr := netip.MustParseAddr("192.0.2.11")

	// Close before Up, then Up after Close.
	b := newTestBackend(t, ns, addr, "n", cfg)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Do(func() error { _, err := b.Up(context.Background()); return err }); !errors.Is(err, ErrClosed) {
		t.Errorf("Up after Close: %v, want ErrClosed", err)
	}

	// The port is taken: Up fails and leaves no TUN behind.
	var blocker *net.UDPConn
	if err := ns.Do(func() (err error) {
		blocker, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, DefaultPort)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b = newTestBackend(t, ns, addr, "n", cfg)
	err = ns.Do(func() error { _, err := b.Up(context.Background()); return err })
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Up with the port taken: %v, want address already in use", err)
	}
	if out, err := ns.IP("link", "show", "flannel0"); err == nil {
		t.Errorf("flannel0 left behind by a failed Up:\n%s", out)
	}
	blocker.Close()
	if err := b.Close(); err != nil {
		t.Errorf("Close after a failed Up: %v", err)
	}

	// A working Up: sysctls, Set before Up refused, Up twice refused.
	b = newTestBackend(t, ns, addr, "n", cfg)
	if err := b.Set(&backend.Config{Network: *cfg, Own: subnet.Lease{Subnet: netip.MustParsePrefix("10.5.1.0/24")}}); err == nil {
		t.Error("Set before Up succeeded")
	}
	up(t, ns, b)
	if err := ns.Do(func() error { _, err := b.Up(context.Background()); return err }); err == nil {
		t.Error("second Up succeeded")
	}
	for _, k := range []string{"net/ipv4/ip_forward", "net/ipv4/conf/flannel0/accept_local"} {
		if out := ns.MustExec(t, "cat", "/proc/sys/"+k); strings.TrimSpace(out) != "1" {
			t.Errorf("%s = %q, want 1", k, out)
		}
	}
	if out := ns.MustIP(t, "-o", "link", "show", "flannel0"); !strings.Contains(out, ",UP,") {
		t.Errorf("flannel0 is not up: %s", out)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := loopGoroutines(); got != 0 {
		t.Errorf("%d packet loops still running after Close", got)
	}
}

// loopGoroutines counts the running packet loops of every Backend in the process.
func loopGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "udp.(*Backend).routine")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// tcpExchange opens a TCP connection from client's container to server's and sends 200 KB each way at
// once, checking every byte.
func tcpExchange(t *testing.T, server, client *node) {
	t.Helper()
	const size = 200 << 10
	toServer, toClient := make([]byte, size), make([]byte, size)
	r := rand.New(rand.NewPCG(uint64(server.I), uint64(client.I)))
	for i := range size {
		toServer[i], toClient[i] = byte(r.Uint32()), byte(r.Uint32())
	}
	var ln net.Listener
	if err := server.Ctr.Do(func() (err error) {
		ln, err = net.Listen("tcp4", server.CtrAddr.String()+":0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(15 * time.Second)
	var wg sync.WaitGroup
	var serverErr error
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		serverErr = exchange(c, deadline, toClient, toServer)
	})
	var c net.Conn
	if err := client.Ctr.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %d→%d: %v", client.I, server.I, err)
	}
	clientErr := exchange(c, deadline, toServer, toClient)
	c.Close()
	wg.Wait()
	if clientErr != nil || serverErr != nil {
		t.Errorf("TCP %d→%d: client: %v; server: %v", client.I, server.I, clientErr, serverErr)
	}
}

// exchange writes out while reading len(want) bytes and comparing them with want.
func exchange(c net.Conn, deadline time.Time, out, want []byte) error {
	c.SetDeadline(deadline)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(out); werr <- err }()
	got := make([]byte, len(want))
	_, rerr := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("received bytes differ from those sent")
	}
	return nil
}

// listenInContainer opens a UDP socket on n's container address and port, closed when the test ends.
func listenInContainer(t *testing.T, n *node, port uint16) (*net.UDPConn, netip.AddrPort) {
	t.Helper()
	dst := netip.AddrPortFrom(n.CtrAddr, port)
	var lc *net.UDPConn
	if err := n.Ctr.Do(func() (err error) {
		lc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lc.Close() })
	return lc, dst
}

// sendFrom sends one datagram to `to` from a socket in ns bound to src (ephemeral port).
func sendFrom(t *testing.T, ns *kerneltest.NS, src netip.Addr, to netip.AddrPort, payload []byte) {
	t.Helper()
	if err := ns.Do(func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// udpPacket builds an IPv4/UDP packet from src (port 4000) to dst carrying data, with a correct header
// checksum and no UDP checksum.
func udpPacket(src string, dst netip.AddrPort, data string) []byte {
	p := make([]byte, 28+len(data))
	p[0], p[8], p[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := netip.MustParseAddr(src).As4(), dst.Addr().As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	binary.BigEndian.PutUint16(p[20:], 4000)
	binary.BigEndian.PutUint16(p[22:], dst.Port())
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(data)))
	copy(p[28:], data)
	return p
}

// waitStat waits until b's counter key reaches want.
func waitStat(t *testing.T, b *Backend, key string, want uint64) {
	t.Helper()
	for start := time.Now(); time.Since(start) < 2*time.Second; time.Sleep(5 * time.Millisecond) {
		if b.Stats()[key] >= want {
			return
		}
	}
	t.Errorf("counter %s = %d, want ≥ %d (stats %v)", key, b.Stats()[key], want, b.Stats())
}

package udp

import (
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"encoding/binary"
	"golang.org/x/sys/unix"
	"unsafe"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// TestOffloads runs the data path with every offload on (nodes 1 and 2) beside a node with none (node 3,
// --udp-offload=off), so the mixed cluster is checked too: bulk TCP arrives intact on every pair, the MTU
// holds, a GRO'd run of datagrams is checked one inner packet at a time, a forced GSO failure at run time
// falls back without losing the connection, a stranger's flood is dropped in the kernel, and a TUN set down
// or deleted is repaired.
func TestOffloads(t *testing.T) {
	cl := newClusterOffload(t, 3, []string{"auto", "auto", "off"}) // two queues each (multi-queue TUN)
	n1, n2, n3 := cl.nodes[0], cl.nodes[1], cl.nodes[2]

	t.Run("Negotiated", func(t *testing.T) {
		for _, f := range []string{"tun", "gso", "gro", "tun_gro"} {
			k := `offload{feature="` + f + `"}`
			if got := n1.b.Stats()[k]; got != 1 {
				t.Errorf("node 1: %s = %d, want 1 (offloads on)", k, got)
			}
			if got := n3.b.Stats()[k]; got != 0 {
				t.Errorf("node 3: %s = %d, want 0 (--udp-offload=off)", k, got)
			}
		}
		if out := n3.NS.MustIP(t, "-d", "link", "show", "flannel0"); strings.Contains(out, "vnet_hdr on") {
			t.Errorf("node 3 TUN has a virtio header with offloads off:\n%s", out)
		}
	})

	t.Run("PingEveryPair", func(t *testing.T) {
		for _, a := range cl.nodes {
			for _, b := range cl.nodes {
				if a != b {
					cl.mustPing(a, b.CtrAddr)
				}
			}
		}
	})

	t.Run("Bulk", func(t *testing.T) {
		before1, before2 := n1.b.Stats(), n2.b.Stats()
		tcpTransfer(t, n1, n2, 100<<20) // offloads on both ends
		tcpTransfer(t, n3, n1, 20<<20)  // on → off
		tcpTransfer(t, n1, n3, 20<<20)  // off → on
		after1, after2 := n1.b.Stats(), n2.b.Stats()
		// On the wire every datagram is one inner packet, as flanneld sends and expects: node 3 reads
		// without GRO, so a datagram carrying more than one packet would show as trailing bytes.
		if got := n3.b.Stats()["rx_trailing"]; got != 0 {
			t.Errorf("node 3 (no GRO, as flanneld) got %d datagrams with more than one packet from GSO senders", got)
		}
		if got := n3.b.Stats()["rx_packets"]; got < 20<<20/1500 {
			t.Errorf("node 3 received only %d packets", got)
		}
		// The sender read super-packets (many packets per TUN read) and the receiver got GRO runs.
		if reads, pkts := after2["tun_reads"]-before2["tun_reads"], after2["tx_packets"]-before2["tx_packets"]; pkts < 4*reads {
			t.Errorf("node 2 sent %d packets in %d TUN reads: want super-packets (≥ 4 per read)", pkts, reads)
		}
		if calls, pkts := after1["recvmmsg_calls"]-before1["recvmmsg_calls"], after1["rx_packets"]-before1["rx_packets"]; pkts < 4*calls {
			t.Errorf("node 1 received %d packets in %d recvmmsg calls: want batches (≥ 4 per call)", pkts, calls)
		}
		// Node 1 wrote the received segments into its TUN as IPv4 super-packets; node 3 (offloads off) none.
		supers, supers6, segs := after1["tun_super_packets"]-before1["tun_super_packets"],
			after1["tun_super_packets_ipv6"]-before1["tun_super_packets_ipv6"], after1["tun_super_segments"]-before1["tun_super_segments"]
		if supers == 0 || supers6 != 0 || segs < 100<<20/1500/2 || segs < 4*supers {
			t.Errorf("node 1: %d super-packets (%d IPv6) carrying %d segments: want IPv4 ones, most of the data, ≥ 4 segments each", supers, supers6, segs)
		}
		if got := n3.b.Stats()["tun_super_packets"]; got != 0 {
			t.Errorf("node 3 (offloads off) wrote %d super-packets", got)
		}
	})

	t.Run("MTU", func(t *testing.T) {
		for _, p := range [][2]*node{{n1, n2}, {n2, n1}, {n3, n1}, {n1, n3}} {
			cl.mustPing(p[0], p[1].CtrAddr, "-M", "do", "-s", "1444")
			out, ok := ping(p[0], p[1].CtrAddr, "-M", "do", "-s", "1445")
			if ok || !(strings.Contains(out, "Frag needed") || strings.Contains(out, "message too long")) {
				t.Errorf("DF ping %d→%d one byte over the MTU: want frag needed:\n%s", p[0].I, p[1].I, out)
			}
		}
	})

	t.Run("GRORunWithABadSegment", func(t *testing.T) {
		lc, dst := listenInContainer(t, n1, 9998)
		good1 := udpPacket(n2.CtrAddr.String(), dst, strings.Repeat("A", 100))
		bad := udpPacket(n3.CtrAddr.String(), dst, strings.Repeat("B", 100)) // node 3's source, from node 2
		good2 := udpPacket(n2.CtrAddr.String(), dst, strings.Repeat("C", 100))
		before := n1.b.Stats()
		sendGSO(t, n2.NS, n2.Underlay, netip.AddrPortFrom(n1.Underlay, DefaultPort), good1, bad, good2)
		var got []string
		for range 2 {
			lc.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 200)
			n, _, err := lc.ReadFromUDPAddrPort(buf)
			if err != nil || n != 100 {
				t.Fatalf("read: %d bytes, %v (got %q so far)", n, err, got)
			}
			got = append(got, string(buf[:1]))
		}
		if strings.Join(got, "") != "AC" {
			t.Errorf("delivered %q, want the two good segments A and C", got)
		}
		waitStat(t, n1.b, "drop_bad_inner_source", before["drop_bad_inner_source"]+1)
		lc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, _, err := lc.ReadFromUDPAddrPort(make([]byte, 200)); err == nil {
			t.Errorf("the bad segment was delivered (%d bytes)", n)
		}
	})

	t.Run("GSOFallbackAtRunTime", func(t *testing.T) {
		// The underlay MTU shrinks under a running node: the kernel refuses UDP_SEGMENT sends whose
		// datagrams no longer fit (EINVAL), the batch goes out again without GSO (fragmented, as DF is
		// clear) and the socket stops using GSO.
		n2.NS.MustIP(t, "link", "set", "eth0", "mtu", "1400")
		defer n2.NS.MustIP(t, "link", "set", "eth0", "mtu", "1500")
		tcpTransfer(t, n1, n2, 20<<20)
		s := n2.b.Stats()
		if s["gso_fallbacks"] == 0 || s[`offload{feature="gso"}`] != 0 {
			t.Errorf("node 2 after forced GSO failure: gso_fallbacks %d, gso in use %d; want ≥ 1 and 0", s["gso_fallbacks"], s[`offload{feature="gso"}`])
		}
		cl.mustPing(n2, n1.CtrAddr)
	})

	t.Run("NonPeerFlood", func(t *testing.T) {
		cl.lan.MustIP(t, "addr", "add", "192.0.2.98/24", "dev", "br0")
		before := n1.b.Stats()
		var sent int
		var wg sync.WaitGroup
		wg.Go(func() {
			sent = flood(t, cl.lan, netip.MustParseAddr("192.0.2.98"), netip.AddrPortFrom(n1.Underlay, DefaultPort), 50000, 3*time.Second)
		})
		cl.mustPing(n2, n1.CtrAddr) // peer traffic flows during the flood
		wg.Wait()
		cl.mustPing(n2, n1.CtrAddr)
		after := n1.b.Stats()
		if d := after["socket_drops"] - before["socket_drops"]; d < uint64(sent)/2 {
			t.Errorf("socket_drops +%d for %d datagrams from a non-peer: want them dropped in the kernel", d, sent)
		}
		// User space never saw the flood: only the pings' few batches were read.
		if calls := after["recvmmsg_calls"] - before["recvmmsg_calls"]; calls > 200 {
			t.Errorf("recvmmsg_calls +%d during a non-peer flood of %d: the flood reached user space", calls, sent)
		}
		if d := after["drop_unknown_peer"] - before["drop_unknown_peer"]; d != 0 {
			t.Errorf("drop_unknown_peer +%d: the flood reached user space", d)
		}
	})

	t.Run("RepairDown", func(t *testing.T) {
		n1.NS.MustIP(t, "link", "set", "flannel0", "down")
		cl.set(n1, nil)
		if out := n1.NS.MustIP(t, "link", "show", "flannel0"); !strings.Contains(out, ",UP") {
			t.Errorf("flannel0 not up after reconcile:\n%s", out)
		}
		cl.mustPing(n1, n2.CtrAddr)
		cl.mustPing(n2, n1.CtrAddr)
	})

	t.Run("RepairDeleted", func(t *testing.T) {
		select { // drain
		case <-n1.kicks:
		default:
		}
		n1.NS.MustIP(t, "link", "del", "flannel0")
		select {
		case <-n1.kicks:
		case <-time.After(3 * time.Second):
			t.Errorf("the backend did not ask for a reconcile after its TUN was deleted")
		}
		cl.set(n1, nil)
		if got := n1.b.Stats()["tun_recreated"]; got != 1 {
			t.Errorf("tun_recreated = %d, want 1", got)
		}
		cl.mustPing(n1, n2.CtrAddr)
		cl.mustPing(n2, n1.CtrAddr)
		tcpExchange(t, n1, n3)
	})
}

// TestRepairFails: while the TUN cannot be recreated (here: the underlay address it binds to is gone), Set
// fails and Healthy says why; once the cause is gone the next Set repairs the data path.
func TestRepairFails(t *testing.T) {
	cl := newCluster(t, 2)
	n1, n2 := cl.nodes[0], cl.nodes[1]
	cl.mustPing(n1, n2.CtrAddr)
	if err := n1.b.Healthy(); err != nil {
		t.Fatalf("Healthy before: %v", err)
	}
	addr := n1.Underlay.String() + "/24"
	n1.NS.MustIP(t, "addr", "del", addr, "dev", "eth0")
	n1.NS.MustIP(t, "link", "del", "flannel0")
	cfg := &backend.Config{Network: *cl.net, Own: n1.lease, Peers: []subnet.Lease{n2.lease}}
	if err := n1.b.Set(cfg); err == nil {
		t.Fatal("Set recreated the data path without its underlay address")
	}
	if err := n1.b.Healthy(); err == nil || !strings.Contains(err.Error(), "cannot be recreated") {
		t.Errorf("Healthy while the TUN cannot be recreated: %v", err)
	}
	n1.NS.MustIP(t, "addr", "add", addr, "dev", "eth0")
	if err := n1.b.Set(cfg); err != nil {
		t.Fatalf("Set after the address is back: %v", err)
	}
	if err := n1.b.Healthy(); err != nil {
		t.Errorf("Healthy after the repair: %v", err)
	}
	cl.mustPing(n1, n2.CtrAddr)
	cl.mustPing(n2, n1.CtrAddr)
}

// tcpTransfer sends size pseudo-random bytes from client's container to server's over TCP and checks the
// SHA-256 of what arrived.
func tcpTransfer(t *testing.T, server, client *node, size int) {
	t.Helper()
	tcpTransferTo(t, server.Node, client.Node, server.CtrAddr, size)
}

// tcpTransferTo is tcpTransfer to dst, one of server's container addresses (IPv4 or IPv6).
func tcpTransferTo(t *testing.T, server, client *kerneltest.Node, dst netip.Addr, size int) {
	t.Helper()
	var ln net.Listener
	if err := server.Ctr.Do(func() (err error) {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 0).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(30 * time.Second)
	var got [sha256.Size]byte
	var n int64
	var serverErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		h := sha256.New()
		n, serverErr = io.Copy(h, c)
		copy(got[:], h.Sum(nil))
	})
	var c net.Conn
	if err := client.Ctr.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("dial %d→%d: %v", client.I, server.I, err)
	}
	c.SetDeadline(deadline)
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{byte(client.I), byte(server.I)})
	_, clientErr := io.Copy(io.MultiWriter(c, h), io.LimitReader(src, int64(size)))
	c.Close()
	wg.Wait()
	if clientErr != nil || serverErr != nil {
		t.Errorf("TCP %d→%d: client: %v; server: %v", client.I, server.I, clientErr, serverErr)
		return
	}
	if want := h.Sum(nil); n != int64(size) || string(got[:]) != string(want) {
		t.Errorf("TCP %d→%d: %d of %d bytes arrived, hash %x, want %x", client.I, server.I, n, size, got[:4], want[:4])
	}
}

// sendGSO sends the payloads (all of one size but the last, which may be shorter) to `to` as one UDP_SEGMENT
// send from a socket in ns bound to src.
func sendGSO(t *testing.T, ns *kerneltest.NS, src netip.Addr, to netip.AddrPort, payloads ...[]byte) {
	t.Helper()
	var all []byte
	for _, p := range payloads {
		all = append(all, p...)
	}
	oob := make([]byte, unix.CmsgSpace(2))
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	nativeEndianPutUint16(oob[unix.CmsgLen(0):], uint16(len(payloads[0])))
	if err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: src.As4()}); err != nil {
			return err
		}
		return unix.Sendmsg(fd, all, oob, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}, 0)
	}); err != nil {
		t.Fatalf("UDP_SEGMENT send: %v", err)
	}
}

// flood sends up to count small datagrams from src to `to` within d, and returns how many were sent.
func flood(t *testing.T, ns *kerneltest.NS, src netip.Addr, to netip.AddrPort, count int, d time.Duration) int {
	sent := 0
	err := ns.Do(func() error {
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), net.UDPAddrFromAddrPort(to))
		if err != nil {
			return err
		}
		defer c.Close()
		payload := udpPacket("10.5.2.2", netip.AddrPortFrom(netip.MustParseAddr("10.5.1.2"), 9), "flood")
		end := time.Now().Add(d)
		for sent < count && time.Now().Before(end) {
			if _, err := c.Write(payload); err != nil && !errors.Is(err, unix.ENOBUFS) {
				return err
			}
			sent++
		}
		return nil
	})
	if err != nil {
		t.Errorf("flood: %v", err)
	}
	return sent
}

func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }

func nativeEndianPutUint16(b []byte, v uint16) { binary.NativeEndian.PutUint16(b, v) }

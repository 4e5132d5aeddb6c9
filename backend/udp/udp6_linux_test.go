package udp

import (
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// TestDualStack runs three udp nodes in a dual-stack network: containers reach each other over IPv4 and
// IPv6 (IPv6 inner packets over the IPv4 underlay), flannel0 gets the IPv6 subnet's network address and the
// IPv6 network's route, IPv6 forwarding is on, and an IPv6 destination in no lease gets an ICMPv6 "no
// route" from the TUN; 100 MB of IPv6 TCP arrive intact, coalesced into IPv6 super-packets.
func TestDualStack(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	network := &subnet.Config{EnableIPv4: true, Network: kerneltest.TopologyNetwork, SubnetLen: 24,
		EnableIPv6: true, IPv6Network: kerneltest.TopologyNetwork6, IPv6SubnetLen: 64,
		BackendType: subnet.BackendUDP, Backend: json.RawMessage(`{"Type":"udp"}`)}
	backendtest.Start(t, nodes, New, network)
	for _, n := range nodes {
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll(t)
	tp.PingAll6(t)
	n1 := nodes[0]
	if out := n1.NS.MustIP(t, "-6", "-o", "addr", "show", "dev", TUNName, "scope", "global"); !strings.Contains(out, "inet6 fd00:5:0:1::/128") {
		t.Errorf("%s IPv6 addresses: %s", TUNName, out)
	}
	kerneltest.Expect(t, "n1 IPv6 routes of ours", n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"),
		"fd00:5::/48 dev flannel0 metric 1024 pref medium")
	kerneltest.Expect(t, "n1 IPv6 forwarding", n1.NS.MustExec(t, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"), "1")
	if out, err := n1.Ping(kerneltest.TopologyNetwork6.Addr().Next().Next()); err == nil || !strings.Contains(out, "No route") {
		t.Errorf("ping to an IPv6 address in no lease: err %v, want ICMPv6 no route:\n%s", err, out)
	}
	bulk6(t, n1, nodes[1])
}

// bulk6 sends 100 MB over TCP from client's container to server's IPv6 address, checks its SHA-256, and that
// server's receive path wrote it into the TUN as IPv6 super-packets: most data segments coalesced, many per
// super-packet.
func bulk6(t *testing.T, server, client *backendtest.Node) {
	t.Helper()
	b := server.Be.(*Backend)
	before := b.Stats()
	if before[`offload{feature="tun_gro"}`] != 1 {
		t.Fatalf("n%d: coalesced TUN writes not in use: %v", server.I, before)
	}
	const size = 100 << 20
	tcpTransferTo(t, server.Node, client.Node, server.CtrAddr6, size)
	after := b.Stats()
	d := func(k string) uint64 { return after[k] - before[k] }
	supers, supers6, segs := d("tun_super_packets"), d("tun_super_packets_ipv6"), d("tun_super_segments")
	t.Logf("n%d received %d packets; %d of them in %d super-packets (%d IPv6)", server.I, d("rx_packets"), segs, supers, supers6)
	// At the MSS of a 1452 MTU (1380 to 1400 bytes of payload), 100 MB is about 76000 segments.
	if minSegs := uint64(size / 1400 / 2); supers6 != supers || segs < minSegs || segs < 4*supers {
		t.Errorf("n%d: %d IPv6 super-packets of %d carried %d segments: want all IPv6, at least %d segments (half the data), at least 4 per super-packet",
			server.I, supers6, supers, segs, minSegs)
	}
}

// TestIPv6Only runs three udp nodes in an IPv6-only network over the IPv6 underlay: the sockets are bound
// to the nodes' IPv6 addresses, containers reach each other over IPv6, the TUN MTU is the underlay's − 48,
// and on receipt the checks hold: a stranger's datagram is dropped by the IPv6 socket filter in the kernel,
// a peer's with an inner source of another peer or an inner destination not ours in user space; 100 MB of
// TCP arrive intact, coalesced into IPv6 super-packets.
func TestIPv6Only(t *testing.T) {
	tp, nodes := backendtest.NewCluster(t, 3)
	network := &subnet.Config{EnableIPv6: true, IPv6Network: kerneltest.TopologyNetwork6, IPv6SubnetLen: 64,
		BackendType: subnet.BackendUDP, Backend: json.RawMessage(`{"Type":"udp"}`)}
	backendtest.Start(t, nodes, New, network)
	for _, n := range nodes {
		if n.Local.MTU != 1500-Overhead6 {
			t.Errorf("n%d: MTU %d, want %d", n.I, n.Local.MTU, 1500-Overhead6)
		}
		n.Set(t, backendtest.Others(nodes, n)...)
	}
	tp.PingAll6(t)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	if out := n1.NS.MustExec(t, "ss", "-uln"); !strings.Contains(out, "[2001:db8::11]:8285") {
		t.Errorf("no socket on [2001:db8::11]:8285:\n%s", out)
	}
	kerneltest.Expect(t, "n1 IPv6 routes of ours", n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"),
		"fd00:5::/48 dev flannel0 metric 1024 pref medium")
	kerneltest.Expect(t, "n1 IPv4 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), "")

	b1 := n1.Be.(*Backend)
	to := netip.AddrPortFrom(n1.Underlay6, DefaultPort)
	tp.LAN.MustIP(t, "addr", "add", "2001:db8::99/64", "dev", "br0", "nodad")
	udp := []byte{0, 1, 0, 2, 0, 12, 0, 0, 'h', 'i', '!', '!'}
	for _, c := range []struct {
		name    string
		from    *kerneltest.NS
		src     netip.Addr
		payload []byte
		counter string
	}{
		{"no peer", tp.LAN, netip.MustParseAddr("2001:db8::99"), pkt6(n2.CtrAddr6.String(), n1.CtrAddr6.String(), 17, udp...), "socket_drops"},
		{"inner source of another peer", n2.NS, n2.Underlay6, pkt6(n3.CtrAddr6.String(), n1.CtrAddr6.String(), 17, udp...), "drop_bad_inner_source"},
		{"inner destination not ours", n2.NS, n2.Underlay6, pkt6(n2.CtrAddr6.String(), n3.CtrAddr6.String(), 17, udp...), "drop_not_our_subnet"},
		{"IPv4 inner packet", n2.NS, n2.Underlay6, udpPacket("10.5.2.2", netip.AddrPortFrom(n1.CtrAddr, 9), "x"), "drop_bad_inner_source"},
	} {
		before := b1.Stats()[c.counter]
		if err := c.from.Do(func() error {
			conn, err := net.DialUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.src, 0)), net.UDPAddrFromAddrPort(to))
			if err != nil {
				return err
			}
			defer conn.Close()
			_, err = conn.Write(c.payload)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		waitStat(t, b1, c.counter, before+1)
	}
	bulk6(t, n1, n2)
}

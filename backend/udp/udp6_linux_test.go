package udp

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// TestDualStack runs three udp nodes in a dual-stack network: containers reach each other over IPv4 and
// IPv6 (IPv6 inner packets over the IPv4 underlay), flannel0 gets the IPv6 subnet's network address and the
// IPv6 network's route, IPv6 forwarding is on, and an IPv6 destination in no lease gets an ICMPv6 "no
// route" from the TUN. An IPv6-only network is refused with a clear error.
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

	v6only := *network
	v6only.EnableIPv4 = false
	if _, err := New(nodes[0].Deps(t, &v6only)); err == nil || !strings.Contains(err.Error(), "IPv6-only") {
		t.Errorf("New with an IPv6-only network = %v, want an IPv6-only error", err)
	}
}

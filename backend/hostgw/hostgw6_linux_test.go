package hostgw

import (
	"encoding/json"
	"testing"

	"github.com/weft-net/weft/backend/backendtest"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// TestHostGWIPv6 runs three host-gw nodes dual stack, then IPv6 only: each peer's IPv6 subnet is routed via
// its PublicIPv6 on eth0 (a deleted route is repaired), containers reach each other over both families (over
// IPv6 alone in the IPv6-only network, where no IPv4 route is made), and IPv6 forwarding is on.
func TestHostGWIPv6(t *testing.T) {
	for _, ipv4 := range []bool{true, false} {
		name := map[bool]string{true: "dual stack", false: "IPv6 only"}[ipv4]
		t.Run(name, func(t *testing.T) {
			tp, nodes := backendtest.NewCluster(t, 3)
			network := &subnet.Config{EnableIPv4: ipv4, EnableIPv6: true, IPv6Network: kerneltest.TopologyNetwork6, IPv6SubnetLen: 64,
				BackendType: Type, Backend: json.RawMessage(`{"Type":"host-gw"}`)}
			if ipv4 {
				network.Network, network.SubnetLen = kerneltest.TopologyNetwork, 24
			}
			backendtest.Start(t, nodes, New, network)
			for _, n := range nodes {
				if n.Local.MTU != 1500 || n.Local.BackendType != Type {
					t.Errorf("n%d: Local = %+v", n.I, n.Local)
				}
			}
			for _, n := range nodes {
				n.Set(t, backendtest.Others(nodes, n)...)
			}
			n1 := nodes[0]
			want6 := `
				fd00:5:0:2::/64 via 2001:db8::12 dev eth0 metric 1024 pref medium
				fd00:5:0:3::/64 via 2001:db8::13 dev eth0 metric 1024 pref medium`
			kerneltest.Expect(t, "n1 IPv6 routes of ours", n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"), want6)
			kerneltest.Expect(t, "n1 IPv6 forwarding", n1.NS.MustExec(t, "cat", "/proc/sys/net/ipv6/conf/all/forwarding"), "1")
			tp.PingAll6(t)
			if ipv4 {
				tp.PingAll(t)
			} else {
				kerneltest.Expect(t, "n1 IPv4 routes of ours", n1.NS.MustIP(t, "route", "show", "proto", "87"), "")
			}
			n1.NS.MustIP(t, "-6", "route", "del", "fd00:5:0:3::/64")
			n1.Set(t, backendtest.Others(nodes, n1)...)
			kerneltest.Expect(t, "n1 IPv6 routes after repair", n1.NS.MustIP(t, "-6", "route", "show", "proto", "87"), want6)
		})
	}
}

package kubestore_test

import (
	"encoding/json"
	"maps"
	"net/netip"
	"os"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// TestHoldIPv6Only: in an IPv6-only network the lease is the Node's IPv6 pod CIDR, the annotations are
// flanneld's IPv6 ones (no public-ip or backend-data), and a peer's lease is read from its IPv6 annotations.
func TestHoldIPv6Only(t *testing.T) {
	k := newKube(t)
	conf := `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`
	if err := os.WriteFile(k.netConf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	k.createNode(t, "n1", "fd00:10:244:1::/64", nil)
	k.createNode(t, "n2", "fd00:10:244:2::/64", map[string]string{
		pfx + "kube-subnet-manager": "true",
		pfx + "backend-type":        "vxlan",
		pfx + "backend-v6-data":     `{"VNI":1,"VtepMAC":"82:1f:5e:aa:02:02"}`,
		pfx + "public-ipv6":         "2001:db8::12",
	})
	s := k.store(t, "n1")
	attrs := subnet.Attrs{PublicIPv6: netip.MustParseAddr("2001:db8::11"), BackendType: "vxlan",
		BackendV6Data: json.RawMessage(`{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`)}
	e := waitFor(t, startHold(t, s, attrs), "the IPv6-only lease")
	if !e.held || e.lease.Subnet.IsValid() || e.lease.IPv6Subnet != netip.MustParsePrefix("fd00:10:244:1::/64") ||
		e.lease.Attrs.PublicIPv6 != attrs.PublicIPv6 {
		t.Fatalf("hold event %+v, want held fd00:10:244:1::/64 with PublicIPv6 2001:db8::11 and no IPv4 subnet", e)
	}
	want := map[string]string{
		pfx + "kube-subnet-manager": "true",
		pfx + "backend-type":        "vxlan",
		pfx + "backend-v6-data":     `{"VNI":1,"VtepMAC":"82:1f:5e:aa:01:02"}`,
		pfx + "public-ipv6":         "2001:db8::11",
	}
	if got := k.getNode(t, "n1").Annotations; !maps.Equal(got, want) {
		t.Errorf("node annotations\n got %v\nwant %v", got, want)
	}
	sets := startWatch(t, s)
	for {
		ls := waitFor(t, sets, "both IPv6-only leases in the watch")
		if len(ls) < 2 {
			continue
		}
		var peer *subnet.Lease
		for i := range ls {
			if ls[i].IPv6Subnet == netip.MustParsePrefix("fd00:10:244:2::/64") {
				peer = &ls[i]
			}
		}
		if peer == nil || peer.Subnet.IsValid() || peer.Attrs.PublicIPv6 != netip.MustParseAddr("2001:db8::12") ||
			string(peer.Attrs.BackendV6Data) != `{"VNI":1,"VtepMAC":"82:1f:5e:aa:02:02"}` {
			t.Errorf("leases %+v: want n2's IPv6-only lease", ls)
		}
		break
	}
}

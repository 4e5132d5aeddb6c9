package vxlan

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// The test topology (N nodes):
//
//	netns <p>-lan   bridge br0: the underlay switch
//	  ├─ veth ─ netns <p>-n1   eth0 192.0.2.11/24; bridge cbr0 10.5.1.1/24
//	  │                          └─ veth ─ netns <p>-c1   eth0 10.5.1.2/24, default via 10.5.1.1
//	  ├─ veth ─ netns <p>-n2   eth0 192.0.2.12/24; ...
//	  └─ ...

var testNetwork = netip.MustParsePrefix("10.5.0.0/16")

type node struct {
	i      int
	ns     *kerneltest.NS // the node
	ctr    *kerneltest.NS // a container on the node
	ext    backend.External
	subnet netip.Prefix
	be     backend.Backend
	local  backend.Local
}

// ctrAddr is the container's overlay address.
func (n *node) ctrAddr() string { return fmt.Sprintf("10.5.%d.2", n.i) }

func (n *node) lease() subnet.Lease {
	return subnet.Lease{Subnet: n.subnet, Attrs: subnet.Attrs{
		PublicIP: n.ext.PublicIP, BackendType: n.local.BackendType, BackendData: n.local.BackendData}}
}

func testLogger(t testing.TB, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
}

// newCluster builds the topology with n nodes; the backends are not created yet.
func newCluster(t *testing.T, n int) (lan *kerneltest.NS, nodes []*node) {
	t.Helper()
	kerneltest.RequireRoot(t)
	kerneltest.RequireCommand(t, "ping")
	p := kerneltest.Prefix()
	lan = kerneltest.NewNS(t, p+"-lan")
	kerneltest.Bridge(t, lan, "br0")
	for i := 1; i <= n; i++ {
		nd := &node{i: i, subnet: netip.MustParsePrefix(fmt.Sprintf("10.5.%d.0/24", i))}
		nd.ns = kerneltest.NewNS(t, fmt.Sprintf("%s-n%d", p, i))
		nd.ctr = kerneltest.NewNS(t, fmt.Sprintf("%s-c%d", p, i))
		kerneltest.Veth(t, nd.ns, "eth0", fmt.Sprintf("192.0.2.%d/24", 10+i), lan, fmt.Sprintf("p%d", i), "")
		lan.MustIP(t, "link", "set", fmt.Sprintf("p%d", i), "master", "br0")
		kerneltest.Bridge(t, nd.ns, "cbr0")
		nd.ns.MustIP(t, "addr", "add", fmt.Sprintf("10.5.%d.1/24", i), "dev", "cbr0")
		kerneltest.Veth(t, nd.ns, "veth0", "", nd.ctr, "eth0", fmt.Sprintf("10.5.%d.2/24", i))
		nd.ns.MustIP(t, "link", "set", "veth0", "master", "cbr0")
		nd.ctr.MustIP(t, "route", "add", "default", "via", fmt.Sprintf("10.5.%d.1", i))
		err := nd.ns.Do(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			nd.ext = backend.External{Name: "eth0", Index: ifi.Index, MTU: ifi.MTU}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		nd.ext.Addr = netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", 10+i))
		nd.ext.PublicIP = nd.ext.Addr
		nodes = append(nodes, nd)
	}
	return lan, nodes
}

// up calls Up on the node's backend inside its namespace.
func (n *node) up(t *testing.T) {
	t.Helper()
	err := n.ns.Do(func() error {
		var err error
		n.local, err = n.be.Up(context.Background())
		return err
	})
	if err != nil {
		t.Fatalf("n%d: Up: %v", n.i, err)
	}
}

// set calls Set on the node's backend (from the test's own thread: the backend must not depend on it)
// with the given peers.
func (n *node) set(t *testing.T, peers ...*node) {
	t.Helper()
	cfg := &backend.Config{Network: subnet.Config{Network: testNetwork}, Own: n.lease()}
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, p.lease())
	}
	if err := n.be.Set(cfg); err != nil {
		t.Fatalf("n%d: Set: %v", n.i, err)
	}
}

// others returns every node but n.
func others(nodes []*node, n *node) []*node {
	var out []*node
	for _, o := range nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

// ping pings from a's container to b's container.
func ping(a, b *node, extra ...string) (string, error) {
	argv := append([]string{"ping", "-c", "2", "-i", "0.2", "-W", "2"}, extra...)
	return a.ctr.Exec(append(argv, b.ctrAddr())...)
}

// mustPingAll checks that every pair of containers can ping each other, both directions.
func mustPingAll(t *testing.T, nodes []*node) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				if _, err := ping(a, b); err != nil {
					t.Errorf("c%d -> c%d: %v", a.i, b.i, err)
				}
			}
		}
	}
}

// norm trims each line's surrounding blanks and drops empty lines (iproute2 output has trailing spaces).
func norm(s string) string {
	var lines []string
	for l := range strings.Lines(s) {
		if l = strings.Join(strings.Fields(l), " "); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines, "\n")
}

// expect compares command output (normalised) with want.
func expect(t *testing.T, what, got, want string) {
	t.Helper()
	if g, w := norm(got), norm(want); g != w {
		t.Errorf("%s:\n%s\nwant:\n%s", what, g, w)
	}
}

func depsFor(t *testing.T, n *node, backendJSON string) backend.Deps {
	return backend.Deps{Log: testLogger(t, fmt.Sprintf("n%d", n.i)), External: n.ext,
		Network: &subnet.Config{Network: testNetwork, BackendType: Type, Backend: json.RawMessage(backendJSON)}}
}

// expectSorted is expect with the lines of both sides sorted (for kernel dumps in hash order).
func expectSorted(t *testing.T, what, got, want string) {
	t.Helper()
	sorted := func(s string) string {
		lines := strings.Split(norm(s), "\n")
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	if g, w := sorted(got), sorted(want); g != w {
		t.Errorf("%s:\n%s\nwant:\n%s", what, g, w)
	}
}

// Package backendtest runs backends on the nodes of a kerneltest.Topology, for the backends' kernel-tier
// tests: each node describes its eth0 as the backend's External, brings the backend up inside its namespace
// and hands it leases built from the other nodes' Local.
package backendtest

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/subnet"
)

// Node is a topology node that runs a backend. The test creates Be (with Deps) and calls Up and Set.
type Node struct {
	*kerneltest.Node
	Ext   backend.External // the node's eth0, with PublicIP = Addr and PublicIPv6 = Addr6
	Be    backend.Backend  // the backend under test; set by the test
	Local backend.Local    // what Be's Up returned
	// Net is the network config given to Deps (nil before): Lease and Set follow the families it enables.
	Net *subnet.Config
}

// NewCluster builds a kerneltest.Topology of n nodes (see kerneltest.NewTopology); no backend is created yet.
func NewCluster(t testing.TB, n int) (*kerneltest.Topology, []*Node) {
	t.Helper()
	tp := kerneltest.NewTopology(t, n)
	var nodes []*Node
	for _, kn := range tp.Nodes {
		nd := &Node{Node: kn}
		err := nd.NS.Do(func() error {
			ifi, err := net.InterfaceByName("eth0")
			if err != nil {
				return err
			}
			nd.Ext = backend.External{Name: "eth0", Index: ifi.Index, MTU: ifi.MTU}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		nd.Ext.Addr = nd.Underlay
		nd.Ext.PublicIP = nd.Ext.Addr
		nd.Ext.Addr6, nd.Ext.PublicIPv6 = nd.Underlay6, nd.Underlay6
		nodes = append(nodes, nd)
	}
	return tp, nodes
}

// Deps returns the dependencies of a backend for the node: its External, the network config and a logger
// that writes to t at debug level. It records network as n.Net.
func (n *Node) Deps(t testing.TB, network *subnet.Config) backend.Deps {
	n.Net = network
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return backend.Deps{Log: log.With("node", fmt.Sprintf("n%d", n.I)), External: n.Ext, Network: network}
}

// Start creates each node's backend with newBackend and n.Deps(t, network), closes it in t.Cleanup, and
// brings it up.
func Start(t testing.TB, nodes []*Node, newBackend backend.Factory, network *subnet.Config) {
	t.Helper()
	for _, n := range nodes {
		be, err := newBackend(n.Deps(t, network))
		if err != nil {
			t.Fatalf("n%d: %v", n.I, err)
		}
		n.Be = be
		t.Cleanup(func() { be.Close() })
		n.Up(t)
	}
}

// Lease is the node's lease: its subnet, with its PublicIP and what its backend published; with IPv6
// enabled in n.Net also its IPv6 subnet, PublicIPv6 and BackendV6Data, and IPv6 only without the IPv4 ones
// (PublicIP 0.0.0.0, as flannel writes it).
func (n *Node) Lease() subnet.Lease {
	l := subnet.Lease{Subnet: n.Subnet, Attrs: subnet.Attrs{
		PublicIP: n.Ext.PublicIP, BackendType: n.Local.BackendType, BackendData: n.Local.BackendData}}
	if n.Net != nil && n.Net.EnableIPv6 {
		l.IPv6Subnet, l.Attrs.PublicIPv6, l.Attrs.BackendV6Data = n.Subnet6, n.Ext.PublicIPv6, n.Local.BackendV6Data
		if !n.Net.EnableIPv4 {
			l.Subnet, l.Attrs.PublicIP = netip.Prefix{}, netip.IPv4Unspecified()
		}
	}
	return l
}

// Up calls Up on the node's backend inside the node's namespace and records Local.
func (n *Node) Up(t testing.TB) {
	t.Helper()
	err := n.NS.Do(func() error {
		var err error
		n.Local, err = n.Be.Up(context.Background())
		return err
	})
	if err != nil {
		t.Fatalf("n%d: Up: %v", n.I, err)
	}
}

// Set calls Set on the node's backend with the node's own lease and the peers' in the topology's network,
// with Resync (compared with the kernel, repairing it). It calls from the test's own thread: the backend
// must not depend on the calling thread's namespace.
func (n *Node) Set(t testing.TB, peers ...*Node) {
	t.Helper()
	n.set(t, true, peers)
}

// Update is Set without Resync: the backend may apply only the change since its last Set.
func (n *Node) Update(t testing.TB, peers ...*Node) {
	t.Helper()
	n.set(t, false, peers)
}

func (n *Node) set(t testing.TB, resync bool, peers []*Node) {
	t.Helper()
	cfg := &backend.Config{Network: subnet.Config{Network: kerneltest.TopologyNetwork}, Own: n.Lease(), Resync: resync}
	if n.Net != nil && n.Net.EnableIPv6 {
		cfg.Network = *n.Net
	}
	for _, p := range peers {
		cfg.Peers = append(cfg.Peers, p.Lease())
	}
	if err := n.Be.Set(cfg); err != nil {
		t.Fatalf("n%d: Set (resync %v): %v", n.I, resync, err)
	}
}

// Change calls the node's backend's Update (backend.Updater) with the leases of put and the keys of the
// leases of gone, and returns its error.
func (n *Node) Change(t testing.TB, put []subnet.Lease, gone ...subnet.Lease) error {
	t.Helper()
	upd, ok := n.Be.(backend.Updater)
	if !ok {
		t.Fatalf("n%d: backend %T is not a backend.Updater", n.I, n.Be)
	}
	ch := &backend.Change{Put: put}
	for _, l := range gone {
		ch.Deleted = append(ch.Deleted, l.Key())
	}
	return upd.Update(ch)
}

// Others returns every node but n.
func Others(nodes []*Node, n *Node) []*Node {
	var out []*Node
	for _, o := range nodes {
		if o != n {
			out = append(out, o)
		}
	}
	return out
}

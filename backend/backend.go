// Package backend defines the contract between the agent and its data-path backends (udp, vxlan, host-gw):
// the agent hands a backend the complete desired state (its own lease and every peer lease) and the backend
// reconciles the kernel to it. Nothing here touches the kernel; the backends live in subpackages and the
// agent (cmd/agent) holds the registry that maps a config's Backend.Type to a constructor.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weft-net/weft/subnet"
)

// Backend programs one node's data path.
//
// The agent calls Up once, then Set whenever the desired state changes and periodically to repair drift,
// then Close once. Set and Close are never called concurrently with each other.
type Backend interface {
	// Up creates the backend's devices and starts its goroutines. It returns what the node publishes in its
	// lease (BackendType, BackendData) and the MTU for the env file. Up may be called before the node holds a
	// lease; addresses that depend on the lease are assigned by Set.
	Up(ctx context.Context) (Local, error)
	// Set reconciles the kernel to cfg, the complete desired state: it adds what is missing, replaces what
	// differs and removes state of its own that cfg does not explain; it never touches state it did not
	// create. It is idempotent, and partial progress is kept when it returns an error. Unless cfg.Resync,
	// a backend may apply only the difference between cfg and the state it applied at the last successful
	// Set, without reading the kernel's tables: a lease change then costs the same whatever the number of
	// peers. The first Set, and the first after an error, always compare with the kernel.
	Set(cfg *Config) error
	// Close stops the backend's goroutines and waits for them. Kernel state that carries traffic (devices,
	// routes, neighbours) is left in place where the backend can, so a restarted agent does not interrupt
	// traffic. Close is idempotent.
	Close() error
}

// Updater is implemented by a backend that can apply a change of some peer leases alone, at a cost that
// does not grow with the number of peers. It is optional: the agent falls back to Set with the complete state.
type Updater interface {
	// Update applies ch to the state of the last successful Set or Update (the same Network and Own; the
	// peers changed as ch says). It returns an error wrapping ErrNeedSet when it cannot: no successful Set
	// since Up or since an error, or a change it only handles as a whole (such as one touching a VtepMAC
	// two leases claim); the caller then calls Set with the complete state. Like Set, it never touches
	// state the backend did not create; unlike Set with Resync, it does not read the kernel's tables. It is
	// never called concurrently with Set or Close.
	Update(ch *Change) error
}

// ErrNeedSet is wrapped by Updater.Update's error when the change needs Set with the complete state.
var ErrNeedSet = errors.New("backend needs the complete desired state")

// Change is a change of peer leases for Updater.Update. A lease in Put and a key in Deleted appear once.
type Change struct {
	Put     []subnet.Lease // peer leases added or re-written
	Deleted []string       // keys (subnet.Lease.Key) of peer leases gone
}

// Follower is implemented by a backend that follows the kernel's events on the state it installed and
// repairs what is deleted behind its back as it happens (vxlan and host-gw, through kernel.Keeper). The
// agent then asks it for the costly comparison with the kernel's tables (Config.Resync) less often, as a
// safety net for changes events do not report (an entry added or replaced rather than deleted).
type Follower interface {
	// Following reports whether kernel events are being followed now.
	Following() bool
}

// Stats is implemented by a backend that counts its data path's events by name (see udp.Backend.Stats);
// the agent exports them as metrics.
type Stats interface {
	Stats() map[string]uint64
}

// Checker is implemented by a backend whose data path can break outside Set and fail to be repaired (udp:
// its TUN deleted and not recreatable). Healthy returns why the data path cannot work, or nil; the agent's
// /healthz then fails, so a supervisor restarts weftd.
type Checker interface {
	Healthy() error
}

// Local is what a backend publishes about this node.
type Local struct {
	BackendType string          // the lease's BackendType
	BackendData json.RawMessage // the lease's BackendData; nil for none
	// BackendV6Data is the lease's BackendV6Data (vxlan's IPv6 device, as flannel writes it); nil for none.
	BackendV6Data json.RawMessage
	MTU           int // MTU for containers (FLANNEL_MTU)
}

// Config is the complete desired state handed to Set.
type Config struct {
	Network subnet.Config  // the network config
	Own     subnet.Lease   // this node's lease
	Peers   []subnet.Lease // every other node's lease (own excluded), in any order
	// Resync asks for a comparison with the kernel's own tables, repairing what was changed behind the
	// backend's back; the agent sets it every --reconcile-interval (every 10th for a Follower). False: the
	// difference from the last Set may be applied alone.
	Resync bool
}

// External describes the underlay: the interface that carries encapsulated or routed traffic.
type External struct {
	Name     string     // interface name, e.g. "eth0"
	Index    int        // interface index
	MTU      int        // interface MTU
	Addr     netip.Addr // the interface's IPv4 address used as the tunnel source; zero for an IPv6-only network
	PublicIP netip.Addr // the address published in the lease (--public-ip); equals Addr unless behind NAT
	// Addr6 is the interface's global IPv6 address, the source of IPv6 tunnels; zero unless the network
	// enables IPv6.
	Addr6 netip.Addr
	// PublicIPv6 is the IPv6 address published in the lease (--public-ipv6); equals Addr6 unless behind NAT.
	PublicIPv6 netip.Addr
}

// Deps is what a backend constructor gets.
type Deps struct {
	Log      *slog.Logger   // required; already carries a "backend" attribute
	External External       // required
	Network  *subnet.Config // required; Network.Backend holds the backend's own keys
	// Offload says which data-path offloads the udp backend may use (node-local, from weftd's
	// --udp-offload): "" or "auto" for every one the kernel offers, "off" for none, or a comma list of
	// "tun" (TUN super-packets), "gso" (UDP_SEGMENT) and "gro" (UDP_GRO). Other backends ignore it.
	Offload string
	// Queues is the number of TUN queues (and sockets, and packet loop pairs) of the udp backend (weftd's
	// --udp-queues); 0 chooses one per CPU, at most 4, and one on nodes with two CPUs or fewer.
	Queues int
	// Kick, if set, asks the agent for a reconcile (a call of Set) soon: a backend calls it when it finds
	// its own kernel state broken outside Set, such as its device deleted. It must not block.
	Kick func()
	// PlainRoutes makes vxlan install its IPv4 peer routes as plain gateway routes, as flanneld does, instead
	// of through nexthop objects of their own where the kernel has them (weftd's --route-nexthops=false):
	// those keep adding a route cheap among thousands. Other backends always install plain routes.
	PlainRoutes bool
	// PrevData is the BackendData this node published before, when known (kube mode reads it back from the
	// Node's backend-data annotation), so a backend can keep its identity across a reboot (vxlan: the
	// VtepMAC). Nil: unknown.
	PrevData json.RawMessage
}

// Factory constructs a backend. It validates the backend's config keys but changes nothing in the kernel.
type Factory func(Deps) (Backend, error)

// DecodeConfig decodes the backend keys of the network config into dst (a pointer to the backend's config
// struct, pre-filled with defaults). Field names match case-insensitively, as in flannel.
func DecodeConfig(n *subnet.Config, dst any) error {
	if len(n.Backend) == 0 {
		return nil
	}
	if err := json.Unmarshal(n.Backend, dst); err != nil {
		return fmt.Errorf("network config: Backend %s: %w", n.Backend, err)
	}
	return nil
}

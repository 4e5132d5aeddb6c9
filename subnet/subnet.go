// Package subnet holds Weft's control-plane data model: the flannel-compatible network config, subnet
// leases and their etcd key and value encodings, subnet allocation, and the subnet.env file.
//
// It is dependency-light on purpose (no etcd, no netlink), so that docker-opts and the backends can import
// it without linking either. The etcd implementation of the lease store is subnet/etcdstore.
package subnet

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// DefaultPrefix is flannel's default etcd key prefix.
const DefaultPrefix = "/coreos.com/network"

// Attrs is the value stored under a lease key (flannel's LeaseAttrs).
type Attrs struct {
	PublicIP      netip.Addr      // required, IPv4
	PublicIPv6    netip.Addr      // zero: written as null
	BackendType   string          // empty: omitted (flannel's udp backend writes none)
	BackendData   json.RawMessage // empty: omitted
	BackendV6Data json.RawMessage // empty: omitted
	// NodeID identifies the node beyond its PublicIP (weftd's --node-id, by default the machine ID), so two
	// nodes behind one NAT address, or a node and its own previous run, can be told apart. It is stored as
	// "WeftNodeID", a field flanneld ignores; empty: omitted (flanneld's leases have none).
	NodeID string
}

type attrsJSON struct {
	PublicIP      string          `json:"PublicIP"`
	PublicIPv6    *string         `json:"PublicIPv6"`
	BackendType   string          `json:"BackendType,omitempty"`
	BackendData   json.RawMessage `json:"BackendData,omitempty"`
	BackendV6Data json.RawMessage `json:"BackendV6Data,omitempty"`
	WeftNodeID    string          `json:"WeftNodeID,omitempty"`
}

// MarshalJSON encodes a in flannel's lease value format.
func (a Attrs) MarshalJSON() ([]byte, error) {
	// flannel writes its zero address when a node has no IPv4 address (IPv6 only); "" would not parse.
	j := attrsJSON{PublicIP: "0.0.0.0", BackendType: a.BackendType, BackendData: a.BackendData, BackendV6Data: a.BackendV6Data,
		WeftNodeID: a.NodeID}
	if a.PublicIP.IsValid() {
		j.PublicIP = a.PublicIP.String()
	}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		j.PublicIPv6 = &s
	}
	if string(j.BackendData) == "null" {
		j.BackendData = nil
	}
	if string(j.BackendV6Data) == "null" {
		j.BackendV6Data = nil
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes flannel's lease value format. PublicIP must be an IPv4 address.
func (a *Attrs) UnmarshalJSON(b []byte) error {
	var j attrsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	ip, err := netip.ParseAddr(j.PublicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("PublicIP %q: must be an IPv4 address", j.PublicIP)
	}
	out := Attrs{PublicIP: ip, BackendType: j.BackendType, BackendData: j.BackendData, BackendV6Data: j.BackendV6Data,
		NodeID: j.WeftNodeID}
	if j.PublicIPv6 != nil && *j.PublicIPv6 != "" {
		ip6, err := netip.ParseAddr(*j.PublicIPv6)
		if err != nil || !ip6.Is6() || ip6.Is4In6() {
			return fmt.Errorf("PublicIPv6 %q: must be an IPv6 address or null", *j.PublicIPv6)
		}
		out.PublicIPv6 = ip6
	}
	if string(out.BackendData) == "null" {
		out.BackendData = nil
	}
	if string(out.BackendV6Data) == "null" {
		out.BackendV6Data = nil
	}
	*a = out
	return nil
}

// Lease is one node's claim on a subnet.
type Lease struct {
	Subnet     netip.Prefix // IPv4 subnet; always valid for an IPv4-enabled network
	IPv6Subnet netip.Prefix // zero unless dual stack
	Attrs      Attrs

	// Reservation is true for a key with no etcd lease attached: it never expires.
	Reservation bool
	// Expires is when the etcd lease runs out if nobody renews it; zero when unknown or a reservation.
	Expires time.Time
	// Revision is the etcd ModRevision of the key when it was read; zero for a lease not read from etcd.
	Revision int64
	// Created is the etcd CreateRevision of the key: which of two leases came first (a holder re-writing its
	// key keeps it). Zero for a lease not read from etcd.
	Created int64
}

// CompareLeases orders leases by IPv4 subnet, then IPv6 subnet (for slices.SortFunc).
func CompareLeases(a, b Lease) int {
	if c := a.Subnet.Addr().Compare(b.Subnet.Addr()); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Subnet.Bits(), b.Subnet.Bits()); c != 0 {
		return c
	}
	if c := a.IPv6Subnet.Addr().Compare(b.IPv6Subnet.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.IPv6Subnet.Bits(), b.IPv6Subnet.Bits())
}

// Key returns the lease's key name below "<prefix>/subnets/".
func (l Lease) Key() string { return KeyName(l.Subnet, l.IPv6Subnet) }

// KeyName formats a lease key name: "10.5.52.0-24", or "10.5.52.0-24&fd00:5:0:34::-64" with IPv6. An
// IPv6-only lease (v4 zero) is "0.0.0.0-0&fd00:5:0:34::-64", as flannel writes it.
func KeyName(v4, v6 netip.Prefix) string {
	if !v4.IsValid() {
		v4 = noIPv4
	}
	s := fmt.Sprintf("%s-%d", v4.Addr(), v4.Bits())
	if v6.IsValid() {
		s += fmt.Sprintf("&%s-%d", v6.Addr(), v6.Bits())
	}
	return s
}

// noIPv4 stands for "no IPv4 subnet" in the key of an IPv6-only lease.
var noIPv4 = netip.PrefixFrom(netip.IPv4Unspecified(), 0)

// ParseKeyName parses a lease key name (the part after "<prefix>/subnets/"). The prefixes must be masked
// and the name in the canonical form KeyName writes, so that a lease's Key is the key it was read from.
// For an IPv6-only lease ("0.0.0.0-0&...") v4 is zero.
func ParseKeyName(name string) (v4, v6 netip.Prefix, err error) {
	s4, s6, dual := strings.Cut(name, "&")
	if v4, err = parseKeyPrefix(s4, false); err != nil {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", name, err)
	}
	if dual {
		if v6, err = parseKeyPrefix(s6, true); err != nil {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: %w", name, err)
		}
	}
	if v4 == noIPv4 {
		if !dual {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: neither an IPv4 nor an IPv6 subnet", name)
		}
		v4 = netip.Prefix{}
	}
	if canon := KeyName(v4, v6); canon != name {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q: not in canonical form (want %q)", name, canon)
	}
	return v4, v6, nil
}

func parseKeyPrefix(s string, v6 bool) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("%q: want ADDR-LEN", s)
	}
	addr, err := netip.ParseAddr(s[:i])
	if err != nil || addr.Is6() != v6 || addr.Zone() != "" {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return netip.Prefix{}, fmt.Errorf("%q: want an %s address before '-'", s, fam)
	}
	bits, err := strconv.Atoi(s[i+1:])
	if err != nil || bits < 0 || bits > addr.BitLen() {
		return netip.Prefix{}, fmt.Errorf("%q: bad prefix length %q", s, s[i+1:])
	}
	p := netip.PrefixFrom(addr, bits)
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q: address has bits set beyond the prefix length", s)
	}
	return p, nil
}

// ErrConfigChanged means the stored network config differs from the one the caller runs with
// (AcquireRequest.Config) in what shapes leases or the data path.
var ErrConfigChanged = errors.New("network config changed")

// ErrNoConfig means the network config key does not exist (yet).
var ErrNoConfig = errors.New("network config not found")

// NetworkFullError is returned when no free subnet is left to lease.
type NetworkFullError struct {
	Network   netip.Prefix
	SubnetLen int
	Leases    int // leases that exist in the network
}

func (e *NetworkFullError) Error() string {
	return fmt.Sprintf("network full: %s has no free /%d subnet (%d leases exist)", e.Network, e.SubnetLen, e.Leases)
}

// AcquireRequest says what a node wants to lease.
type AcquireRequest struct {
	Attrs Attrs // PublicIP is required; it also finds this node's previous lease
	// Prev is the subnet from the previous env file (FLANNEL_SUBNET, masked); zero if none.
	Prev netip.Prefix
	// PrevIPv6 is the previous IPv6 subnet; zero if none.
	PrevIPv6 netip.Prefix
	// Config is the network config the caller runs with (its env file and data path are made for it). A
	// stored config that differs from it in what shapes leases and the data path (see Config.Diff) is not
	// acquired under. Nil: the stored config, whatever it is.
	Config *Config
}

// HoldFunc receives Store.Hold's reports: held is true for a lease just (re)acquired, false for a lease
// just lost (Hold is acquiring again).
type HoldFunc func(l Lease, held bool)

// Store is the lease store as the agent consumes it.
//
// Retrying is the store's: WaitConfig, Hold and Watch (and ChangeWatcher.WatchChanges) retry, with backoff
// and by themselves, whatever a retry may fix (the store unreachable, the config missing or invalid, a lost
// race for a subnet, a full network), and report what happens through their callbacks. A caller reacts to
// the reports and does not call them again in a retry loop of its own. Each returns nil or ctx's error when
// ctx ends, and otherwise only an error that retrying cannot fix (the store closed, say), which it names.
type Store interface {
	// Config reads and validates the network config once. It returns an error wrapping ErrNoConfig if the
	// config is absent. (For a caller that only looks: it does not retry.)
	Config(ctx context.Context) (*Config, error)
	// WaitConfig reads the network config until a valid one is read, and returns it. Each failed read is
	// passed to report (nil: none) before the next attempt, on WaitConfig's goroutine: an error wrapping
	// ErrNoConfig while the config is absent, a validation error, or why the store cannot be read (naming an
	// unreachable endpoint and the cause, where the store can tell). It returns ctx's error when ctx ends, and
	// an error wrapping the store's ErrClosed when the store is closed.
	WaitConfig(ctx context.Context, report func(error)) (*Config, error)
	// Hold acquires a lease for req and keeps it until ctx ends, calling fn(lease, true) after every
	// (re)acquisition. If the lease is deleted or expires it calls fn(lost, false) and acquires again,
	// preferring the same subnet. A failed acquisition (the store unreachable, the config missing, a full
	// network) is logged and retried; the caller sees only that no fn(lease, true) came yet. When ctx ends,
	// the lease is left in place and Hold returns nil. Otherwise it returns only for what retrying cannot
	// fix: a stored config that differs from req.Config (an error wrapping ErrConfigChanged), an invalid req,
	// a config the store cannot lease under, or the store closed.
	Hold(ctx context.Context, req AcquireRequest, fn HoldFunc) error
	// Watch calls fn with the complete set of leases (own included) at start and after every change,
	// until ctx ends (then it returns nil); it resumes after disconnects and compactions without missing
	// changes, and returns early only when the store is closed.
	Watch(ctx context.Context, fn func([]Lease)) error
}

// PollConfig is the loop behind the stores' WaitConfig: it calls read until it returns a config, passing each
// error to report (nil: none) and waiting between attempts, 1 s growing to 5 s. It returns ctx's error when
// ctx ends, and read's last error when done (the store's "closed" channel; nil: never) is closed.
func PollConfig(ctx context.Context, done <-chan struct{}, read func(context.Context) (*Config, error), report func(error)) (*Config, error) {
	delay := time.Second
	for {
		c, err := read(ctx)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		select {
		case <-done:
			return nil, err
		default:
		}
		if report != nil {
			report(err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-done:
			t.Stop()
			return nil, err
		case <-t.C:
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// Changes is one batch of a ChangeWatcher: with Full, Put holds every lease (a fresh listing that replaces
// all before it); otherwise Put holds the leases written since the last batch and Deleted the leases gone
// (deleted, expired, or re-written unreadable), of which only Subnet and IPv6Subnet (so Key) are set.
type Changes struct {
	Full    bool
	Put     []Lease
	Deleted []Lease
}

// ChangeWatcher is implemented by a Store that can report lease changes as they happen, so that a change
// costs the same whatever the number of leases. It is optional: Store.Watch is the fallback.
type ChangeWatcher interface {
	// WatchChanges calls fn with a Full batch at start and after every re-listing (a compaction, a long
	// disconnect), and with each batch of changes in between, until ctx ends; no change is missed. fn runs
	// on WatchChanges' goroutine. It retries and returns as Store.Watch does.
	WatchChanges(ctx context.Context, fn func(Changes)) error
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore"
)

// command is an operator subcommand: weftd NAME [flags] [args].
type command func(ctx context.Context, args []string, env cmdEnv) error

// cmdEnv is a command's environment: variables, output, and warnings (such as unreadable lease keys).
type cmdEnv struct {
	getenv         func(string) string
	stdout, stderr io.Writer
}

var commands = map[string]command{
	"config":    configCmd,
	"leases":    leasesCmd,
	"reserve":   reserveCmd,
	"status":    statusCmd,
	"unreserve": unreserveCmd,
	"version": func(_ context.Context, _ []string, env cmdEnv) error {
		_, err := fmt.Fprintln(env.stdout, "weftd", version)
		return err
	},
}

// opTimeout bounds one operator command's etcd work.
const opTimeout = 15 * time.Second

// opFlags parses a subcommand's flags (the etcd flags plus extra) and opens the store.
func opFlags(name, usage string, args []string, getenv func(string) string, extra func(*pflag.FlagSet)) (*pflag.FlagSet, *etcdstore.Config, error) {
	var ec etcdstore.Config // LeaseTTL zero: the default, 24 h (no command here holds a lease)
	fs := pflag.NewFlagSet("weftd "+name, pflag.ContinueOnError)
	ec.AddFlags(fs)
	if extra != nil {
		extra(fs)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: weftd %s %s\n\nFlags:\n", name, usage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, getenv); err != nil {
		return nil, nil, err
	}
	return fs, &ec, nil
}

// withStore opens the store, runs do with a context bounded by opTimeout, and closes the store. The store's
// warnings (an unreadable lease key, say) go to stderr.
func withStore(ctx context.Context, env cmdEnv, ec *etcdstore.Config, do func(context.Context, *etcdstore.Store) error) error {
	log := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	store, err := etcdstore.New(*ec, log) // without waiting for etcd
	if err != nil {
		return err
	}
	defer store.Close()
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	return store.Explain(ctx, do(ctx, store))
}

func configCmd(ctx context.Context, args []string, env cmdEnv) error {
	if len(args) == 0 || (args[0] != "get" && args[0] != "set") {
		return errors.New("usage: weftd config get|set [flags] (weftd config set --help)")
	}
	if args[0] == "get" {
		fs, ec, err := opFlags("config get", "[flags]", args[1:], env.getenv, nil)
		if err != nil {
			return err
		}
		if fs.NArg() > 0 {
			return fmt.Errorf("config get: unexpected argument %q", fs.Arg(0))
		}
		var raw []byte
		if err := withStore(ctx, env, ec, func(ctx context.Context, store *etcdstore.Store) (err error) {
			raw, err = store.RawConfig(ctx)
			return err
		}); err != nil {
			return err
		}
		var pretty bytes.Buffer
		if json.Indent(&pretty, raw, "", "  ") != nil {
			pretty.Reset()
			pretty.Write(raw)
		}
		fmt.Fprintln(env.stdout, pretty.String())
		if _, err := subnet.ParseConfig(raw); err != nil {
			return fmt.Errorf("the stored config is invalid: %w", err)
		}
		return nil
	}
	var o configSetOpts
	fs, ec, err := opFlags("config set", "[flags]", args[1:], env.getenv, o.register)
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("config set: unexpected argument %q", fs.Arg(0))
	}
	raw, err := o.build(fs)
	if err != nil {
		return err
	}
	cfg, err := validateConfig(raw)
	if err != nil {
		return err
	}
	if err := withStore(ctx, env, ec, func(ctx context.Context, store *etcdstore.Store) error {
		return store.SetConfig(ctx, raw)
	}); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "wrote %s/config: %s\n", ec.Prefix, raw)
	if cfg.DefaultedBackend {
		fmt.Fprintf(env.stdout, "note: no backend type given; agents use %s\n", cfg.BackendType)
	}
	return nil
}

// configSetOpts are the flags of `weftd config set`.
type configSetOpts struct {
	network, subnetMin, subnetMax string
	subnetLen                     int
	ipv6Network                   string
	ipv6SubnetLen                 int
	ipv6SubnetMin, ipv6SubnetMax  string
	disableIPv4, nftables         bool
	backendType, backendJSON      string
	vni, port, mtu                int
	directRouting, gbp, learning  bool
	raw                           string
}

func (o *configSetOpts) register(fs *pflag.FlagSet) {
	fs.StringVar(&o.raw, "json", "", "the whole config as JSON (other config flags are then not allowed)")
	fs.StringVar(&o.network, "network", "", "IPv4 overlay network, e.g. 10.5.0.0/16")
	fs.IntVar(&o.subnetLen, "subnet-len", 0, "per-node subnet length (default 24, or the network's length + 2 for a network smaller than /22)")
	fs.StringVar(&o.subnetMin, "subnet-min", "", "first allocatable subnet address")
	fs.StringVar(&o.subnetMax, "subnet-max", "", "last allocatable subnet address")
	fs.BoolVar(&o.disableIPv4, "disable-ipv4", false, "IPv6 only")
	fs.StringVar(&o.ipv6Network, "ipv6-network", "", "IPv6 overlay network (enables IPv6)")
	fs.IntVar(&o.ipv6SubnetLen, "ipv6-subnet-len", 0, "per-node IPv6 subnet length (default 64, or the IPv6 network's length + 2 for a network smaller than /62)")
	fs.StringVar(&o.ipv6SubnetMin, "ipv6-subnet-min", "", "first allocatable IPv6 subnet address")
	fs.StringVar(&o.ipv6SubnetMax, "ipv6-subnet-max", "", "last allocatable IPv6 subnet address")
	fs.BoolVar(&o.nftables, "enable-nftables", false, "packet filter rules with nftables instead of iptables (EnableNFTables)")
	fs.StringVar(&o.backendType, "backend", "", "backend type: vxlan, udp, host-gw or alloc (default vxlan)")
	fs.StringVar(&o.backendJSON, "backend-json", "", `the Backend object as JSON, e.g. '{"Type":"vxlan","VNI":4}'`)
	fs.IntVar(&o.vni, "vni", 0, "vxlan: VNI")
	fs.IntVar(&o.port, "port", 0, "vxlan or udp: UDP port")
	fs.IntVar(&o.mtu, "mtu", 0, "vxlan: underlay MTU")
	fs.BoolVar(&o.directRouting, "direct-routing", false, "vxlan: route directly to peers on the same L2")
	fs.BoolVar(&o.gbp, "gbp", false, "vxlan: group based policy")
	fs.BoolVar(&o.learning, "learning", false, "vxlan: MAC learning")
}

// build turns the flags into config JSON.
func (o *configSetOpts) build(fs *pflag.FlagSet) ([]byte, error) {
	if o.raw != "" {
		n := 0
		fs.Visit(func(f *pflag.Flag) {
			if f.Name != "json" && !etcdstore.IsFlag(f) {
				n++
			}
		})
		if n > 0 {
			return nil, errors.New("config set: --json cannot be combined with other config flags")
		}
		return []byte(o.raw), nil
	}
	cfg := map[string]any{}
	if o.network != "" {
		cfg["Network"] = o.network
	}
	if o.subnetLen != 0 {
		cfg["SubnetLen"] = o.subnetLen
	}
	if o.subnetMin != "" {
		cfg["SubnetMin"] = o.subnetMin
	}
	if o.subnetMax != "" {
		cfg["SubnetMax"] = o.subnetMax
	}
	if o.disableIPv4 {
		cfg["EnableIPv4"] = false
	}
	if o.ipv6Network != "" {
		cfg["EnableIPv6"] = true
		cfg["IPv6Network"] = o.ipv6Network
	}
	if o.ipv6SubnetLen != 0 {
		cfg["IPv6SubnetLen"] = o.ipv6SubnetLen
	}
	if o.ipv6SubnetMin != "" {
		cfg["IPv6SubnetMin"] = o.ipv6SubnetMin
	}
	if o.ipv6SubnetMax != "" {
		cfg["IPv6SubnetMax"] = o.ipv6SubnetMax
	}
	if o.nftables {
		cfg["EnableNFTables"] = true
	}
	b := map[string]any{}
	if o.backendJSON != "" {
		if err := json.Unmarshal([]byte(o.backendJSON), &b); err != nil {
			return nil, fmt.Errorf("--backend-json %q: want a JSON object: %w", o.backendJSON, err)
		}
	}
	if o.backendType != "" {
		b["Type"] = o.backendType
	}
	for _, k := range []struct {
		flag, key string
		value     any
	}{
		{"vni", "VNI", o.vni}, {"port", "Port", o.port}, {"mtu", "MTU", o.mtu},
		{"direct-routing", "DirectRouting", o.directRouting}, {"gbp", "GBP", o.gbp}, {"learning", "Learning", o.learning},
	} {
		if fs.Changed(k.flag) {
			b[k.key] = k.value
		}
	}
	if len(b) > 0 {
		cfg["Backend"] = b
	}
	return json.Marshal(cfg)
}

// validateConfig checks a config as an agent would: the network fields, then the backend's own keys by
// constructing the backend (constructors validate and touch no kernel state).
func validateConfig(raw []byte) (*subnet.Config, error) {
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, err
	}
	factory, ok := backends[cfg.BackendType]
	if !ok {
		return nil, fmt.Errorf("network config: Backend.Type %q: not supported by this weftd", cfg.BackendType)
	}
	ext := backend.External{Name: "validate", Index: 1, MTU: 1500}
	if cfg.EnableIPv4 {
		ext.Addr = netip.MustParseAddr("192.0.2.1")
		ext.PublicIP = ext.Addr
	}
	if cfg.EnableIPv6 {
		ext.Addr6 = netip.MustParseAddr("2001:db8::1")
		ext.PublicIPv6 = ext.Addr6
	}
	if _, err := factory(backend.Deps{Log: slog.New(slog.DiscardHandler), External: ext, Network: cfg}); err != nil {
		return nil, err
	}
	return cfg, nil
}

func leasesCmd(ctx context.Context, args []string, env cmdEnv) error {
	if len(args) > 0 && args[0] == "delete" {
		return subnetCmd(ctx, "leases delete", args[1:], env, nil, func(ctx context.Context, s *etcdstore.Store, p netip.Prefix) (string, error) {
			return "deleted lease " + p.String(), s.DeleteLease(ctx, p)
		})
	}
	var asJSON bool
	fs, ec, err := opFlags("leases", "[--json] | delete SUBNET", args, env.getenv, func(fs *pflag.FlagSet) {
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	})
	if err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("leases: unexpected argument %q (did you mean `weftd leases delete SUBNET`?)", fs.Arg(0))
	}
	var leases []subnet.Lease
	if err := withStore(ctx, env, ec, func(ctx context.Context, store *etcdstore.Store) (err error) {
		leases, err = store.Leases(ctx)
		return err
	}); err != nil {
		return err
	}
	if asJSON {
		type row struct {
			Key         string
			Subnet      string `json:",omitempty"` // empty for an IPv6-only lease
			IPv6Subnet  string `json:",omitempty"`
			Attrs       subnet.Attrs
			Reservation bool
			Expires     *time.Time `json:",omitempty"`
		}
		rows := []row{}
		for _, l := range leases {
			r := row{Key: l.Key(), Attrs: l.Attrs, Reservation: l.Reservation}
			if l.Subnet.IsValid() {
				r.Subnet = l.Subnet.String()
			}
			if l.IPv6Subnet.IsValid() {
				r.IPv6Subnet = l.IPv6Subnet.String()
			}
			if !l.Expires.IsZero() {
				r.Expires = &l.Expires
			}
			rows = append(rows, r)
		}
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	return printLeases(env.stdout, leases, time.Now())
}

// printLeases writes the lease table. Columns for IPv6 (IPV6-SUBNET, PUBLIC-IPV6) appear when a lease has
// an IPv6 subnet; an IPv6-only lease shows "-" for its IPv4 subnet and PublicIP.
func printLeases(w io.Writer, leases []subnet.Lease, now time.Time) error {
	v6 := slices.ContainsFunc(leases, func(l subnet.Lease) bool { return l.IPv6Subnet.IsValid() })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if v6 {
		fmt.Fprintln(tw, "SUBNET\tIPV6-SUBNET\tPUBLIC-IP\tPUBLIC-IPV6\tBACKEND\tTTL-LEFT\tKIND")
	} else {
		fmt.Fprintln(tw, "SUBNET\tPUBLIC-IP\tBACKEND\tTTL-LEFT\tKIND")
	}
	orDash := func(v interface{ IsValid() bool }, s string) string {
		if !v.IsValid() {
			return "-"
		}
		return s
	}
	for _, l := range leases {
		kind, ttl := "lease", "?"
		if l.Reservation {
			kind, ttl = "reservation", "never expires"
		} else if !l.Expires.IsZero() {
			ttl = l.Expires.Sub(now).Round(time.Second).String()
		}
		bt := l.Attrs.BackendType
		if bt == "" {
			bt = "-"
		}
		sub, pub := orDash(l.Subnet, l.Subnet.String()), l.Attrs.PublicIP.String()
		if !l.Subnet.IsValid() && l.Attrs.PublicIP.IsUnspecified() {
			pub = "-" // IPv6 only: flannel writes 0.0.0.0
		}
		if v6 {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sub, orDash(l.IPv6Subnet, l.IPv6Subnet.String()), pub,
				orDash(l.Attrs.PublicIPv6, l.Attrs.PublicIPv6.String()), bt, ttl, kind)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", sub, pub, bt, ttl, kind)
	}
	return tw.Flush()
}

// subnetCmd runs a command that takes one SUBNET argument.
func subnetCmd(ctx context.Context, name string, args []string, env cmdEnv,
	extra func(*pflag.FlagSet), do func(context.Context, *etcdstore.Store, netip.Prefix) (string, error)) error {
	fs, ec, err := opFlags(name, "SUBNET [flags]", args, env.getenv, extra)
	if err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%s: want exactly one SUBNET argument, e.g. 10.5.7.0/24", name)
	}
	p, err := netip.ParsePrefix(fs.Arg(0))
	if err != nil || p.Masked() != p {
		return fmt.Errorf("%s: SUBNET %q: want a subnet such as 10.5.7.0/24", name, fs.Arg(0))
	}
	var msg string
	if err := withStore(ctx, env, ec, func(ctx context.Context, store *etcdstore.Store) (err error) {
		msg, err = do(ctx, store, p)
		return err
	}); err != nil {
		return err
	}
	_, err = fmt.Fprintln(env.stdout, msg)
	return err
}

func reserveCmd(ctx context.Context, args []string, env cmdEnv) error {
	var pub string
	return subnetCmd(ctx, "reserve", args, env, func(fs *pflag.FlagSet) {
		fs.StringVar(&pub, "public-ip", "", "public IPv4 address of the node the subnet is reserved for (required; its IPv6 address for an IPv6 subnet of an IPv6-only network)")
	}, func(ctx context.Context, s *etcdstore.Store, p netip.Prefix) (string, error) {
		ip, err := netip.ParseAddr(pub)
		if err != nil || ip.Is4() != p.Addr().Is4() {
			return "", fmt.Errorf("reserve: --public-ip %q: want the node's address of the family of SUBNET %s", pub, p)
		}
		return fmt.Sprintf("reserved %s for %s", p, ip), s.Reserve(ctx, p, ip)
	})
}

func unreserveCmd(ctx context.Context, args []string, env cmdEnv) error {
	return subnetCmd(ctx, "unreserve", args, env, nil, func(ctx context.Context, s *etcdstore.Store, p netip.Prefix) (string, error) {
		return "removed reservation " + p.String(), s.Unreserve(ctx, p)
	})
}

package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore"
	"github.com/weft-net/weft/subnet/kubestore"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// kubeFlags select the kube subnet manager (flanneld's flags of the same names) instead of etcd.
type kubeFlags struct {
	SubnetMgr                 bool   // --kube-subnet-mgr
	APIURL                    string // --kube-api-url; empty: from the kubeconfig, or in-cluster
	Kubeconfig                string // --kubeconfig-file; empty: in-cluster config
	AnnotationPrefix          string // --kube-annotation-prefix
	NetConfPath               string // --net-config-path
	SetNodeNetworkUnavailable bool   // --set-node-network-unavailable

	// From the environment, as flanneld reads them: NODE_NAME, else the pod's spec.nodeName.
	NodeName, PodName, PodNamespace string
}

func (k *kubeFlags) register(fs *pflag.FlagSet) {
	fs.BoolVar(&k.SubnetMgr, "kube-subnet-mgr", false, "take the subnet from this node's Kubernetes Node (spec.podCIDR) and announce the lease in its annotations, instead of etcd")
	fs.StringVar(&k.APIURL, "kube-api-url", "", "Kubernetes API server URL (default: from --kubeconfig-file, or the in-cluster config)")
	fs.StringVar(&k.Kubeconfig, "kubeconfig-file", "", "kubeconfig file (default: the in-cluster config of the pod's service account)")
	fs.StringVar(&k.AnnotationPrefix, "kube-annotation-prefix", kubestore.DefaultAnnotationPrefix, "prefix of the Node annotations")
	fs.StringVar(&k.NetConfPath, "net-config-path", kubestore.DefaultNetConfPath, "network config file (net-conf.json) in kube mode")
	fs.BoolVar(&k.SetNodeNetworkUnavailable, "set-node-network-unavailable", true, "set the Node condition NetworkUnavailable=False once the lease is announced (kube mode)")
}

// logFlags select the log format and level.
type logFlags struct {
	Format string
	Level  string
}

func (l *logFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn or error")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.Level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.Format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.Format)
}

// Config is weftd's agent configuration, from flags and the environment.
type Config struct {
	Etcd etcdstore.Config // the etcd flags (etcdstore.Config.AddFlags); LeaseTTL is set from --subnet-lease-ttl when the store opens
	Kube kubeFlags
	Log  logFlags

	Ifaces       []string      // --iface: names or addresses (IPv4 or IPv6); empty: see IfaceRegexes
	IfaceRegexes []string      // --iface-regex; empty: see CanReach
	CanReach     netip.Addr    // --iface-can-reach; zero: the default route's interface
	PublicIP     netip.Addr    // --public-ip (IPv4); zero: the interface's address
	PublicIPv6   netip.Addr    // --public-ipv6; zero: the interface's IPv6 address (used when the network enables IPv6)
	NodeID       string        // --node-id; empty: derived from the machine ID (see defaultNodeID)
	SubnetFile   string        // --subnet-file
	LeaseTTL     time.Duration // --subnet-lease-ttl
	RenewMargin  int           // --subnet-lease-renew-margin (minutes); accepted for compatibility
	IPMasq       bool          // --ip-masq
	FwdRules     bool          // --iptables-forward-rules
	IPTResync    time.Duration // --iptables-resync
	HealthzIP    string        // --healthz-ip
	HealthzPort  int           // --healthz-port; 0: no health server
	Reconcile    time.Duration // --reconcile-interval
	UDPOffload   string        // --udp-offload
	UDPQueues    int           // --udp-queues
	Nexthops     bool          // --route-nexthops
	Version      bool          // --version
	Probe        probeFlags
}

// LogValue describes the config for logs without its secrets.
func (c Config) LogValue() slog.Value {
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "[redacted]"
	}
	return slog.GroupValue(
		slog.Any("etcd-endpoints", c.Etcd.Endpoints),
		slog.String("etcd-prefix", c.Etcd.Prefix),
		slog.String("etcd-certfile", c.Etcd.CertFile),
		slog.String("etcd-keyfile", redact(c.Etcd.KeyFile)),
		slog.String("etcd-cafile", c.Etcd.CAFile),
		slog.String("etcd-username", c.Etcd.Username),
		slog.String("etcd-password", redact(c.Etcd.Password)),
		slog.Bool("kube-subnet-mgr", c.Kube.SubnetMgr),
		slog.String("kube-api-url", c.Kube.APIURL),
		slog.String("kubeconfig-file", c.Kube.Kubeconfig),
		slog.String("kube-annotation-prefix", c.Kube.AnnotationPrefix),
		slog.String("net-config-path", c.Kube.NetConfPath),
		slog.Any("iface", c.Ifaces),
		slog.Any("iface-regex", c.IfaceRegexes),
		slog.String("iface-can-reach", addrFlag{a: &c.CanReach}.String()),
		slog.String("public-ip", addrFlag{a: &c.PublicIP}.String()),
		slog.String("public-ipv6", addrFlag{a: &c.PublicIPv6}.String()),
		slog.String("node-id", c.NodeID),
		slog.String("subnet-file", c.SubnetFile),
		slog.Duration("subnet-lease-ttl", c.LeaseTTL),
		slog.Bool("ip-masq", c.IPMasq),
		slog.Bool("iptables-forward-rules", c.FwdRules),
		slog.Duration("iptables-resync", c.IPTResync),
		slog.String("healthz", c.healthzAddr()),
		slog.Duration("reconcile-interval", c.Reconcile),
		slog.String("udp-offload", c.UDPOffload),
		slog.Int("udp-queues", c.UDPQueues),
		slog.Bool("route-nexthops", c.Nexthops),
		slog.Float64("probe-rate", c.Probe.Rate),
	)
}

// healthzAddr is the health server's listen address; an IPv6 --healthz-ip is bracketed.
func (c Config) healthzAddr() string {
	return net.JoinHostPort(c.HealthzIP, strconv.Itoa(c.HealthzPort))
}

func newAgentFlags(c *Config) *pflag.FlagSet {
	fs := pflag.NewFlagSet("weftd", pflag.ContinueOnError)
	c.Etcd.AddFlags(fs)
	c.Kube.register(fs)
	c.Log.register(fs)
	fs.StringSliceVar(&c.Ifaces, "iface", nil, "interface name or address (IPv4 or IPv6) for inter-node traffic (repeatable; the first that exists wins)")
	fs.StringSliceVar(&c.IfaceRegexes, "iface-regex", nil, "regular expression matched against interface names and addresses (repeatable)")
	fs.Var(addrFlag{a: &c.CanReach}, "iface-can-reach", "use the interface that routes to this address")
	fs.Var(addrFlag{a: &c.PublicIP, v4: true}, "public-ip", "IPv4 address other nodes use to reach this one (default: the interface's address)")
	fs.Var(addrFlag{a: &c.PublicIPv6, v6: true}, "public-ipv6", "IPv6 address other nodes use to reach this one when the network enables IPv6 (default: the interface's IPv6 address)")
	fs.StringVar(&c.NodeID, "node-id", "", "this node's identity in its lease (WeftNodeID), telling apart nodes that share a public IP (default: derived from /etc/machine-id)")
	fs.StringVar(&c.SubnetFile, "subnet-file", subnet.DefaultEnvFile, "subnet env file to write")
	fs.DurationVar(&c.LeaseTTL, "subnet-lease-ttl", 24*time.Hour, "TTL of the subnet lease; it is kept alive while weftd runs")
	fs.IntVar(&c.RenewMargin, "subnet-lease-renew-margin", 60, "accepted for flanneld compatibility; weftd renews with etcd keepalives")
	fs.BoolVar(&c.IPMasq, "ip-masq", false, "masquerade traffic leaving the overlay network (nat chain FLANNEL-POSTRTG, or nftables chain postrtg); written to the env file as FLANNEL_IPMASQ")
	fs.BoolVar(&c.FwdRules, "iptables-forward-rules", true, "accept forwarding to and from the overlay network (filter chain FLANNEL-FWD, or nftables chain forward)")
	c.IPTResync = 5 * time.Second
	fs.Var((*secondsOrDuration)(&c.IPTResync), "iptables-resync", "how often the packet filter rules are checked and restored (a duration, or seconds as flanneld takes it)")
	fs.StringVar(&c.HealthzIP, "healthz-ip", "0.0.0.0", "address of the health server")
	fs.IntVar(&c.HealthzPort, "healthz-port", 0, "port of the health server (/healthz, /readyz, /metrics); 0 disables it")
	fs.DurationVar(&c.Reconcile, "reconcile-interval", 30*time.Second, "how often the kernel state is checked and repaired")
	fs.StringVar(&c.UDPOffload, "udp-offload", "auto", "udp backend offloads: auto (all the kernel has), off, or a comma list of tun, gso, gro")
	fs.IntVar(&c.UDPQueues, "udp-queues", 0, "udp backend: TUN queues and packet loops; 0: one per CPU (at most 4), one on nodes with 2 CPUs or fewer")
	fs.BoolVar(&c.Nexthops, "route-nexthops", true, "vxlan: install IPv4 peer routes through kernel nexthop objects (cheap to add among thousands; the routes show \"nhid N\"); false: plain gateway routes, as flanneld")
	fs.BoolVarP(&c.Version, "version", "", false, "print the version and exit")
	c.Probe.register(fs)
	return fs
}

// addrFlag is a flag holding an IP address (IPv4 only with v4, IPv6 only with v6), parsed once when it is
// set; empty: none.
type addrFlag struct {
	a      *netip.Addr
	v4, v6 bool
}

func (f addrFlag) Set(s string) error {
	if s == "" {
		*f.a = netip.Addr{}
		return nil
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil && f.v4, err == nil && f.v4 && !a.Unmap().Is4():
		return errors.New("want an IPv4 address")
	case err != nil && f.v6, err == nil && f.v6 && (!a.Is6() || a.Is4In6()):
		return errors.New("want an IPv6 address")
	case err != nil:
		return errors.New("want an IP address")
	}
	*f.a = a.Unmap()
	return nil
}

func (f addrFlag) String() string {
	if f.a == nil || !f.a.IsValid() {
		return ""
	}
	return f.a.String()
}

func (f addrFlag) Type() string { return "ip" }

// secondsOrDuration is a duration flag that also takes a plain number of seconds, as flanneld's
// --iptables-resync does (FLANNELD_IPTABLES_RESYNC=5 keeps working after a migration).
type secondsOrDuration time.Duration

func (d *secondsOrDuration) Set(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		*d = secondsOrDuration(time.Duration(n) * time.Second)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration (5s) or a number of seconds (5)")
	}
	*d = secondsOrDuration(v)
	return nil
}

func (d *secondsOrDuration) String() string { return time.Duration(*d).String() }
func (d *secondsOrDuration) Type() string   { return "duration" }

// longFlags rewrites flanneld's single-dash form of a long flag ("-etcd-endpoints=URL", "-iface eth0", as
// distro units and old scripts pass them; Go's flag package takes both forms) to the double-dash form. Only
// names of fs's flags longer than one letter are rewritten; the value after a flag that takes one is left
// alone even if it starts with a dash, and so is everything after "--".
func longFlags(fs *pflag.FlagSet, args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return append(out, args[i:]...)
		}
		if !strings.HasPrefix(a, "-") || strings.HasPrefix(a, "--") {
			out = append(out, a)
			continue
		}
		name, _, hasValue := strings.Cut(a[1:], "=")
		f := fs.Lookup(name)
		if len(name) < 2 || f == nil {
			out = append(out, a)
			continue
		}
		out = append(out, "-"+a)
		if !hasValue && f.NoOptDefVal == "" && i+1 < len(args) {
			i++
			out = append(out, args[i]) // the flag's value, whatever it looks like
		}
	}
	return out
}

// errHelp is returned after usage was printed for --help.
var errHelp = errors.New("help requested")

// parseFlags parses args into fs and fills every flag not given on the command line from the environment:
// WEFTD_<NAME>, else FLANNELD_<NAME>, with NAME the flag name upper-cased and dashes turned to underscores.
func parseFlags(fs *pflag.FlagSet, args []string, getenv func(string) string) error {
	fs.SortFlags = false
	if err := fs.Parse(longFlags(fs, args)); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return errHelp
		}
		return err
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || err != nil || f.Name == "help" {
			return
		}
		name := strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		for _, prefix := range []string{"WEFTD_", "FLANNELD_"} {
			if v := getenv(prefix + name); v != "" {
				if serr := fs.Set(f.Name, v); serr != nil {
					err = fmt.Errorf("environment %s%s=%q: %w", prefix, name, v, serr)
				}
				return
			}
		}
	})
	return err
}

// agentConfig parses weftd's own flags and validates them.
func agentConfig(args []string, getenv func(string) string, stderr io.Writer) (Config, error) {
	var c Config
	fs := newAgentFlags(&c)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: weftd [flags]\n       weftd COMMAND [flags]   (config get|set, leases [delete], reserve, unreserve, status, version)\n\nFlags (each also settable as WEFTD_<FLAG> or FLANNELD_<FLAG>):\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, getenv); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected argument %q (commands: config, leases, reserve, unreserve, status, version)", fs.Arg(0))
	}
	c.Kube.NodeName, c.Kube.PodName, c.Kube.PodNamespace = getenv("NODE_NAME"), getenv("POD_NAME"), getenv("POD_NAMESPACE")
	return c, c.validate()
}

func (c *Config) validate() error {
	if c.Version {
		return nil
	}
	if c.LeaseTTL < 2*time.Second {
		return fmt.Errorf("--subnet-lease-ttl %s: must be at least 2s", c.LeaseTTL)
	}
	if c.UDPQueues < 0 || c.UDPQueues > 4 {
		return fmt.Errorf("--udp-queues %d: want 0 (automatic) to 4", c.UDPQueues)
	}
	if c.Reconcile < 100*time.Millisecond {
		return fmt.Errorf("--reconcile-interval %s: must be at least 100ms", c.Reconcile)
	}
	if c.IPTResync < 100*time.Millisecond {
		return fmt.Errorf("--iptables-resync %s: must be at least 100ms", c.IPTResync)
	}
	if err := c.Probe.validate(); err != nil {
		return err
	}
	if c.HealthzPort < 0 || c.HealthzPort > 65535 {
		return fmt.Errorf("--healthz-port %d: want 0 (off) to 65535", c.HealthzPort)
	}
	if c.Kube.SubnetMgr {
		if _, err := kubestore.NewAnnotations(c.Kube.AnnotationPrefix); err != nil {
			return fmt.Errorf("--kube-annotation-prefix: %w", err)
		}
		if c.Kube.NodeName == "" && (c.Kube.PodName == "" || c.Kube.PodNamespace == "") {
			return errors.New("--kube-subnet-mgr: set NODE_NAME, or POD_NAME and POD_NAMESPACE, to name this node")
		}
		if c.Kube.NetConfPath == "" {
			return errors.New("--net-config-path: must not be empty")
		}
	}
	if len(c.Etcd.Endpoints) == 0 {
		return errors.New("--etcd-endpoints: at least one endpoint is required")
	}
	if c.SubnetFile == "" {
		return errors.New("--subnet-file: must not be empty")
	}
	_, err := c.Log.logger(io.Discard)
	return err
}

func getenv(k string) string { return os.Getenv(k) }

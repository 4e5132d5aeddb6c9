package etcdstore

import (
	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
)

// flagAnnotation marks the flags AddFlags registers (see IsFlag).
const flagAnnotation = "weft/etcdstore"

// AddFlags registers flanneld's etcd flags on fs, each writing straight into its field of c:
// --etcd-endpoints (Endpoints, default [DefaultEndpoint]), --etcd-prefix (Prefix, default
// subnet.DefaultPrefix), --etcd-certfile, --etcd-keyfile, --etcd-cafile, --etcd-username and
// --etcd-password. LeaseTTL, DialTimeout and RequestTimeout get no flag. Each flag is annotated, so that a
// command can tell them from its own (IsFlag).
func (c *Config) AddFlags(fs *pflag.FlagSet) {
	own := pflag.NewFlagSet("etcd", pflag.ContinueOnError)
	own.SortFlags = false // AddFlagSet keeps this order
	own.StringSliceVar(&c.Endpoints, "etcd-endpoints", []string{DefaultEndpoint}, "etcd endpoints, comma-separated")
	own.StringVar(&c.Prefix, "etcd-prefix", subnet.DefaultPrefix, "etcd key prefix of the network")
	own.StringVar(&c.KeyFile, "etcd-keyfile", "", "TLS client key file for etcd")
	own.StringVar(&c.CertFile, "etcd-certfile", "", "TLS client certificate file for etcd")
	own.StringVar(&c.CAFile, "etcd-cafile", "", "TLS CA file to verify etcd's certificate")
	own.StringVar(&c.Username, "etcd-username", "", "etcd username")
	own.StringVar(&c.Password, "etcd-password", "", "etcd password (prefer the WEFTD_ETCD_PASSWORD environment variable)")
	own.VisitAll(func(f *pflag.Flag) { f.Annotations = map[string][]string{flagAnnotation: {"true"}} })
	fs.AddFlagSet(own)
}

// IsFlag reports whether f is one of the flags AddFlags registers.
func IsFlag(f *pflag.Flag) bool {
	_, ok := f.Annotations[flagAnnotation]
	return ok
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"

	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// cmdEtcd runs the embedded etcd server until ctx ends (SIGINT or SIGTERM).
func cmdEtcd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft-cluster etcd", flag.ContinueOnError)
	var o etcdtest.Options
	fs.StringVar(&o.ClientAddr, "listen", "", "client address IP:PORT, e.g. 192.0.2.2:2379 (required)")
	fs.StringVar(&o.Dir, "data-dir", "", "data directory; reusing it restarts the same member (required)")
	fs.StringVar(&o.LogLevel, "log-level", "warn", "etcd log level: debug, info, warn or error")
	fs.BoolVar(&o.Fast, "fast", false, "short heartbeat and election timeout, so a restarted member leads quickly")
	fs.BoolVar(&o.UnsafeNoFsync, "unsafe-no-fsync", false, "skip fsync (throwaway data only)")
	fs.StringVar(&o.Name, "name", "", "member name (default \"default\")")
	fs.StringVar(&o.PeerAddr, "peer", "", "peer address IP:PORT (default: the --listen IP, port 2380)")
	fs.StringVar(&o.InitialCluster, "initial-cluster", "", "every member of a new multi-member cluster as name=http://IP:PORT,... (default: this member alone)")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	if o.ClientAddr == "" || o.Dir == "" {
		fmt.Fprintln(stderr, "--listen and --data-dir are required")
		fs.Usage()
		return errUsage
	}
	if _, err := netip.ParseAddrPort(o.ClientAddr); err != nil {
		return fmt.Errorf("--listen %q: want IP:PORT: %w", o.ClientAddr, err)
	}
	return etcdtest.Run(ctx, o, func(url string) {
		fmt.Fprintf(stdout, "etcd ready at %s (data %s)\n", url, o.Dir)
	})
}

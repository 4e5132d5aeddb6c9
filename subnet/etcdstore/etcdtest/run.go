// Package etcdtest runs an embedded etcd server (go.etcd.io/etcd/server/v3/embed) for tests and demos.
//
// Start gives a test its own single-member etcd on random loopback ports, with its data in t.TempDir(),
// stopped by t.Cleanup. Run is the same server for a plain program: it listens on a given address (for
// example 192.0.2.2:2379 inside a network namespace of an e2e cluster) and stops when its context ends.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"google.golang.org/grpc"
)

// Options configure an embedded etcd server.
type Options struct {
	// Dir is the data directory; required. It is created (mode 0700) if missing. Reusing a directory
	// restarts the same member with its data.
	Dir string
	// ClientAddr is the host:port clients connect to, e.g. "192.0.2.2:2379"; required. The host must be an
	// IP address.
	ClientAddr string
	// PeerAddr is the host:port of the (unused, single-member) peer listener. Empty: ClientAddr's host with
	// port 2380, or the client port + 1 when the client port is 2380.
	PeerAddr string
	// Name is the member name. Empty: "default".
	Name string
	// TLS, when non-nil, serves clients over https with TLS.CertFile/KeyFile and requires client
	// certificates signed by TLS.CAFile. Nil: plain http.
	TLS *TLSFiles
	// LogFile receives etcd's own (zap) log. Empty: stderr.
	LogFile string
	// LogLevel is etcd's log level: debug, info, warn or error. Empty: "warn".
	LogLevel string
	// UnsafeNoFsync skips fsync; fine for throwaway test data, never for real data. False: fsync.
	UnsafeNoFsync bool
	// Fast shortens etcd's heartbeat (10 ms) and election timeout (100 ms) so that a single member elects
	// itself quickly after a restart. False: etcd's defaults (100 ms, 1 s).
	Fast bool
	// ReadyTimeout bounds the wait for the server to become ready. Zero: 30 s.
	ReadyTimeout time.Duration

	// reusePort sets SO_REUSEPORT on etcd's listeners, to bind ports that reservePorts holds. False: not set.
	reusePort bool
}

// ClientURL returns the client URL for o: http or, with TLS, https.
func (o Options) ClientURL() string {
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + o.ClientAddr
}

func (o Options) peerAddr() (string, error) {
	if o.PeerAddr != "" {
		return o.PeerAddr, nil
	}
	host, port, err := net.SplitHostPort(o.ClientAddr)
	if err != nil {
		return "", fmt.Errorf("etcd client address %q: %w", o.ClientAddr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p >= 65535 {
		return "", fmt.Errorf("etcd client address %q: want a fixed port", o.ClientAddr)
	}
	peer := 2380
	if p == peer {
		peer = p + 1
	}
	return net.JoinHostPort(host, strconv.Itoa(peer)), nil
}

func (o Options) embedConfig() (*embed.Config, error) {
	if o.Dir == "" {
		return nil, errors.New("etcd options: Dir is required")
	}
	if o.ClientAddr == "" {
		return nil, errors.New("etcd options: ClientAddr is required")
	}
	peer, err := o.peerAddr()
	if err != nil {
		return nil, err
	}
	curl, err := url.Parse(o.ClientURL())
	if err != nil {
		return nil, fmt.Errorf("etcd client address %q: %w", o.ClientAddr, err)
	}
	purl, err := url.Parse("http://" + peer)
	if err != nil {
		return nil, fmt.Errorf("etcd peer address %q: %w", peer, err)
	}
	cfg := embed.NewConfig()
	if o.Name != "" {
		cfg.Name = o.Name
	}
	cfg.Dir = o.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = o.LogLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if o.LogFile != "" {
		cfg.LogOutputs = []string{o.LogFile}
	}
	cfg.UnsafeNoFsync = o.UnsafeNoFsync
	cfg.SocketOpts.ReusePort = o.reusePort
	if o.Fast {
		cfg.TickMs, cfg.ElectionMs = 10, 100
	}
	if o.TLS != nil {
		cfg.ClientTLSInfo.CertFile = o.TLS.CertFile
		cfg.ClientTLSInfo.KeyFile = o.TLS.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = o.TLS.CAFile
		cfg.ClientTLSInfo.ClientCertAuth = true
		// The gRPC gateway dials the server itself and would need a client certificate of its own.
		cfg.EnableGRPCGateway = false
	}
	return cfg, nil
}

// startEmbed starts etcd and waits until it serves clients.
func startEmbed(o Options, extra ...grpc.ServerOption) (*embed.Etcd, error) {
	cfg, err := o.embedConfig()
	if err != nil {
		return nil, err
	}
	cfg.GRPCAdditionalServerOptions = append(cfg.GRPCAdditionalServerOptions, extra...)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start etcd on %s: %w", o.ClientURL(), err)
	}
	timeout := o.ReadyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("start etcd on %s: %w", o.ClientURL(), err)
	case <-t.C:
		e.Close()
		return nil, fmt.Errorf("start etcd on %s: not ready after %s", o.ClientURL(), timeout)
	}
}

// Run runs an embedded etcd server until ctx ends or the server fails. It returns nil after a clean stop
// caused by ctx, or the error that stopped the server. ready, if non-nil, is called once the server serves
// clients, with its client URL.
func Run(ctx context.Context, o Options, ready func(clientURL string)) error {
	e, err := startEmbed(o)
	if err != nil {
		return err
	}
	defer e.Close()
	if ready != nil {
		ready(o.ClientURL())
	}
	select {
	case <-ctx.Done():
		return nil
	case err, ok := <-e.Err():
		if !ok || err == nil {
			return fmt.Errorf("etcd on %s stopped", o.ClientURL())
		}
		return fmt.Errorf("etcd on %s: %w", o.ClientURL(), err)
	}
}

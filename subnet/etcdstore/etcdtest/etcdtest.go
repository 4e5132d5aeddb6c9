package etcdtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
)

// Server is a single-member etcd running in the test process. Its methods may be called from the test's
// goroutine only (they call t.Fatal).
type Server struct {
	tb   testing.TB
	opts Options

	streams streamKiller
	ports   *ports // the client and peer ports, held until the test ends

	mu sync.Mutex // guards e
	e  *embed.Etcd
}

// ports are TCP ports of 127.0.0.1 from reservePorts. release frees them.
type ports struct {
	nums []int
	// shared: the ports are held (on Linux) by sockets with SO_REUSEPORT; a listener must set it too to bind
	// them (Options.reusePort).
	shared bool
	fds    []int // the holding sockets
}

type settings struct {
	tls bool
}

// An Option changes how Start configures the server.
type Option func(*settings)

// WithClientCertAuth serves clients over TLS (a CA, a server certificate for 127.0.0.1 and a client
// certificate are generated into the test's temporary directory) and requires a client certificate signed by
// that CA. TLS returns the file names; Client and ClientConfig present the client certificate.
func WithClientCertAuth() Option { return func(s *settings) { s.tls = true } }

// Start runs an etcd server on random free ports of 127.0.0.1 with its data in t.TempDir(), waits until it
// serves clients and registers t.Cleanup to stop it. The ports stay reserved for the server until the test
// ends, also while it is stopped (on Linux; see reservePorts). etcd's own log goes to a file in the temporary
// directory; its last lines are logged if the test fails.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	var set settings
	for _, o := range opts {
		o(&set)
	}
	dir := t.TempDir()
	s := &Server{tb: t, opts: Options{
		Dir:           filepath.Join(dir, "data"),
		LogFile:       filepath.Join(dir, "etcd.log"),
		LogLevel:      "warn",
		UnsafeNoFsync: true,
		Fast:          true,
	}}
	if set.tls {
		files, err := GenerateTLS(filepath.Join(dir, "tls"), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		s.opts.TLS = files
	}
	var err error
	// Unreserved ports (not Linux) may be taken before etcd binds them: then try others.
	for attempt := 0; attempt < 5; attempt++ {
		if s.ports, err = reservePorts(2); err != nil {
			t.Fatal(err)
		}
		s.opts.ClientAddr = fmt.Sprintf("127.0.0.1:%d", s.ports.nums[0])
		s.opts.PeerAddr = fmt.Sprintf("127.0.0.1:%d", s.ports.nums[1])
		s.opts.reusePort = s.ports.shared
		var e *embed.Etcd
		if e, err = startEmbed(s.opts, s.streams.serverOption()); err == nil {
			s.e = e
			break
		}
		s.ports.release()
		os.RemoveAll(s.opts.Dir)
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	if err != nil {
		s.dumpLog()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		s.ports.release()
		if t.Failed() {
			s.dumpLog()
		}
	})
	return s
}

func (s *Server) dumpLog() {
	f, err := os.Open(s.opts.LogFile)
	if err != nil {
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	for _, l := range lines {
		s.tb.Logf("etcd: %s", l)
	}
}

// Endpoints returns the client URLs, e.g. ["http://127.0.0.1:41234"]; https with WithClientCertAuth.
func (s *Server) Endpoints() []string { return []string{s.opts.ClientURL()} }

// TLS returns the generated PKI files, or nil without WithClientCertAuth.
func (s *Server) TLS() *TLSFiles { return s.opts.TLS }

// Dir returns the data directory.
func (s *Server) Dir() string { return s.opts.Dir }

// ClientConfig returns a client config for the server: its endpoints, a 2 s dial timeout, reconnect attempts
// at most 1 s apart (gRPC's default backoff grows to 2 minutes, longer than a test waits for a restarted
// server), no client log and, with WithClientCertAuth, the client certificate.
func (s *Server) ClientConfig() clientv3.Config {
	cfg := clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		})},
	}
	if f := s.opts.TLS; f != nil {
		cert, err := tls.LoadX509KeyPair(f.ClientCertFile, f.ClientKeyFile)
		if err != nil {
			s.tb.Fatalf("load client certificate: %v", err)
		}
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			s.tb.Fatalf("read CA: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return cfg
}

// Client returns a new client of the server, closed by t.Cleanup.
func (s *Server) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(s.ClientConfig())
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Stop stops the server, keeping its data and (reserved) ports for Restart. Open watch and keepalive streams
// end at once with codes.Unavailable, as if the server had crashed. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.e != nil {
		s.streams.stop()
		s.e.Close()
		s.e = nil
	}
}

// Restart starts the server again on the same ports with the same data, stopping it first if it runs.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams.start()
	var err error
	// Unreserved ports (not Linux) may have been taken meanwhile; give their holders a little time.
	for attempt := 0; attempt < 20; attempt++ {
		var e *embed.Etcd
		if e, err = startEmbed(s.opts, s.streams.serverOption()); err == nil {
			s.e = e
			return
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.dumpLog()
	s.tb.Fatalf("restart etcd: %v", err)
}

// Compact compacts the key-value history up to the current revision and returns that revision. Watchers
// behind it get a compaction error.
func (s *Server) Compact(t testing.TB) int64 {
	t.Helper()
	cli, err := clientv3.New(s.ClientConfig())
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/", clientv3.WithCountOnly())
	if err != nil {
		t.Fatalf("compact: get revision: %v", err)
	}
	rev := resp.Header.Revision
	if _, err := cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("compact to revision %d: %v", rev, err)
	}
	return rev
}

package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/weft-net/weft/subnet"
)

// Defaults for the zero values of Config.
const (
	DefaultEndpoint       = "http://127.0.0.1:2379"
	DefaultLeaseTTL       = 24 * time.Hour
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// Config says how to reach etcd and where the network's keys live. The zero value talks plain http to
// 127.0.0.1:2379 under subnet.DefaultPrefix.
//
// Config implements slog.LogValuer and fmt.Stringer without the password: log it freely, but never with
// %#v on a copy converted to another type.
type Config struct {
	// Endpoints are etcd client URLs. Empty: [DefaultEndpoint]. An endpoint without a scheme gets http://, or
	// https:// when the store uses TLS. The schemes must agree: all http or all https.
	Endpoints []string
	// Prefix is the etcd key prefix (flannel's --etcd-prefix). Empty: subnet.DefaultPrefix. A trailing slash
	// is ignored.
	Prefix string

	// CertFile and KeyFile are a PEM client certificate and its key, presented to etcd; set both or neither.
	// CAFile is a PEM bundle of CAs that verify etcd's certificate; empty: the system roots.
	// When any of the three is set, or an endpoint is https://, the store uses TLS and every endpoint must be
	// https; when none is set and the endpoints are http, it uses plain, unencrypted http.
	CertFile, KeyFile, CAFile string

	// Username and Password authenticate to etcd. Empty: no authentication. The password is never logged.
	Username, Password string

	// LeaseTTL is the TTL of the etcd lease attached to a held lease key; etcd keepalives renew it, and a node
	// that stops renewing loses its key this long after. Rounded up to whole seconds (etcd also enforces a
	// minimum). Zero: DefaultLeaseTTL (24 h, as flannel).
	LeaseTTL time.Duration
	// DialTimeout bounds authentication (with Username) when New connects. Zero: DefaultDialTimeout. (A lease
	// is renewed for as long as its TTL lasts, whatever DialTimeout is.)
	DialTimeout time.Duration
	// RequestTimeout bounds each etcd request: a method call, or one step of Hold and Watch, which then log
	// and retry. Zero: DefaultRequestTimeout.
	RequestTimeout time.Duration

	// dial, if set, opens the client's connections (tests: a socket in another network namespace). Nil:
	// gRPC's own dialer.
	dial func(ctx context.Context, addr string) (net.Conn, error)
}

func (c Config) prefix() string {
	p := strings.TrimRight(c.Prefix, "/")
	if p == "" {
		return subnet.DefaultPrefix
	}
	return p
}

func (c Config) leaseTTLSeconds() int64 {
	ttl := c.LeaseTTL
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	return max(1, int64(math.Ceil(ttl.Seconds())))
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func redact(secret string) string {
	if secret == "" {
		return ""
	}
	return "REDACTED"
}

// LogValue renders c for slog with the password redacted.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Any("endpoints", c.Endpoints),
		slog.String("prefix", c.prefix()),
		slog.String("cert_file", c.CertFile),
		slog.String("key_file", c.KeyFile),
		slog.String("ca_file", c.CAFile),
		slog.String("username", c.Username),
		slog.String("password", redact(c.Password)),
		slog.Duration("lease_ttl", time.Duration(c.leaseTTLSeconds())*time.Second),
	)
}

// String renders c with the password redacted; %v and %+v use it.
func (c Config) String() string {
	return fmt.Sprintf("{Endpoints:%v Prefix:%s CertFile:%s KeyFile:%s CAFile:%s Username:%s Password:%s LeaseTTL:%s}",
		c.Endpoints, c.prefix(), c.CertFile, c.KeyFile, c.CAFile, c.Username, redact(c.Password),
		time.Duration(c.leaseTTLSeconds())*time.Second)
}

// GoString is String, so that %#v does not print the password either.
func (c Config) GoString() string { return "etcdstore.Config" + c.String() }

// usesTLS reports whether the store talks TLS to etcd: when a TLS file is set or an endpoint is https.
func (c Config) usesTLS() bool {
	if c.CertFile != "" || c.KeyFile != "" || c.CAFile != "" {
		return true
	}
	for _, ep := range c.Endpoints {
		if strings.HasPrefix(strings.ToLower(ep), "https://") {
			return true
		}
	}
	return false
}

// endpoints returns the endpoints with explicit schemes, checking that they agree with usesTLS.
func (c Config) endpoints() ([]string, error) {
	eps := c.Endpoints
	if len(eps) == 0 {
		eps = []string{DefaultEndpoint}
	}
	want := "http"
	if c.usesTLS() {
		want = "https"
	}
	out := make([]string, 0, len(eps))
	for _, ep := range eps {
		ep = strings.TrimSpace(ep)
		scheme, rest, ok := strings.Cut(ep, "://")
		if !ok {
			scheme, rest = want, ep
		}
		scheme = strings.ToLower(scheme)
		switch {
		case rest == "":
			return nil, fmt.Errorf("etcd endpoint %q: want [http[s]://]host:port", ep)
		case scheme != "http" && scheme != "https":
			return nil, fmt.Errorf("etcd endpoint %q: scheme %q: want http or https", ep, scheme)
		case scheme != want && want == "https":
			return nil, fmt.Errorf("etcd endpoint %q: plain http, but TLS is configured (a TLS file or another https endpoint)", ep)
		}
		out = append(out, scheme+"://"+rest)
	}
	return out, nil
}

// tlsConfig builds the client TLS config from the files. Call it only when usesTLS; it never returns nil
// without an error.
func (c Config) tlsConfig() (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return nil, errors.New("etcd TLS: set both the certificate file and the key file, or neither")
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: load client certificate %s and key %s: %w", c.CertFile, c.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd TLS: CA file %s: no PEM certificate found", c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

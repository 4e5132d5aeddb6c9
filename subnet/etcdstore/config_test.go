package etcdstore

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

func TestConfigRedactsPassword(t *testing.T) {
	cfg := Config{Endpoints: []string{"https://192.0.2.2:2379"}, Username: "weft", Password: "s3cret-pw",
		CertFile: "/etc/weft/client.pem", KeyFile: "/etc/weft/client-key.pem", LeaseTTL: time.Hour}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("starting", "etcd", cfg)
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("starting", "etcd", cfg)
	fmt.Fprintf(&buf, "%v %+v %#v %s", cfg, cfg, cfg, cfg)
	fmt.Fprintf(&buf, "%v %+v", &cfg, &cfg)
	out := buf.String()
	if strings.Contains(out, "s3cret") {
		t.Errorf("password in output:\n%s", out)
	}
	for _, want := range []string{"REDACTED", "weft", "192.0.2.2:2379", "client-key.pem", "1h0m0s"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(Config{}.String(), "REDACTED") {
		t.Errorf("empty password shown as REDACTED: %s", Config{})
	}
}

func TestConfigEndpoints(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // endpoints joined by space, or "error: <substring>"
	}{
		{"default", Config{}, "http://127.0.0.1:2379"},
		{"bare host gets http", Config{Endpoints: []string{"192.0.2.2:2379"}}, "http://192.0.2.2:2379"},
		{"bare host gets https with TLS", Config{Endpoints: []string{"192.0.2.2:2379"}, CAFile: "ca.pem"}, "https://192.0.2.2:2379"},
		{"https without files", Config{Endpoints: []string{"https://e1:2379", "e2:2379"}}, "https://e1:2379 https://e2:2379"},
		{"http with TLS files", Config{Endpoints: []string{"http://e1:2379"}, CertFile: "c", KeyFile: "k"}, "error: plain http, but TLS is configured"},
		{"mixed schemes", Config{Endpoints: []string{"https://e1:2379", "http://e2:2379"}}, "error: plain http"},
		{"other scheme", Config{Endpoints: []string{"unix:///run/etcd.sock"}}, "error: want http or https"},
		{"no host", Config{Endpoints: []string{"http://"}}, "error: want [http[s]://]host:port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eps, err := tc.cfg.endpoints()
			got := strings.Join(eps, " ")
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.HasPrefix(tc.want, "error: ") && got != tc.want || strings.HasPrefix(tc.want, "error: ") && !strings.Contains(got, strings.TrimPrefix(tc.want, "error: ")) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNewRejectsBadTLSFiles(t *testing.T) {
	for _, cfg := range []Config{
		{CertFile: "/nonexistent/cert.pem"},                                // key missing
		{CertFile: "/nonexistent/cert.pem", KeyFile: "/nonexistent/k.pem"}, // unreadable
		{CAFile: "/nonexistent/ca.pem"},
	} {
		if st, err := New(cfg, nil); err == nil {
			st.Close()
			t.Errorf("New(%v) succeeded", cfg)
		}
	}
}

func TestClientCertificates(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t, etcdtest.WithClientCertAuth())
	files := srv.TLS()

	good := newStore(t, srv)
	if _, err := good.Config(testCtx(t, 10*time.Second)); !errors.Is(err, subnet.ErrNoConfig) {
		t.Fatalf("with a client certificate: Config: %v, want ErrNoConfig", err)
	}
	setConfig(t, good, net16)
	if _, err := good.Config(testCtx(t, 10*time.Second)); err != nil {
		t.Fatalf("with a client certificate: Config: %v", err)
	}

	for name, mod := range map[string]func(*Config){
		"no client certificate": func(c *Config) { c.CertFile, c.KeyFile = "", "" },
		"unknown CA":            func(c *Config) { c.CAFile = "" }, // system roots do not know the test CA
	} {
		t.Run(name, func(t *testing.T) {
			st := newStore(t, srv, mod, func(c *Config) { c.RequestTimeout = 2 * time.Second })
			start := time.Now()
			_, err := st.Config(t.Context())
			if err == nil || errors.Is(err, subnet.ErrNoConfig) {
				t.Fatalf("Config: %v, want a connection error", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("Config took %s to fail", d)
			}
		})
	}
	if _, err := New(Config{Endpoints: []string{"http://" + strings.TrimPrefix(srv.Endpoints()[0], "https://")},
		CertFile: files.ClientCertFile, KeyFile: files.ClientKeyFile, CAFile: files.CAFile}, nil); err == nil {
		t.Error("New with TLS files and an http endpoint succeeded")
	}
}

func TestPasswordAuth(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := testCtx(t, 20*time.Second)
	if _, err := cli.RoleAdd(ctx, "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	st := newStore(t, srv, func(c *Config) { c.Username, c.Password = "root", "rootpw" })
	setConfig(t, st, net16)
	if _, err := st.Config(ctx); err != nil {
		t.Errorf("with the right password: %v", err)
	}
	if st, err := New(Config{Endpoints: srv.Endpoints(), Username: "root", Password: "wrong", DialTimeout: 2 * time.Second}, nil); err == nil {
		st.Close()
		t.Error("New with a wrong password succeeded")
	} else if strings.Contains(err.Error(), "wrong") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestNetworkConfigKey(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv, func(c *Config) { c.Prefix = "/weft/net1/" })
	ctx := testCtx(t, 20*time.Second)
	const key = "/weft/net1/config"

	_, err := st.Config(ctx)
	if !errors.Is(err, subnet.ErrNoConfig) || !strings.Contains(err.Error(), key) {
		t.Errorf("missing config: %v, want ErrNoConfig naming %s", err, key)
	}
	if _, err := st.RawConfig(ctx); !errors.Is(err, subnet.ErrNoConfig) {
		t.Errorf("RawConfig of a missing config: %v, want ErrNoConfig", err)
	}
	var cerr *subnet.ConfigError
	if err := st.SetConfig(ctx, []byte(`{"Network":"10.5.0.0/16","SubnetLen":31}`)); !errors.As(err, &cerr) || !strings.Contains(err.Error(), key) {
		t.Errorf("SetConfig of an invalid config: %v, want a ConfigError naming %s", err, key)
	}
	if _, _, _, ok := rawGet(t, cli, key); ok {
		t.Error("an invalid config was stored")
	}
	raw := "{\n  \"Network\": \"10.5.0.0/16\",\n  \"Backend\": {\"Type\": \"host-gw\"}\n}\n"
	if err := st.SetConfig(ctx, []byte(raw)); err != nil {
		t.Fatal(err)
	}
	if got, err := st.RawConfig(ctx); err != nil || string(got) != raw {
		t.Errorf("RawConfig: %q, %v; want %q as stored", got, err, raw)
	}
	cfg, err := st.Config(ctx)
	if err != nil || cfg.BackendType != "host-gw" || cfg.Network != netip.MustParsePrefix("10.5.0.0/16") {
		t.Errorf("Config: %+v, %v", cfg, err)
	}
	rawPut(t, cli, key, `{"Network":"10.5.0.0/33"}`)
	if _, err := st.Config(ctx); !errors.As(err, &cerr) || !strings.Contains(err.Error(), key) {
		t.Errorf("invalid stored config: %v, want a ConfigError naming %s", err, key)
	}
}

// TestWaitConfig checks WaitConfig's retries: a missing config is reported (wrapping subnet.ErrNoConfig) and
// waited for; once an operator writes it, it is returned. On a closed store WaitConfig ends with ErrClosed.
func TestWaitConfig(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	reports := make(chan error, 100)
	done := make(chan error, 1)
	go func() {
		cfg, err := st.WaitConfig(testCtx(t, 30*time.Second), func(err error) { reports <- err })
		if err == nil && cfg.Network.String() != "10.5.0.0/16" {
			err = fmt.Errorf("got network %s, want 10.5.0.0/16", cfg.Network)
		}
		done <- err
	}()
	select {
	case err := <-reports:
		if !errors.Is(err, subnet.ErrNoConfig) {
			t.Errorf("first report %v, want subnet.ErrNoConfig", err)
		}
	case err := <-done:
		t.Fatalf("WaitConfig returned %v without a config", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no report of the missing config")
	}
	setConfig(t, st, net16)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("WaitConfig: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WaitConfig did not return the config written")
	}

	closed := newStore(t, srv)
	closed.Close()
	if _, err := closed.WaitConfig(testCtx(t, 10*time.Second), nil); !errors.Is(err, ErrClosed) {
		t.Errorf("WaitConfig on a closed store: %v, want ErrClosed", err)
	}
}

func TestLeasesExpiry(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv, withTTL(time.Minute))
	setConfig(t, st, net16)
	ctx := testCtx(t, 20*time.Second)
	l := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")}).next(t, 10*time.Second)
	if err := st.Reserve(ctx, netip.MustParsePrefix("10.5.200.0/24"), netip.MustParseAddr("198.51.100.2")); err != nil {
		t.Fatal(err)
	}
	leases, err := st.Leases(ctx)
	if err != nil || len(leases) != 2 {
		t.Fatalf("Leases: %+v, %v", leases, err)
	}
	for _, got := range leases {
		switch got.Subnet {
		case l.Subnet:
			if left := time.Until(got.Expires); got.Reservation || left < 50*time.Second || left > time.Minute {
				t.Errorf("held lease: reservation %v, expires in %s; want about 1m", got.Reservation, left)
			}
		default:
			if !got.Reservation || !got.Expires.IsZero() || got.Attrs.PublicIP.String() != "198.51.100.2" {
				t.Errorf("reservation: %+v", got)
			}
		}
	}
}

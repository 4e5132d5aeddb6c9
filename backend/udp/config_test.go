package udp

import (
	"errors"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

func netConfig(t *testing.T, backendJSON string) *subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network": "10.5.0.0/16", "Backend": ` + backendJSON + `}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		backend string
		port    int
		err     string // substring; "" for none
	}{
		{`{"Type": "udp"}`, 8285, ""},
		{`{"Type": "udp", "Port": 8285}`, 8285, ""},
		{`{"Type": "udp", "Port": 1}`, 1, ""},
		{`{"Type": "udp", "Port": 65535}`, 65535, ""},
		{`{"Type": "udp", "port": 9000}`, 9000, ""},
		{`{"type": "udp", "PORT": 9001}`, 9001, ""},
		{`{"Type": "udp", "Port": 8285, "Unknown": true}`, 8285, ""},
		{`{"Type": "udp", "Port": 0}`, 0, "Backend.Port 0: must be in 1..65535"},
		{`{"Type": "udp", "Port": -1}`, 0, "Backend.Port -1: must be in 1..65535"},
		{`{"Type": "udp", "Port": 65536}`, 0, "Backend.Port 65536: must be in 1..65535"},
		{`{"Type": "udp", "Port": "8285"}`, 0, "Port"},
		{`{"Type": "udp", "Port": 8285.5}`, 0, "Port"},
	} {
		c, err := ParseConfig(netConfig(t, tc.backend))
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.backend, err)
		case tc.err == "" && c.Port != tc.port:
			t.Errorf("%s: Port = %d, want %d", tc.backend, c.Port, tc.port)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want one containing %q", tc.backend, err, tc.err)
		}
	}
	_, err := ParseConfig(netConfig(t, `{"Type": "udp", "Port": 0}`))
	if ce, ok := errors.AsType[*subnet.ConfigError](err); !ok || ce.Field != "Backend.Port" || ce.Value != "0" {
		t.Errorf("error %v is not a ConfigError naming Backend.Port", err)
	}
}

func TestNew(t *testing.T) {
	ext := backend.External{Name: "eth0", Index: 2, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11")}
	deps := func(f func(*backend.Deps)) backend.Deps {
		d := backend.Deps{External: ext, Network: netConfig(t, `{"Type": "udp", "Port": 9000}`)}
		f(&d)
		return d
	}
	be, err := New(deps(func(*backend.Deps) {}))
	if err != nil {
		t.Fatal(err)
	}
	b := be.(*Backend)
	if b.port != 9000 || b.mtu != 1472 || b.ext.PublicIP != ext.Addr || b.log == nil {
		t.Errorf("backend: port %d mtu %d PublicIP %s", b.port, b.mtu, b.ext.PublicIP)
	}
	if got := b.bindCandidates(); len(got) != 1 || got[0] != ext.Addr {
		t.Errorf("bind candidates %v", got)
	}
	if m := b.Stats(); len(m) != int(numCounters)+len(features)+len(backend.SkipKinds) {
		t.Errorf("Stats has %d keys, want %d counters, %d offloads and %d skip reasons", len(m), numCounters, len(features), len(backend.SkipKinds))
	}
	if err := b.Close(); err != nil { // Close before Up
		t.Errorf("Close before Up: %v", err)
	}

	nat, err := New(deps(func(d *backend.Deps) { d.External.PublicIP = netip.MustParseAddr("203.0.113.7") }))
	if err != nil {
		t.Fatal(err)
	}
	if got := nat.(*Backend).bindCandidates(); len(got) != 2 || got[0].String() != "203.0.113.7" || got[1] != ext.Addr {
		t.Errorf("bind candidates behind NAT: %v", got)
	}

	for _, tc := range []struct {
		name string
		f    func(*backend.Deps)
		err  string
	}{
		{"no network", func(d *backend.Deps) { d.Network = nil }, "no network config"},
		{"bad port", func(d *backend.Deps) { d.Network = netConfig(t, `{"Type": "udp", "Port": 70000}`) }, "Backend.Port 70000"},
		{"IPv6 address", func(d *backend.Deps) { d.External.Addr = netip.MustParseAddr("2001:db8::1") }, `address "2001:db8::1" is not IPv4`},
		{"no address", func(d *backend.Deps) { d.External.Addr = netip.Addr{} }, "is not IPv4"},
		{"MTU too small", func(d *backend.Deps) { d.External.MTU = 95 }, "MTU 95 leaves less than 68"},
	} {
		if _, err := New(deps(tc.f)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.err)
		}
	}
	if _, err := New(deps(func(d *backend.Deps) { d.External.MTU = 96 })); err != nil {
		t.Errorf("MTU 96 (TUN 68): %v", err)
	}
}

func TestQueues(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	auto := 1
	if procs > 2 {
		auto = min(procs, maxQueues)
	}
	for _, c := range []struct{ asked, want int }{{0, auto}, {1, 1}, {3, 3}, {4, 4}, {9, maxQueues}} {
		if got := queues(c.asked); got != c.want {
			t.Errorf("queues(%d) with GOMAXPROCS %d = %d, want %d", c.asked, procs, got, c.want)
		}
	}
}

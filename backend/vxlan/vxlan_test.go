package vxlan

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
	"github.com/weft-net/weft/subnet"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		backend string
		want    Config
		wantErr string // substring; "" for none
	}{
		{``, Config{VNI: 1}, ""},
		{`{"Type":"vxlan"}`, Config{VNI: 1}, ""},
		{`{"Type":"vxlan","VNI":4096,"Port":4789,"GBP":true,"Learning":true,"DirectRouting":true,"MTU":9000}`,
			Config{VNI: 4096, Port: 4789, GBP: true, Learning: true, DirectRouting: true, MTU: 9000}, ""},
		{`{"type":"vxlan","vni":7,"port":0,"directrouting":true,"mtu":1400}`, Config{VNI: 7, DirectRouting: true, MTU: 1400}, ""},
		{`{"VNI":16777215}`, Config{VNI: 16777215}, ""},
		{`{"VNI":0}`, Config{}, "Backend.VNI 0: must be in 1..16777215"},
		{`{"VNI":16777216}`, Config{}, "Backend.VNI 16777216: must be in 1..16777215"},
		{`{"VNI":-1}`, Config{}, "Backend.VNI -1"},
		{`{"Port":65536}`, Config{}, "Backend.Port 65536: must be in 0..65535"},
		{`{"Port":-5}`, Config{}, "Backend.Port -5"},
		{`{"MTU":100}`, Config{}, "Backend.MTU 100: must be 0 (the interface's MTU) or in 118..65535"},
		{`{"VNI":"1"}`, Config{}, "Backend"},
		{`{"GBP":"yes"}`, Config{}, "Backend"},
	}
	for _, tt := range tests {
		t.Run(tt.backend, func(t *testing.T) {
			got, err := ParseConfig(&subnet.Config{Backend: json.RawMessage(tt.backend)})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseConfig = %+v, %v; want error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseConfig = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	_, err := ParseConfig(&subnet.Config{Backend: json.RawMessage(`{"VNI":0}`)})
	if _, ok := errors.AsType[*subnet.ConfigError](err); !ok {
		t.Errorf("validation error %v is not a *subnet.ConfigError", err)
	}
}

func TestNew(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ext := backend.External{Name: "eth0", Index: 3, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11")}
	ext.PublicIP = netip.MustParseAddr("198.51.100.11") // NAT is fine for vxlan
	for _, tt := range []struct {
		name, backend string
		mtu           int
		wantDevMTU    int
		wantErr       string
	}{
		{"defaults", `{"Type":"vxlan"}`, 1500, 1450, ""},
		{"mtu override", `{"Type":"vxlan","MTU":9000}`, 1500, 8950, ""},
		{"bad vni", `{"Type":"vxlan","VNI":0}`, 1500, 0, "Backend.VNI 0"},
		{"tiny underlay", `{"Type":"vxlan"}`, 100, 0, "underlay MTU 100 of eth0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := ext
			e.MTU = tt.mtu
			be, err := New(backend.Deps{Log: log, External: e, Network: &subnet.Config{Backend: json.RawMessage(tt.backend)}})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			v := be.(*vxlan)
			if v.want.MTU != tt.wantDevMTU || v.want.Name != "flannel.1" || v.want.Port != 8472 || v.want.Local != e.Addr || v.want.VtepIndex != 3 {
				t.Errorf("device = %+v", v.want)
			}
			if err := be.Set(&backend.Config{}); !errors.Is(err, kernel.ErrNotUp) {
				t.Errorf("Set before Up = %v", err)
			}
			be.Close()
			if _, err := be.Up(t.Context()); !errors.Is(err, kernel.ErrClosed) {
				t.Errorf("Up after Close = %v", err)
			}
		})
	}
}

func TestRandomMAC(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		m := randomMAC()
		if len(m) != 6 || m[0]&1 != 0 || m[0]&2 == 0 {
			t.Fatalf("randomMAC() = %s: want locally administered unicast", m)
		}
		seen[m.String()] = true
	}
	if len(seen) < 99 {
		t.Errorf("randomMAC() repeats: %d distinct of 100", len(seen))
	}
}

func TestLeaseData(t *testing.T) {
	// flannel's exact format, both ways.
	b, err := json.Marshal(LeaseData{VNI: 1, VtepMAC: "c6:d2:32:6f:8f:44"})
	if err != nil || string(b) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}` {
		t.Errorf("Marshal = %s, %v", b, err)
	}
	for _, tt := range []struct {
		raw, wantMAC, wantErr string
	}{
		{`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`, "c6:d2:32:6f:8f:44", ""},
		{`{"vni":1,"vtepmac":"C6:D2:32:6F:8F:44"}`, "c6:d2:32:6f:8f:44", ""},
		{`{"VNI":1}`, "", "VtepMAC"},
		{`{"VtepMAC":"zz"}`, "", "VtepMAC"},
		{`{"VtepMAC":"01:00:5e:00:00:01"}`, "", "not a unicast"},
		{`{"VtepMAC":"00:00:00:00:00:00"}`, "", "not a unicast"},
		{`{"VtepMAC":"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"}`, "", "not a unicast"},
		{`[1]`, "", "BackendData"},
		{``, "", "no BackendData"},
	} {
		_, mac, err := parseLeaseData(json.RawMessage(tt.raw))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseLeaseData(%s) = %s, %v; want error containing %q", tt.raw, mac, err, tt.wantErr)
			}
			continue
		}
		if err != nil || mac.String() != tt.wantMAC {
			t.Errorf("parseLeaseData(%s) = %s, %v; want %s", tt.raw, mac, err, tt.wantMAC)
		}
	}
}

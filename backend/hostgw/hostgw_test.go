package hostgw

import (
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

func TestNew(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	ext := backend.External{Name: "eth0", Index: 7, MTU: 1500, Addr: netip.MustParseAddr("192.0.2.11")}
	for _, tt := range []struct {
		name    string
		pub     string
		wantErr string
	}{
		{"public ip unset", "", ""},
		{"public ip equals the address", "192.0.2.11", ""},
		{"nat", "198.51.100.7", "public IP 198.51.100.7 differs from the address 192.0.2.11 of interface eth0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := ext
			if tt.pub != "" {
				e.PublicIP = netip.MustParseAddr(tt.pub)
			}
			_, err := New(backend.Deps{Log: log, External: e, Network: &subnet.Config{}})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrNAT)):
				t.Fatalf("New = %v, want an ErrNAT error containing %q", err, tt.wantErr)
			}
		})
	}
}

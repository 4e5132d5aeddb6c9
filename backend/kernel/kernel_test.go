package kernel

import (
	"net/netip"
	"testing"
)

func TestDiffRoutes(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	r1 := Route{Dst: p("10.5.1.0/24"), Gw: a("192.0.2.11"), LinkIndex: 2}
	r2 := Route{Dst: p("10.5.2.0/24"), Gw: a("192.0.2.12"), LinkIndex: 2}
	r2moved := Route{Dst: p("10.5.2.0/24"), Gw: a("192.0.2.13"), LinkIndex: 2}
	r3 := Route{Dst: p("10.5.3.0/24"), Gw: a("10.5.3.0"), LinkIndex: 5, OnLink: true}
	tests := []struct {
		name             string
		have, want       []Route
		wantPut, wantDel []Route
	}{
		{"empty", nil, nil, nil, nil},
		{"add all", nil, []Route{r2, r1}, []Route{r1, r2}, nil},
		{"in sync", []Route{r1, r2}, []Route{r2, r1}, nil, nil},
		{"remove stale", []Route{r1, r2, r3}, []Route{r1}, nil, []Route{r2, r3}},
		{"replace changed gateway", []Route{r1, r2}, []Route{r1, r2moved}, []Route{r2moved}, nil},
		{"mixed", []Route{r1, r3}, []Route{r2, r3}, []Route{r2}, []Route{r1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put, del := DiffRoutes(tt.have, tt.want)
			if !equal(put, tt.wantPut) || !equal(del, tt.wantDel) {
				t.Errorf("DiffRoutes = put %v del %v, want put %v del %v", put, del, tt.wantPut, tt.wantDel)
			}
		})
	}
}

func equal(a, b []Route) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestOwned(t *testing.T) {
	p := netip.MustParsePrefix
	owned := Owned(p("10.5.0.0/16"), 7)
	tests := []struct {
		r    Route
		want bool
	}{
		{Route{Dst: p("10.5.2.0/24"), LinkIndex: 2}, true},   // in the network, on the underlay
		{Route{Dst: p("10.5.0.0/16"), LinkIndex: 2}, true},   // the network itself (udp's route)
		{Route{Dst: p("10.6.2.0/24"), LinkIndex: 2}, false},  // another instance's network
		{Route{Dst: p("10.0.0.0/8"), LinkIndex: 2}, false},   // wider than the network
		{Route{Dst: p("10.99.0.0/24"), LinkIndex: 7}, true},  // on our own device: a stale route of ours
		{Route{Dst: p("192.0.2.0/24"), LinkIndex: 3}, false}, // elsewhere
	}
	for _, tt := range tests {
		if got := owned(tt.r); got != tt.want {
			t.Errorf("Owned(10.5.0.0/16, #7)(%s) = %v, want %v", tt.r, got, tt.want)
		}
	}
	if Owned(netip.Prefix{}, 7)(Route{Dst: p("10.5.2.0/24"), LinkIndex: 2}) {
		t.Error("Owned with no network owns a route on another link")
	}
}

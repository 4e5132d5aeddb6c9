package kernel

import (
	"fmt"
	"net"
	"net/netip"
	"testing"
)

func mac(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func TestDiffNeighs(t *testing.T) {
	a := netip.MustParseAddr
	n1 := Neigh{LinkIndex: 5, IP: a("10.5.1.0"), MAC: mac("02:00:00:00:00:01"), Permanent: true}
	n2 := Neigh{LinkIndex: 5, IP: a("10.5.2.0"), MAC: mac("02:00:00:00:00:02"), Permanent: true}
	n2mac := Neigh{LinkIndex: 5, IP: a("10.5.2.0"), MAC: mac("02:00:00:00:00:99"), Permanent: true}
	n2stale := Neigh{LinkIndex: 5, IP: a("10.5.2.0"), MAC: mac("02:00:00:00:00:02")} // reachable, not permanent
	n3 := Neigh{LinkIndex: 5, IP: a("10.5.3.0"), MAC: nil}                           // incomplete
	w1, w2 := n1, n2
	w1.Permanent, w2.Permanent = false, false // ignored in wanted entries
	tests := []struct {
		name             string
		have, want       []Neigh
		wantPut, wantDel []Neigh
	}{
		{"empty", nil, nil, nil, nil},
		{"add all", nil, []Neigh{w2, w1}, []Neigh{w1, w2}, nil},
		{"in sync", []Neigh{n1, n2}, []Neigh{w1, w2}, nil, nil},
		{"mac changed", []Neigh{n1, n2mac}, []Neigh{w1, w2}, []Neigh{w2}, nil},
		{"made permanent", []Neigh{n2stale}, []Neigh{w2}, []Neigh{w2}, nil},
		{"remove unexplained", []Neigh{n1, n2, n3}, []Neigh{w1}, nil, []Neigh{n2, n3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put, del := DiffNeighs(tt.have, tt.want)
			if fmt.Sprint(put) != fmt.Sprint(tt.wantPut) || fmt.Sprint(del) != fmt.Sprint(tt.wantDel) {
				t.Errorf("DiffNeighs = put %v del %v, want put %v del %v", put, del, tt.wantPut, tt.wantDel)
			}
		})
	}
}

func TestDiffFDB(t *testing.T) {
	a := netip.MustParseAddr
	m1, m2 := mac("02:00:00:00:00:01"), mac("02:00:00:00:00:02")
	f1 := FDB{LinkIndex: 5, MAC: m1, Dst: a("192.0.2.11"), Permanent: true}
	f2 := FDB{LinkIndex: 5, MAC: m2, Dst: a("192.0.2.12"), Permanent: true}
	f2moved := FDB{LinkIndex: 5, MAC: m2, Dst: a("192.0.2.13")}
	f2learned := FDB{LinkIndex: 5, MAC: m2, Dst: a("192.0.2.12")}
	f2extra := FDB{LinkIndex: 5, MAC: m2, Dst: a("192.0.2.99"), Permanent: true}
	tests := []struct {
		name             string
		have, want       []FDB
		wantPut, wantDel []FDB
	}{
		{"empty", nil, nil, nil, nil},
		{"add all", nil, []FDB{f2, f1}, []FDB{f1, f2}, nil},
		{"in sync", []FDB{f1, f2}, []FDB{f2, f1}, nil, nil},
		{"remote moved", []FDB{f1, f2}, []FDB{f1, f2moved}, []FDB{f2moved}, []FDB{f2}},
		{"learned made permanent", []FDB{f2learned}, []FDB{f2}, []FDB{f2}, nil},
		{"extra remote of a wanted mac", []FDB{f2, f2extra}, []FDB{f2}, nil, []FDB{f2extra}},
		{"remove unexplained", []FDB{f1, f2}, nil, nil, []FDB{f1, f2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			put, del := DiffFDB(tt.have, tt.want)
			if fmt.Sprint(put) != fmt.Sprint(tt.wantPut) || fmt.Sprint(del) != fmt.Sprint(tt.wantDel) {
				t.Errorf("DiffFDB = put %v del %v, want put %v del %v", put, del, tt.wantPut, tt.wantDel)
			}
		})
	}
}

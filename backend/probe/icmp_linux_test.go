package probe

import (
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestICMPConn sends real echo requests between two throwaway namespaces: to the other namespace's address
// (its kernel answers) and to an address nobody has (no reply: the probe times out).
func TestICMPConn(t *testing.T) {
	kerneltest.RequireRoot(t)
	pre := kerneltest.Prefix()
	a, b := kerneltest.NewNS(t, pre+"-pa"), kerneltest.NewNS(t, pre+"-pb")
	kerneltest.Veth(t, a, "eth0", "10.9.0.1/24", b, "eth0", "10.9.0.2/24")
	var c Conn
	if err := a.Do(func() (err error) { c, err = Listen(); return err }); err != nil {
		t.Fatal(err)
	}
	up, down := netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.9.0.7")
	p, err := New(Config{Rate: 100, Timeout: 200 * time.Millisecond, Log: testLog(t), Targets: func() []Target {
		return []Target{{Peer: netip.MustParsePrefix("10.9.0.0/24"), Addr: up}, {Peer: netip.MustParsePrefix("10.9.1.0/24"), Addr: down}}
	}}, c)
	if err != nil {
		t.Fatal(err)
	}
	p.Start()
	defer p.Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		ps := p.Peers()
		if len(ps) == 2 && ps[0].State == Reachable && ps[1].State == Unreachable {
			if ps[0].LastRTT <= 0 || ps[0].LastRTT > 100*time.Millisecond {
				t.Errorf("RTT to a local address: %s", ps[0].LastRTT)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers: %+v; want 10.9.0.0/24 reachable and 10.9.1.0/24 unreachable", ps)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

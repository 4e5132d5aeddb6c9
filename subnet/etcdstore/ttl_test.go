package etcdstore

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// TestLeaseTTLLeft: a held lease's TTL left is renewed by keepalives (it stays near the TTL, never running out);
// a reservation has none; a missing key is ErrNotFound.
func TestLeaseTTLLeft(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv, withTTL(3*time.Second))
	setConfig(t, st, net16)
	ctx := testCtx(t, 30*time.Second)
	l := startHold(t, newStore(t, srv, withTTL(3*time.Second)), subnet.AcquireRequest{Attrs: attrs("198.51.100.7")}).next(t, 10*time.Second)
	for range 4 { // past the TTL: keepalives renew it
		left, ok, err := st.LeaseTTL(ctx, l)
		if err != nil || !ok || left <= 0 || left > 3*time.Second {
			t.Fatalf("LeaseTTL(%s) = %s, %v, %v; want up to 3s left", l.Subnet, left, ok, err)
		}
		time.Sleep(time.Second)
	}
	// The held lease's subnet is a random pick: the reservation and the missing key take two others.
	var free []netip.Prefix
	for _, p := range []string{"10.5.7.0/24", "10.5.9.0/24", "10.5.11.0/24"} {
		if p := netip.MustParsePrefix(p); p != l.Subnet {
			free = append(free, p)
		}
	}
	reserved, missing := free[0], free[1]
	if err := st.Reserve(ctx, reserved, netip.MustParseAddr("198.51.100.70")); err != nil {
		t.Fatal(err)
	}
	if left, ok, err := st.LeaseTTL(ctx, subnet.Lease{Subnet: reserved}); err != nil || ok {
		t.Errorf("LeaseTTL(reservation) = %s, %v, %v; want no TTL", left, ok, err)
	}
	if _, _, err := st.LeaseTTL(ctx, subnet.Lease{Subnet: missing}); !errors.Is(err, ErrNotFound) {
		t.Errorf("LeaseTTL(missing) error %v, want ErrNotFound", err)
	}
}

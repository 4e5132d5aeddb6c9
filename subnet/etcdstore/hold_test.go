package etcdstore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

func TestConcurrentAcquire(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	setConfig(t, newStore(t, srv), net16)
	cfg, err := subnet.ParseConfig([]byte(net16))
	if err != nil {
		t.Fatal(err)
	}

	const n = 100
	stores := make([]*Store, n)
	for i := range stores {
		stores[i] = newStore(t, srv) // each with its own client
	}
	holders := make([]*holder, n)
	for i, st := range stores {
		ip := fmt.Sprintf("198.51.100.%d", i+1)
		if i >= 50 {
			ip = fmt.Sprintf("203.0.113.%d", i+1)
		}
		holders[i] = startHold(t, st, subnet.AcquireRequest{Attrs: attrs(ip)})
	}
	seen := map[netip.Prefix]string{}
	for i, h := range holders {
		l := h.next(t, 30*time.Second)
		if other, dup := seen[l.Subnet]; dup {
			t.Errorf("holder %d (%s) got %s, already held by %s", i, l.Attrs.PublicIP, l.Subnet, other)
		}
		seen[l.Subnet] = l.Attrs.PublicIP.String()
		if !cfg.Fits(l) || l.Reservation || l.Expires.IsZero() {
			t.Errorf("holder %d: lease %+v: want a fitting, expiring lease", i, l)
		}
	}
	leases, err := newStore(t, srv).Leases(testCtx(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != n {
		t.Errorf("etcd has %d leases, want %d", len(leases), n)
	}
	for _, h := range holders {
		if err := h.stop(t); err != nil {
			t.Errorf("Hold returned %v after its context ended, want nil", err)
		}
	}
}

// TestNetworkFull checks that Hold retries a full network by itself: it logs an error naming the network,
// the subnet length and the lease count, neither returns nor delivers, and takes the first subnet freed.
func TestNetworkFull(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	var logs lockedBuffer
	st := newStore(t, srv)
	full, err := New(Config{Endpoints: srv.Endpoints(), RequestTimeout: 5 * time.Second},
		slog.New(slog.NewTextHandler(io.MultiWriter(&logs, t.Output()), nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { full.Close() })
	setConfig(t, st, net4)
	got := map[netip.Prefix]*holder{}
	for i := range 4 {
		h := startHold(t, newStore(t, srv), subnet.AcquireRequest{Attrs: attrs(fmt.Sprintf("198.51.100.%d", i+1))})
		got[h.next(t, 10*time.Second).Subnet] = h
	}
	if len(got) != 4 {
		t.Fatalf("four holders got %d distinct subnets: %v", len(got), got)
	}
	h := startHold(t, full, subnet.AcquireRequest{Attrs: attrs("198.51.100.5")})
	eventually(t, 10*time.Second, "the fifth Hold logs an error", func() bool { return strings.Contains(logs.String(), "level=ERROR") })
	for _, want := range []string{"network full", "10.6.0.0/22", "/24", "4 leases"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the fifth Hold's log does not mention %q:\n%s", want, logs.String())
		}
	}
	select {
	case err := <-h.done:
		close(h.done)
		t.Fatalf("fifth Hold returned %v in a full network; want it to keep retrying", err)
	case l := <-h.leases:
		t.Fatalf("fifth holder got %s in a full network", l.Subnet)
	case <-time.After(time.Second):
	}

	freed := netip.MustParsePrefix("10.6.2.0/24")
	if err := got[freed].stop(t); err != nil {
		t.Errorf("Hold after its context ended: %v, want nil", err)
	}
	if _, err := cli.Delete(testCtx(t, 5*time.Second), subnetsPrefix+"10.6.2.0-24"); err != nil {
		t.Fatal(err)
	}
	if l := h.next(t, 15*time.Second); l.Subnet != freed {
		t.Errorf("fifth Hold got %s once %s was freed", l.Subnet, freed)
	}
}

func TestAcquireOrder(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	setConfig(t, newStore(t, srv), net16)
	// Existing leases: 10.5.10.0 of 198.51.100.10 (this node, from its previous run), 10.5.20.0 of another node.
	grant, err := cli.Grant(testCtx(t, 5*time.Second), 60)
	if err != nil {
		t.Fatal(err)
	}
	rawPut(t, cli, subnetsPrefix+"10.5.10.0-24", leaseValue("198.51.100.10"), clientv3.WithLease(grant.ID))
	rawPut(t, cli, subnetsPrefix+"10.5.20.0-24", leaseValue("198.51.100.20"), clientv3.WithLease(grant.ID))

	for _, tc := range []struct {
		name string
		ip   string
		prev string
		want string // "" means any subnet but the ones named in notWant
		not  []string
	}{
		{name: "same public IP is reused over prev", ip: "198.51.100.10", prev: "10.5.30.0/24", want: "10.5.10.0/24"},
		{name: "free prev is taken", ip: "198.51.100.31", prev: "10.5.31.0/24", want: "10.5.31.0/24"},
		{name: "prev held by another node is not taken", ip: "198.51.100.32", prev: "10.5.20.0/24", not: []string{"10.5.20.0/24", "10.5.10.0/24", "10.5.31.0/24"}},
		{name: "prev outside SubnetMin..Max is not taken", ip: "198.51.100.33", prev: "10.5.0.0/24", not: []string{"10.5.0.0/24"}},
		{name: "prev of another length is not taken", ip: "198.51.100.34", prev: "10.5.40.0/25", not: []string{"10.5.40.0/25"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := subnet.AcquireRequest{Attrs: attrs(tc.ip), Prev: netip.MustParsePrefix(tc.prev)}
			h := startHold(t, newStore(t, srv), req)
			l := h.next(t, 10*time.Second)
			if tc.want != "" && l.Subnet.String() != tc.want {
				t.Errorf("got %s, want %s", l.Subnet, tc.want)
			}
			for _, n := range tc.not {
				if l.Subnet.String() == n {
					t.Errorf("got %s, which it must not take", l.Subnet)
				}
			}
			val, lease, _, ok := rawGet(t, cli, keyOf(l))
			if !ok || lease == 0 || !strings.Contains(val, `"BackendData":{"VNI":1}`) || !strings.Contains(val, tc.ip) {
				t.Errorf("key %s: value %s, etcd lease %x: want our value with an etcd lease", keyOf(l), val, lease)
			}
		})
	}
	// The other node's lease is untouched.
	if val, _, _, _ := rawGet(t, cli, subnetsPrefix+"10.5.20.0-24"); val != leaseValue("198.51.100.20") {
		t.Errorf("other node's lease changed to %s", val)
	}
}

func TestRestartReusesLease(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	setConfig(t, newStore(t, srv), net16)
	req := subnet.AcquireRequest{Attrs: attrs("198.51.100.7")}
	h := startHold(t, newStore(t, srv), req)
	first := h.next(t, 10*time.Second)
	_, lease1, _, _ := rawGet(t, cli, keyOf(first))
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if _, _, _, ok := rawGet(t, cli, keyOf(first)); !ok {
		t.Fatal("lease key gone after Hold's context ended; it must stay")
	}

	// The node restarts with another public-IP-independent env file subnet: its own lease still wins.
	req.Prev = netip.MustParsePrefix("10.5.99.0/24")
	req.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)
	second := startHold(t, newStore(t, srv), req).next(t, 10*time.Second)
	if second.Subnet != first.Subnet {
		t.Fatalf("after restart got %s, want %s", second.Subnet, first.Subnet)
	}
	val, lease2, _, _ := rawGet(t, cli, keyOf(second))
	if lease2 == 0 || lease2 == lease1 || !strings.Contains(val, "c6:d2:32:6f:8f:44") {
		t.Errorf("after restart: value %s etcd lease %x (before %x): want the new value under a new etcd lease", val, lease2, lease1)
	}
	ttl, err := cli.TimeToLive(testCtx(t, 5*time.Second), lease1)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL != -1 {
		t.Errorf("the previous run's etcd lease %x still exists (TTL %d); want it revoked", lease1, ttl.TTL)
	}
}

func TestReservation(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv, withTTL(2*time.Second))
	setConfig(t, st, net16)
	ctx := testCtx(t, 30*time.Second)
	reserved := netip.MustParsePrefix("10.5.7.0/24")
	ip := netip.MustParseAddr("198.51.100.70")
	if err := st.Reserve(ctx, reserved, ip); err != nil {
		t.Fatalf("Reserve: %v", err)
	}
	if err := st.Reserve(ctx, reserved, ip); err != nil {
		t.Errorf("Reserve again: %v, want nil", err)
	}
	if err := st.Reserve(ctx, reserved, netip.MustParseAddr("198.51.100.71")); !errors.Is(err, ErrConflict) {
		t.Errorf("Reserve for another IP: %v, want ErrConflict", err)
	}
	if err := st.Reserve(ctx, netip.MustParsePrefix("10.5.0.0/24"), ip); err == nil {
		t.Errorf("Reserve outside SubnetMin..Max succeeded")
	}
	key := subnetsPrefix + "10.5.7.0-24"

	h := startHold(t, newStore(t, srv, withTTL(2*time.Second)), subnet.AcquireRequest{Attrs: attrs(ip.String())})
	l := h.next(t, 10*time.Second)
	if l.Subnet != reserved || !l.Reservation || !l.Expires.IsZero() {
		t.Fatalf("Hold got %+v, want reservation %s", l, reserved)
	}
	// Across several keepalive periods the key stays without an etcd lease, with our value.
	for range 5 {
		val, lease, _, ok := rawGet(t, cli, key)
		if !ok || lease != 0 || !strings.Contains(val, `"VNI":1`) {
			t.Fatalf("reservation key: present %v value %s etcd lease %x: want our value with no etcd lease", ok, val, lease)
		}
		time.Sleep(time.Second)
	}
	leases, err := st.Leases(ctx)
	if err != nil || len(leases) != 1 || !leases[0].Reservation || !leases[0].Expires.IsZero() {
		t.Errorf("Leases: %+v, %v: want one reservation without expiry", leases, err)
	}

	// An ordinary lease converted to a reservation while held: the holder notices and keeps it.
	h2 := startHold(t, newStore(t, srv, withTTL(2*time.Second)), subnet.AcquireRequest{Attrs: attrs("198.51.100.72")})
	l2 := h2.next(t, 10*time.Second)
	if l2.Reservation {
		t.Fatalf("second holder got a reservation: %+v", l2)
	}
	if err := st.Unreserve(ctx, l2.Subnet); !errors.Is(err, ErrNotReservation) {
		t.Errorf("Unreserve of an ordinary lease: %v, want ErrNotReservation", err)
	}
	if err := st.Reserve(ctx, l2.Subnet, l2.Attrs.PublicIP); err != nil {
		t.Fatalf("Reserve held lease: %v", err)
	}
	if l := h2.next(t, 5*time.Second); !l.Reservation || l.Subnet != l2.Subnet {
		t.Errorf("after Reserve the holder got %+v, want reservation of %s", l, l2.Subnet)
	}
	time.Sleep(3 * time.Second) // past the TTL
	if _, lease, _, ok := rawGet(t, cli, keyOf(l2)); !ok || lease != 0 {
		t.Errorf("converted reservation: present %v etcd lease %x", ok, lease)
	}

	// Unreserve: the holder takes the same subnet again as an ordinary lease.
	if err := st.Unreserve(ctx, reserved); err != nil {
		t.Fatalf("Unreserve: %v", err)
	}
	if l := h.next(t, 10*time.Second); l.Subnet != reserved || l.Reservation {
		t.Errorf("after Unreserve the holder got %+v, want ordinary lease of %s", l, reserved)
	}
	if err := st.Unreserve(ctx, netip.MustParsePrefix("10.5.8.0/24")); !errors.Is(err, ErrNotFound) {
		t.Errorf("Unreserve of a missing key: %v, want ErrNotFound", err)
	}
}

func TestLeaseTTL(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	setConfig(t, newStore(t, srv), net16)
	const ttl = 2 * time.Second

	t.Run("stopped holder expires", func(t *testing.T) {
		t.Parallel()
		st := newStore(t, srv, withTTL(ttl))
		h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")})
		l := h.next(t, 10*time.Second)
		if err := h.stop(t); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		// The store (and its client) keep running: only this lease's keepalive stopped.
		eventually(t, ttl+4*time.Second, "lease key of a stopped holder expires", func() bool {
			_, _, _, ok := rawGet(t, cli, keyOf(l))
			return !ok
		})
		t.Logf("key expired %s after Hold stopped", time.Since(stopped).Round(100*time.Millisecond))
	})
	t.Run("running holder stays", func(t *testing.T) {
		t.Parallel()
		h := startHold(t, newStore(t, srv, withTTL(ttl)), subnet.AcquireRequest{Attrs: attrs("198.51.100.2")})
		l := h.next(t, 10*time.Second)
		_, lease, _, _ := rawGet(t, cli, keyOf(l))
		for end := time.Now().Add(3 * ttl); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			if _, got, _, ok := rawGet(t, cli, keyOf(l)); !ok || got != lease {
				t.Fatalf("lease key of a running holder: present %v etcd lease %x, want %x", ok, got, lease)
			}
		}
		select {
		case l := <-h.leases:
			t.Errorf("holder re-acquired (%+v) without losing its lease", l)
		default:
		}
	})
	t.Run("deleted key is acquired again", func(t *testing.T) {
		t.Parallel()
		h := startHold(t, newStore(t, srv, withTTL(ttl)), subnet.AcquireRequest{Attrs: attrs("198.51.100.3")})
		l := h.next(t, 10*time.Second)
		if _, err := cli.Delete(testCtx(t, 5*time.Second), keyOf(l)); err != nil {
			t.Fatal(err)
		}
		again := h.next(t, 5*time.Second)
		if again.Subnet != l.Subnet {
			t.Errorf("re-acquired %s, want the same subnet %s", again.Subnet, l.Subnet)
		}
		select {
		case lost := <-h.lost:
			if lost.Subnet != l.Subnet {
				t.Errorf("reported lost %s, want %s", lost.Subnet, l.Subnet)
			}
		default:
			t.Errorf("the loss was not reported to fn before re-acquisition")
		}
		if _, lease, _, ok := rawGet(t, cli, keyOf(again)); !ok || lease == 0 {
			t.Errorf("after re-acquisition: present %v etcd lease %x", ok, lease)
		}
	})
	t.Run("key taken over by another IP", func(t *testing.T) {
		t.Parallel()
		h := startHold(t, newStore(t, srv, withTTL(ttl)), subnet.AcquireRequest{Attrs: attrs("198.51.100.4")})
		l := h.next(t, 10*time.Second)
		rawPut(t, cli, keyOf(l), leaseValue("198.51.100.44"))
		again := h.next(t, 5*time.Second)
		if again.Subnet == l.Subnet {
			t.Errorf("re-acquired %s, which another node took over", again.Subnet)
		}
		if val, _, _, _ := rawGet(t, cli, keyOf(l)); val != leaseValue("198.51.100.44") {
			t.Errorf("the other node's key was overwritten: %s", val)
		}
	})
}

// TestLossReportedDuringOutage checks that Hold reports its lease lost while etcd is still unreachable, also
// when etcd goes away between taking the lease and watching its key. clientv3's Watch waits for etcd to
// confirm a new watch; Hold used to wait with it, blind to its keepalive ending, until etcd came back. If
// etcd came back before the client gave up the keepalive, the lease was never reported lost.
func TestLossReportedDuringOutage(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv, withTTL(2*time.Second))
	setConfig(t, st, net16)
	var once sync.Once
	// Hold's callback runs after the lease is taken and before Hold starts keeping it.
	h := startHoldFn(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")}, func(_ subnet.Lease, held bool) {
		if held {
			once.Do(srv.Stop)
		}
	})
	held := h.next(t, 10*time.Second)
	stopped := time.Now()
	// The client gives up a keepalive 2 s (the TTL) after its last response, or 6 s (its dial timeout + 1 s)
	// after it started if no response came, checking once a second.
	select {
	case l := <-h.lost:
		if l.Subnet != held.Subnet {
			t.Errorf("Hold reported %s lost, want %s", l.Subnet, held.Subnet)
		}
		t.Logf("lease reported lost %s after etcd stopped", time.Since(stopped).Round(time.Millisecond))
	case err := <-h.done:
		t.Fatalf("Hold returned %v during the etcd outage", err)
	case <-time.After(15 * time.Second):
		t.Fatalf("Hold did not report lease %s lost within 15 s of etcd stopping (lease TTL 2 s)", held.Subnet)
	}
}

func TestHoldWaitsForConfig(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")})
	time.Sleep(500 * time.Millisecond)
	setConfig(t, st, net16)
	h.next(t, 10*time.Second)
}

func TestDualStack(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	setConfig(t, st, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}`)
	a := attrs("198.51.100.1")
	a.PublicIPv6 = netip.MustParseAddr("2001:db8::1")
	prev6 := netip.MustParsePrefix("fd00:5:0:7::/64")
	l := startHold(t, st, subnet.AcquireRequest{Attrs: a, Prev: netip.MustParsePrefix("10.5.7.0/24"), PrevIPv6: prev6}).next(t, 10*time.Second)
	if l.Subnet.String() != "10.5.7.0/24" || l.IPv6Subnet != prev6 {
		t.Fatalf("got %s & %s, want the previous subnets", l.Subnet, l.IPv6Subnet)
	}
	if _, _, _, ok := rawGet(t, srv.Client(t), subnetsPrefix+"10.5.7.0-24&fd00:5:0:7::-64"); !ok {
		t.Errorf("no dual-stack key")
	}
	l2 := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.2"), Prev: netip.MustParsePrefix("10.5.7.0/24")}).next(t, 10*time.Second)
	if l2.Subnet == l.Subnet || l2.IPv6Subnet == l.IPv6Subnet || !l2.IPv6Subnet.IsValid() {
		t.Errorf("second node got %s & %s next to %s & %s", l2.Subnet, l2.IPv6Subnet, l.Subnet, l.IPv6Subnet)
	}
}

// TestIPv6Only acquires leases in an IPv6-only network as flanneld keys them ("0.0.0.0-0&<v6>-<len>", PublicIP
// 0.0.0.0), takes the previous IPv6 subnet, finds a node's own lease again by PublicIPv6, gives a second node
// another subnet, and refuses a node without PublicIPv6.
func TestIPv6Only(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	setConfig(t, st, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}`)
	v6attrs := func(ip6 string) subnet.Attrs {
		return subnet.Attrs{PublicIPv6: netip.MustParseAddr(ip6), BackendType: "vxlan", BackendV6Data: []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}`)}
	}
	prev6 := netip.MustParsePrefix("fd00:5:0:7::/64")
	h := startHold(t, st, subnet.AcquireRequest{Attrs: v6attrs("2001:db8::1"), PrevIPv6: prev6})
	l := h.next(t, 10*time.Second)
	if l.Subnet.IsValid() || l.IPv6Subnet != prev6 {
		t.Fatalf("got %s & %s, want no IPv4 subnet and the previous IPv6 subnet %s", l.Subnet, l.IPv6Subnet, prev6)
	}
	key := subnetsPrefix + "0.0.0.0-0&fd00:5:0:7::-64"
	v, _, _, ok := rawGet(t, srv.Client(t), key)
	if want := `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::1","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}`; !ok || v != want {
		t.Errorf("key %s = %q (present %t), want %s", key, v, ok, want)
	}
	l2 := startHold(t, st, subnet.AcquireRequest{Attrs: v6attrs("2001:db8::2"), PrevIPv6: prev6}).next(t, 10*time.Second)
	if l2.Subnet.IsValid() || !l2.IPv6Subnet.IsValid() || l2.IPv6Subnet == l.IPv6Subnet {
		t.Errorf("second node got %s & %s next to %s", l2.Subnet, l2.IPv6Subnet, l.IPv6Subnet)
	}
	// The first node, restarted without its env file, finds its lease by PublicIPv6.
	if err := h.stop(t); err != nil {
		t.Fatal(err)
	}
	if again := startHold(t, st, subnet.AcquireRequest{Attrs: v6attrs("2001:db8::1")}).next(t, 10*time.Second); again.IPv6Subnet != prev6 {
		t.Errorf("restarted node got %s, want its lease %s again", again.IPv6Subnet, prev6)
	}
	ctx := testCtx(t, 10*time.Second)
	err := st.Hold(ctx, subnet.AcquireRequest{Attrs: attrs("198.51.100.3")}, nil)
	if !errors.Is(err, errNoPublicIP) {
		t.Errorf("Hold without PublicIPv6 in an IPv6-only network = %v, want errNoPublicIP", err)
	}
}

// TestReserveIPv6Only: in an IPv6-only network an IPv6 subnet is reserved for a node's PublicIPv6 (key and
// value as flannel writes an IPv6-only lease), the node takes the reservation and it stays one; another
// node's address conflicts, and an IPv6 subnet in a dual-stack network is refused.
func TestReserveIPv6Only(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	ctx := testCtx(t, 30*time.Second)
	setConfig(t, st, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}`)
	p, ip := netip.MustParsePrefix("fd00:5:0:70::/64"), netip.MustParseAddr("2001:db8::70")
	if err := st.Reserve(ctx, p, ip); err != nil {
		t.Fatal(err)
	}
	key := subnetsPrefix + "0.0.0.0-0&fd00:5:0:70::-64"
	if v, lease, _, ok := rawGet(t, srv.Client(t), key); !ok || lease != clientv3.NoLease || v != `{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::70"}` {
		t.Errorf("reservation key %s = %q (lease %x, present %t)", key, v, lease, ok)
	}
	if err := st.Reserve(ctx, p, netip.MustParseAddr("2001:db8::71")); !errors.Is(err, ErrConflict) {
		t.Errorf("reserve for another node = %v, want ErrConflict", err)
	}
	l := startHold(t, st, subnet.AcquireRequest{Attrs: subnet.Attrs{PublicIPv6: ip, BackendType: "vxlan"}}).next(t, 10*time.Second)
	if l.IPv6Subnet != p || !l.Reservation {
		t.Errorf("node took %s (reservation %t), want the reservation %s", l.IPv6Subnet, l.Reservation, p)
	}
	if err := st.Unreserve(ctx, p); err != nil {
		t.Errorf("unreserve by the IPv6 subnet: %v", err)
	}
	setConfig(t, st, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}`)
	if err := st.Reserve(ctx, netip.MustParsePrefix("fd00:5:0:71::/64"), ip); err == nil || !strings.Contains(err.Error(), "reserve the node's IPv4 subnet") {
		t.Errorf("reserve an IPv6 subnet in dual stack = %v, want a pointer to the IPv4 subnet", err)
	}
}

func TestCloseEndsHoldAndWatch(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	st := newStore(t, srv)
	setConfig(t, st, net16)
	h := startHold(t, st, subnet.AcquireRequest{Attrs: attrs("198.51.100.1")})
	l := h.next(t, 10*time.Second)
	w := startWatch(t, st)
	w.waitFor(t, fmt.Sprintf("%s=198.51.100.1", l.Subnet))
	st.Close()
	for name, done := range map[string]chan error{"Hold": h.done, "Watch": w.done} {
		select {
		case err := <-done:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close: %v, want ErrClosed", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s did not return after Close", name)
		}
	}
	close(h.done)
	// The lease is left in place (until its TTL runs out).
	if _, _, _, ok := rawGet(t, srv.Client(t), keyOf(l)); !ok {
		t.Error("Close deleted the lease key")
	}
}

func TestDeleteLease(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	setConfig(t, st, net16)
	ctx := testCtx(t, 20*time.Second)
	h := startHold(t, newStore(t, srv), subnet.AcquireRequest{Attrs: attrs("198.51.100.1")})
	l := h.next(t, 10*time.Second)
	rawPut(t, cli, subnetsPrefix+"10.5.200.0-24", `garbage`)
	if err := st.Reserve(ctx, netip.MustParsePrefix("10.5.201.0/24"), netip.MustParseAddr("198.51.100.2")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.5.200.0/24", "10.5.201.0/24", l.Subnet.String()} {
		if err := st.DeleteLease(ctx, netip.MustParsePrefix(p)); err != nil {
			t.Errorf("DeleteLease(%s): %v", p, err)
		}
	}
	for _, k := range []string{"10.5.200.0-24", "10.5.201.0-24"} {
		if _, _, _, ok := rawGet(t, cli, subnetsPrefix+k); ok {
			t.Errorf("key %s still there after DeleteLease", k)
		}
	}
	if err := st.DeleteLease(ctx, netip.MustParsePrefix("10.5.202.0/24")); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeleteLease of a missing key: %v, want ErrNotFound", err)
	}
	// The running holder takes its subnet again.
	if again := h.next(t, 5*time.Second); again.Subnet != l.Subnet {
		t.Errorf("holder re-acquired %s, want %s", again.Subnet, l.Subnet)
	}
}

func TestLostIPv6Race(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	ctx := testCtx(t, 10*time.Second)
	v6 := netip.MustParsePrefix("fd00:5:0:9::/64")
	older, newer := subnetsPrefix+"10.5.1.0-24&fd00:5:0:9::-64", subnetsPrefix+"10.5.2.0-24&fd00:5:0:9::-64"
	rawPut(t, cli, older, leaseValue("198.51.100.1"))
	rawPut(t, cli, newer, leaseValue("198.51.100.2"))
	_, _, olderRev, _ := rawGet(t, cli, older)
	_, _, newerRev, _ := rawGet(t, cli, newer)

	if lost, err := st.lostIPv6Race(ctx, older, v6, olderRev); err != nil || lost {
		t.Errorf("older key: lost %v, %v; want kept", lost, err)
	}
	if lost, err := st.lostIPv6Race(ctx, newer, v6, newerRev); err != nil || !lost {
		t.Errorf("newer key: lost %v, %v; want given up", lost, err)
	}
	if _, _, _, ok := rawGet(t, cli, newer); ok {
		t.Error("the newer key was not deleted")
	}
	if _, _, _, ok := rawGet(t, cli, older); !ok {
		t.Error("the older key was deleted")
	}
}

// TestTwinsOfOnePublicIP checks node identity beyond the PublicIP: a second node with the same PublicIP (two
// nodes behind one NAT address) never takes over the first's live key, but gets a subnet of its own; the
// node's own previous run (same NodeID) still gets its key back; and a holder notices at once, through the
// watch, when its key is rewritten by another node, and then does not take it back.
func TestTwinsOfOnePublicIP(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	setConfig(t, newStore(t, srv), net16)
	withNode := func(ip, node string) subnet.AcquireRequest {
		a := attrs(ip)
		a.NodeID = node
		return subnet.AcquireRequest{Attrs: a}
	}
	a := startHold(t, newStore(t, srv), withNode("198.51.100.9", "node-a"))
	la := a.next(t, 10*time.Second)
	valA, leaseA, _, _ := rawGet(t, cli, keyOf(la))
	if !strings.Contains(valA, `"WeftNodeID":"node-a"`) {
		t.Errorf("lease value %s lacks the node ID", valA)
	}

	b := startHold(t, newStore(t, srv), withNode("198.51.100.9", "node-b"))
	lb := b.next(t, 10*time.Second)
	if lb.Subnet == la.Subnet {
		t.Fatalf("the twin took node-a's live subnet %s", la.Subnet)
	}
	select {
	case l := <-a.lost:
		t.Fatalf("node-a lost %s to its twin", l.Subnet)
	case <-time.After(time.Second):
	}
	if val, lease, _, _ := rawGet(t, cli, keyOf(la)); val != valA || lease != leaseA {
		t.Errorf("node-a's key changed to %s (etcd lease %x, was %x)", val, lease, leaseA)
	}

	// node-a restarts (its old etcd lease still alive): its own key is reused.
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	a2 := startHold(t, newStore(t, srv), withNode("198.51.100.9", "node-a"))
	if l := a2.next(t, 10*time.Second); l.Subnet != la.Subnet {
		t.Fatalf("node-a after a restart got %s, want its own %s back", l.Subnet, la.Subnet)
	}

	// A third party rewrites node-a's key under its own etcd lease: node-a notices at once.
	g, err := cli.Grant(testCtx(t, 5*time.Second), 60)
	if err != nil {
		t.Fatal(err)
	}
	rawPut(t, cli, keyOf(la), `{"PublicIP":"198.51.100.9","PublicIPv6":null,"BackendType":"vxlan","WeftNodeID":"node-z"}`, clientv3.WithLease(g.ID))
	select {
	case <-a2.lost:
	case <-time.After(3 * time.Second):
		t.Fatal("node-a did not notice within 3 s that another node rewrote its key")
	}
	if l := a2.next(t, 10*time.Second); l.Subnet == la.Subnet || l.Subnet == lb.Subnet {
		t.Errorf("node-a re-acquired %s; want a free subnet, not node-z's %s nor node-b's %s", l.Subnet, la.Subnet, lb.Subnet)
	}
}

// TestPrevSubnetOverlapChecked checks that the subnet of the previous env file is not claimed when a key of
// another length overlaps it (a /25 inside it, or a /23 around it), as a fresh pick would not.
func TestPrevSubnetOverlapChecked(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	setConfig(t, newStore(t, srv), net16)
	rawPut(t, cli, subnetsPrefix+"10.5.31.128-25", leaseValue("198.51.100.60"))
	rawPut(t, cli, subnetsPrefix+"10.5.40.0-23", leaseValue("198.51.100.61"))
	for i, prev := range []string{"10.5.31.0/24", "10.5.41.0/24"} {
		t.Run(prev, func(t *testing.T) {
			req := subnet.AcquireRequest{Attrs: attrs(fmt.Sprintf("198.51.100.%d", 70+i)), Prev: netip.MustParsePrefix(prev)}
			h := startHold(t, newStore(t, srv), req)
			if l := h.next(t, 10*time.Second); l.Subnet.String() == prev || l.Subnet.Overlaps(netip.MustParsePrefix("10.5.31.128/25")) ||
				l.Subnet.Overlaps(netip.MustParsePrefix("10.5.40.0/23")) {
				t.Errorf("got %s, which overlaps an existing key", l.Subnet)
			}
		})
	}
}

// TestHoldRefusesChangedConfig checks that a holder that runs with one network config never acquires a
// lease under another: after the stored config changes and the lease is lost, Hold returns an error
// wrapping subnet.ErrConfigChanged, naming what changed, instead of a subnet of the new network (which the
// agent would pair with the old network in its env file).
func TestHoldRefusesChangedConfig(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	st := newStore(t, srv)
	setConfig(t, st, net16)
	cfg, err := st.Config(testCtx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	h := startHold(t, newStore(t, srv), subnet.AcquireRequest{Attrs: attrs("198.51.100.80"), Config: cfg})
	l := h.next(t, 10*time.Second)
	setConfig(t, st, `{"Network":"10.7.0.0/16","Backend":{"Type":"vxlan"}}`)
	if _, err := cli.Delete(testCtx(t, 5*time.Second), keyOf(l)); err != nil {
		t.Fatal(err)
	}
	select {
	case l2 := <-h.leases:
		t.Fatalf("acquired %s under the changed config", l2.Subnet)
	case err := <-h.done:
		if !errors.Is(err, subnet.ErrConfigChanged) || !strings.Contains(err.Error(), "10.7.0.0/16") {
			t.Errorf("Hold returned %v; want ErrConfigChanged naming the new network", err)
		}
		h.done <- err // for the cleanup's stop
	case <-time.After(15 * time.Second):
		t.Fatal("Hold neither returned nor acquired within 15 s")
	}
}

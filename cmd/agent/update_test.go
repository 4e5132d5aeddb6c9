package main

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// recordingUpdater is a backend.Updater that records its calls; Update answers needSet while set.
type recordingUpdater struct {
	mu      sync.Mutex
	calls   []string // "set N peers" or "update put=[...] deleted=[...]"
	needSet bool
}

func (r *recordingUpdater) Up(context.Context) (backend.Local, error) { return backend.Local{}, nil }
func (r *recordingUpdater) Close() error                              { return nil }
func (r *recordingUpdater) Set(c *backend.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var keys []string
	for _, p := range c.Peers {
		keys = append(keys, p.Key())
	}
	slices.Sort(keys)
	r.calls = append(r.calls, "set "+joinKeys(keys))
	return nil
}
func (r *recordingUpdater) Update(ch *backend.Change) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.needSet {
		r.calls = append(r.calls, "update refused")
		return backend.ErrNeedSet
	}
	var put []string
	for _, p := range ch.Put {
		put = append(put, p.Key())
	}
	slices.Sort(put)
	del := slices.Sorted(slices.Values(ch.Deleted))
	r.calls = append(r.calls, "update put="+joinKeys(put)+" deleted="+joinKeys(del))
	return nil
}

func (r *recordingUpdater) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = nil
	return c
}

func joinKeys(k []string) string { return "[" + strings.Join(k, " ") + "]" }

// TestAgentHandsChangesToUpdater checks which lease changes the agent hands a backend.Updater as changes
// and which as the complete state: a peer joining or leaving is a change; the first state, a new listing,
// the own lease changing, a lease that does not fit the config (overlaps are weighed across all leases)
// and a refused Update take Set.
func TestAgentHandsChangesToUpdater(t *testing.T) {
	a, be, expect := startRecordingAgent(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`)
	lease := func(p string) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(p), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9")}}
	}
	own := lease("10.5.1.0/24")
	a.onLease(own, true)
	a.onChanges(subnet.Changes{Full: true, Put: []subnet.Lease{own, lease("10.5.2.0/24")}})
	expect("first state", "set [10.5.2.0-24]")

	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.3.0/24")}})
	expect("a peer joins", "update put=[10.5.3.0-24] deleted=[]")
	a.onChanges(subnet.Changes{Deleted: []subnet.Lease{lease("10.5.2.0/24")}})
	expect("a peer leaves", "update put=[] deleted=[10.5.2.0-24]")

	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.3.128/25")}})
	expect("a misfit comes: Set, which drops it for overlapping 10.5.3.0/24", "set [10.5.3.0-24]")
	a.onChanges(subnet.Changes{Deleted: []subnet.Lease{lease("10.5.3.128/25")}})
	expect("the misfit goes (a key the backend never had)", "update put=[] deleted=[10.5.3.128-25]")
	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.4.0/24")}})
	expect("misfit gone", "update put=[10.5.4.0-24] deleted=[]")

	be.mu.Lock()
	be.needSet = true
	be.mu.Unlock()
	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.5.0/24")}})
	expect("Update refused", "update refused", "set [10.5.3.0-24 10.5.4.0-24 10.5.5.0-24]")
	be.mu.Lock()
	be.needSet = false
	be.mu.Unlock()

	a.onChanges(subnet.Changes{Full: true, Put: []subnet.Lease{own, lease("10.5.6.0/24")}})
	expect("a new listing", "set [10.5.6.0-24]")
	a.onLease(lease("10.5.7.0/24"), true)
	expect("the own lease changed", "set [10.5.1.0-24 10.5.6.0-24]")
}

// startRecordingAgent runs the reconcile loop of an agent with the network config conf over a
// recordingUpdater until the test ends. expect checks, within 5 s, that the backend's next calls are want.
func startRecordingAgent(t *testing.T, conf string) (a *agent, be *recordingUpdater, expect func(what string, want ...string)) {
	netCfg, err := subnet.ParseConfig([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	be = &recordingUpdater{}
	a = &agent{
		cfg: Config{SubnetFile: filepath.Join(t.TempDir(), "subnet.env"), Reconcile: time.Hour},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), net: netCfg, kick: make(chan struct{}, 1), health: newHealth(), be: be,
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.reconcileLoop(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a, be, func(what string, want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		var got []string
		for {
			got = append(got, be.take()...)
			if slices.Equal(got, want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: backend calls %q, want %q", what, got, want)
		}
	}
}

// TestAgentDuplicateSubnetTakesSet: in dual stack two keys can name one subnet (a hostile write claiming a
// peer's IPv6 subnet under a fresh IPv4 one, say). Such a lease fits the config, yet it is handed to the
// backend only through Set, where DropOverlapping leaves it out, for as long as the duplicate exists.
func TestAgentDuplicateSubnetTakesSet(t *testing.T) {
	a, _, expect := startRecordingAgent(t, `{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/56","Backend":{"Type":"alloc"}}`)
	lease := func(v4, v6 string, created int64) subnet.Lease {
		return subnet.Lease{Subnet: netip.MustParsePrefix(v4), IPv6Subnet: netip.MustParsePrefix(v6), Created: created,
			Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), PublicIPv6: netip.MustParseAddr("2001:db8::9")}}
	}
	own, peer := lease("10.5.1.0/24", "fd00:5:0:1::/64", 1), lease("10.5.2.0/24", "fd00:5:0:2::/64", 2)
	a.onLease(own, true)
	a.onChanges(subnet.Changes{Full: true, Put: []subnet.Lease{own, peer}})
	expect("first state", "set [10.5.2.0-24&fd00:5:0:2::-64]")
	hostile := lease("10.5.9.0/24", "fd00:5:0:2::/64", 3)
	a.onChanges(subnet.Changes{Put: []subnet.Lease{hostile}})
	expect("a lease with the peer's IPv6 subnet: Set, which drops it", "set [10.5.2.0-24&fd00:5:0:2::-64]")
	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.3.0/24", "fd00:5:0:3::/64", 4)}})
	expect("a peer joins while the duplicate exists: Set", "set [10.5.2.0-24&fd00:5:0:2::-64 10.5.3.0-24&fd00:5:0:3::-64]")
	a.onChanges(subnet.Changes{Deleted: []subnet.Lease{hostile}})
	expect("the duplicate goes", "update put=[] deleted=[10.5.9.0-24&fd00:5:0:2::-64]")
	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.4.0/24", "fd00:5:0:4::/64", 5)}})
	expect("duplicate gone", "update put=[10.5.4.0-24&fd00:5:0:4::-64] deleted=[]")
	a.onChanges(subnet.Changes{Put: []subnet.Lease{lease("10.5.5.0/24", "fd00:5:0:1::/64", 6)}})
	expect("a lease with this node's IPv6 subnet: Set, without it",
		"set [10.5.2.0-24&fd00:5:0:2::-64 10.5.3.0-24&fd00:5:0:3::-64 10.5.4.0-24&fd00:5:0:4::-64]")
}

// following is a backend that follows kernel events (backend.Follower), or not.
type following struct {
	fakeBackend
	on bool
}

func (f following) Following() bool { return f.on }

// TestResyncDue: a reconcile tick compares with the kernel's tables every time, unless the backend repairs
// drift from kernel events; then every followedResyncs-th tick.
func TestResyncDue(t *testing.T) {
	const r = 30 * time.Second
	for _, tt := range []struct {
		name  string
		be    backend.Backend
		since time.Duration
		want  bool
	}{
		{"no follower, one interval", fakeBackend{}, r, true},
		{"follower, one interval", following{on: true}, r, false},
		{"follower, nine intervals", following{on: true}, 9 * r, false},
		{"follower, ten intervals", following{on: true}, 10 * r, true},
		{"follower, ten intervals less jitter", following{on: true}, 10*r - time.Second, true},
		{"follower not following", following{on: false}, r, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &agent{be: tt.be, cfg: Config{Reconcile: r}}
			if got := a.resyncDue(time.Now().Add(-tt.since)); got != tt.want {
				t.Errorf("resyncDue after %s = %v, want %v", tt.since, got, tt.want)
			}
		})
	}
}

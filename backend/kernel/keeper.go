package kernel

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// repairDelay gathers a burst of events (a flushed table, a deleted device) into one repair.
const repairDelay = 50 * time.Millisecond

var (
	// ErrNotUp is wrapped by Keeper.Do's error before Up.
	ErrNotUp = errors.New("not up")
	// ErrClosed is wrapped by Keeper.Do's and Keeper.Up's errors after Close.
	ErrClosed = errors.New("closed")
)

// Keeper is the lifecycle the kernel backends (vxlan, host-gw) share: a handle opened by Up and closed by
// Close, one lock over the handle and the backend's own state (Do), and the following of the kernel's events
// on that state: when something the backend installed is deleted behind its back (a route, a neighbour or
// FDB entry, its device deleted or set down), the Keeper calls the backend's repair at once, instead of
// waiting for the next periodic comparison with the kernel. Deletions the backend makes itself, through the
// handle, are told apart and ignored.
//
// A Keeper is safe for concurrent use. Its zero value is not usable: use NewKeeper.
type Keeper struct {
	name   string // prefixes errors: "vxlan backend"
	log    *slog.Logger
	repair func(h *Handle) error
	wants  func(e Event) bool

	mu      sync.Mutex // guards the fields below, and the backend's state (see Do)
	h       *Handle    // set by Up; nil after Close
	closed  bool
	owns    func(Route) bool // routes of ours whose deletion is drift; nil: none
	links   []int            // links whose neighbours, FDB entries and state are the backend's
	expect  map[eventKey]int // deletions the backend made itself, not announced yet
	drift   []Event          // drift seen since the last repair (the first few)
	timer   *time.Timer      // pending repair; nil: none
	follows bool             // events are followed
	events  *eventSocket     // nil: not followed
	wg      sync.WaitGroup   // the event reader and a pending repair

	repairs atomic.Uint64 // repairs after drift, successful or not
}

// Repairs counts the repairs made after drift since NewKeeper.
func (k *Keeper) Repairs() uint64 { return k.repairs.Load() }

// NewKeeper returns a Keeper for the backend called name. repair makes the kernel match the state the backend
// installed last, reading the kernel's tables (what Set with Resync does with the same state); it is called with the Keeper's lock held, after drift, and may do nothing when the
// backend has no state yet (its next Set compares with the kernel then). wants says whether an entry gone
// (RouteGone, NeighGone, FDBGone) is one the backend installed, as opposed to one of the kernel's own that
// it removed (an expired neighbour entry on the backend's device, say); it is called with the lock held,
// only when a repair is due, so it may scan the backend's state.
func NewKeeper(name string, log *slog.Logger, repair func(h *Handle) error, wants func(e Event) bool) *Keeper {
	return &Keeper{name: name, log: log, repair: repair, wants: wants, expect: map[eventKey]int{}}
}

// Up opens the handle (NewForwardingHandle for link) and starts following the kernel's events in the calling
// thread's network namespace, unless done before, then calls f with the handle under the lock. When events
// cannot be followed, the Keeper logs why and Following is false.
func (k *Keeper) Up(link int, f func(h *Handle) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return fmt.Errorf("%s: %w", k.name, ErrClosed)
	}
	if k.h == nil {
		h, err := NewForwardingHandle(link)
		if err != nil {
			return err
		}
		k.h = h
		h.setGone(k.gone)
		if ev, err := openEvents(); err != nil {
			k.log.Warn("cannot follow kernel events; drift is repaired by the periodic comparison only", "err", err)
		} else {
			k.events, k.follows = ev, true
			k.wg.Go(func() { ev.read(k.onEvent) })
		}
	}
	return f(k.h)
}

// Do calls f with the handle under the lock, unless the Keeper is not up or closed (an error wrapping
// ErrNotUp or ErrClosed). The backend keeps its own state in fields that only f touches.
func (k *Keeper) Do(f func(h *Handle) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case k.closed:
		return fmt.Errorf("%s: %w", k.name, ErrClosed)
	case k.h == nil:
		return fmt.Errorf("%s: %w", k.name, ErrNotUp)
	}
	return f(k.h)
}

// Scope says, from within Do or Up, what the backend owns: the routes of ours whose deletion is drift, and
// the links whose neighbour and FDB entries, and state, are its own.
func (k *Keeper) Scope(owns func(Route) bool, links ...int) {
	k.owns, k.links = owns, links
}

// Following reports whether the Keeper follows the kernel's events (backend.Follower): false before Up, after
// Close, and when the subscription failed.
func (k *Keeper) Following() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.follows && !k.closed
}

// Close stops following events, waits for the reader and a repair under way, and closes the handle. It is
// idempotent.
func (k *Keeper) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	if k.timer != nil && k.timer.Stop() {
		k.wg.Done() // the repair that will not run
	}
	ev := k.events
	k.mu.Unlock()
	if ev != nil {
		ev.close()
	}
	k.wg.Wait()
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.h != nil {
		k.h.Close()
		k.h = nil
	}
	return nil
}

// gone is the handle's report of a deletion it makes (expect) or found already done (!expect). The caller
// (a backend inside Do or Up) holds the lock.
func (k *Keeper) gone(e Event, expect bool) {
	key := e.key()
	if expect {
		k.expect[key]++
		return
	}
	if k.expect[key]--; k.expect[key] <= 0 {
		delete(k.expect, key)
	}
}

// onEvent weighs one event from the reader.
func (k *Keeper) onEvent(e Event) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return
	}
	switch e.Kind {
	case Missed:
		clear(k.expect) // their events may be among those lost; a stale one would hide a real deletion
	case RouteGone:
		if k.owns == nil || !k.owns(e.Route) {
			return
		}
	case NexthopGone:
		if k.h == nil || !k.h.ownsNexthop(e.ID) {
			return
		}
	default:
		if !slices.Contains(k.links, e.Link) {
			return
		}
	}
	if e.Kind != Missed && e.Kind != LinkDown {
		key := e.key()
		if n := k.expect[key]; n > 0 {
			if n == 1 {
				delete(k.expect, key)
			} else {
				k.expect[key] = n - 1
			}
			return
		}
	}
	if len(k.drift) < 16 {
		k.drift = append(k.drift, e)
	} else {
		k.drift[len(k.drift)-1] = Event{Kind: Missed} // too many to weigh one by one: repair
	}
	if k.timer == nil {
		k.wg.Add(1) // before Close's Wait: Close sets closed under the lock first
		k.timer = time.AfterFunc(repairDelay, func() {
			defer k.wg.Done()
			k.repairNow()
		})
	}
}

// linkEventsOnly reports whether drift holds only LinkDown events of links that are up now.
func (k *Keeper) linkEventsOnly(drift []Event) bool {
	for _, e := range drift {
		if e.Kind != LinkDown || !k.h.linkUp(e.Link) {
			return false
		}
	}
	return len(drift) > 0
}

// repairNow runs the backend's repair after drift.
func (k *Keeper) repairNow() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.timer = nil
	if k.closed || k.h == nil {
		return
	}
	drift := k.drift
	k.drift = nil
	if k.linkEventsOnly(drift) {
		return // a link of ours seen down that is up again: created down and then set up (by us)
	}
	drift = slices.DeleteFunc(drift, func(e Event) bool {
		switch e.Kind {
		case RouteGone, NeighGone, FDBGone:
			return !k.wants(e)
		}
		return false
	})
	if len(drift) == 0 {
		return
	}
	what := make([]string, len(drift))
	for i, e := range drift {
		what[i] = e.String()
	}
	k.repairs.Add(1)
	if err := k.repair(k.h); err != nil {
		k.log.Error("kernel state changed behind weftd's back; repair failed (the next reconcile retries)", "changes", what, "err", err)
		return
	}
	k.log.Warn("kernel state changed behind weftd's back; repaired", "changes", what)
}

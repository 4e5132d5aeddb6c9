package kernel

import (
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// LinkState is what a backend checks of a device it owns.
type LinkState struct {
	Index int
	Up    bool // administratively up (IFF_UP)
	MTU   int
}

// LinkStateByName reads the named link; a missing link is an error wrapping ErrNoLink.
func (h *Handle) LinkStateByName(name string) (LinkState, error) {
	l, err := h.linkByName(name)
	if err != nil {
		return LinkState{}, err
	}
	a := l.Attrs()
	return LinkState{Index: a.Index, Up: a.Flags&net.FlagUp != 0, MTU: a.MTU}, nil
}

// Namespace is a handle on a network namespace, so work that must create devices there (a TUN is created in
// the namespace of the thread that opens it) can run later from any goroutine.
type Namespace struct{ h netns.NsHandle }

// CurrentNamespace returns the calling thread's network namespace. Close it when done.
func CurrentNamespace() (*Namespace, error) {
	h, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("get current network namespace: %w", err)
	}
	return &Namespace{h: h}, nil
}

// Do runs f on a locked OS thread inside the namespace and returns f's error. The thread is thrown away
// afterwards (never handed back to the Go scheduler in a foreign namespace).
func (n *Namespace) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: a thread that may have changed namespace exits with its goroutine.
		if err := netns.Set(n.h); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// Close releases the handle.
func (n *Namespace) Close() error { return n.h.Close() }

package etcdtest

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
)

// Cluster is a multi-member etcd running in the test process, each member on its own loopback ports with
// its data in the test's temporary directory. Its methods may be called from the test's goroutine only.
type Cluster struct {
	tb      testing.TB
	members []Options

	// streams[i] ends member i's open streams when it stops (see streamKiller).
	streams []streamKiller

	mu sync.Mutex // guards es
	es []*embed.Etcd
}

// StartCluster starts an n-member cluster, waits until every member serves clients, and registers
// t.Cleanup to stop it.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	reserved, err := reservePorts(2 * n) // held until the test ends, as for Start (ports_linux.go)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reserved.release)
	ports := reserved.nums
	dir := t.TempDir()
	c := &Cluster{tb: t, es: make([]*embed.Etcd, n), streams: make([]streamKiller, n)}
	var initial []string
	for i := range n {
		o := Options{
			Name:          fmt.Sprintf("m%d", i),
			Dir:           filepath.Join(dir, fmt.Sprintf("m%d", i)),
			ClientAddr:    fmt.Sprintf("127.0.0.1:%d", ports[2*i]),
			PeerAddr:      fmt.Sprintf("127.0.0.1:%d", ports[2*i+1]),
			LogFile:       filepath.Join(dir, fmt.Sprintf("m%d.log", i)),
			LogLevel:      "warn",
			UnsafeNoFsync: true,
			Fast:          true,
			reusePort:     reserved.shared,
		}
		initial = append(initial, fmt.Sprintf("%s=http://%s", o.Name, o.PeerAddr))
		c.members = append(c.members, o)
	}
	for i := range c.members {
		c.members[i].InitialCluster = strings.Join(initial, ",")
	}
	t.Cleanup(func() { c.Stop(allIndexes(n)...) })
	if err := c.start(allIndexes(n)...); err != nil {
		t.Fatal(err)
	}
	return c
}

func allIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// start starts the members at once (a new cluster's members wait for each other).
func (c *Cluster) start(idx ...int) error {
	errs := make([]error, len(idx))
	var wg sync.WaitGroup
	for k, i := range idx {
		wg.Go(func() {
			c.streams[i].start()
			e, err := startEmbed(c.members[i], c.streams[i].serverOption())
			if err != nil {
				errs[k] = fmt.Errorf("member %s: %w", c.members[i].Name, err)
				return
			}
			c.mu.Lock()
			c.es[i] = e
			c.mu.Unlock()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Endpoint returns member i's client URL.
func (c *Cluster) Endpoint(i int) string { return c.members[i].ClientURL() }

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var out []string
	for i := range c.members {
		out = append(out, c.Endpoint(i))
	}
	return out
}

// Stop stops the members idx, all at once, keeping their data and ports for Restart. Open watch and
// keepalive streams end at once with codes.Unavailable, as if the members had crashed. Stopping a stopped
// member does nothing.
func (c *Cluster) Stop(idx ...int) {
	var wg sync.WaitGroup
	for _, i := range idx {
		c.mu.Lock()
		e := c.es[i]
		c.es[i] = nil
		c.mu.Unlock()
		if e != nil {
			c.streams[i].stop()
			wg.Go(e.Close)
		}
	}
	wg.Wait()
}

// Restart starts the stopped members idx again, together (a member without quorum is not ready alone).
func (c *Cluster) Restart(idx ...int) {
	c.tb.Helper()
	if err := c.start(idx...); err != nil {
		c.tb.Fatalf("restart etcd members %v: %v", idx, err)
	}
}

package etcdtest

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestStoppedServerKeepsPorts checks that a stopped server's ports stay its own: a program binding one (as one
// listening on port 0 could have been given it, before ports were reserved) fails, and one kept across
// Restart would make Restart fail. While stopped, the ports refuse connections, so clients retry at once.
func TestStoppedServerKeepsPorts(t *testing.T) {
	s := Start(t)
	cli := s.Client(t)
	s.Stop()
	for _, addr := range []string{s.opts.ClientAddr, s.opts.PeerAddr} {
		if l, err := net.Listen("tcp", addr); err == nil {
			t.Errorf("listen on %s of the stopped server succeeded, want the port still reserved", addr)
			defer l.Close() // held across Restart, as another program would hold it
		} else if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("listen on %s of the stopped server: %v, want EADDRINUSE", addr, err)
		}
		if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Errorf("connect to %s of the stopped server succeeded", addr)
		} else if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect to %s of the stopped server: %v, want ECONNREFUSED", addr, err)
		}
	}
	s.Restart()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("put after restart: %v", err)
	}
}

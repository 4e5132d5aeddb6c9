// Package kerneltest provides the network-namespace primitives of Weft's kernel and end-to-end tests:
// a root gate, throwaway named namespaces that are deleted on cleanup (also after a failure), running code
// or commands inside them, veth/bridge plumbing, and Topology, the backends' test cluster (an underlay
// switch and nodes with containers) with golden-text helpers for iproute2 output. It never changes the
// host's own namespace: every link is created inside a test namespace.
//
// The CI and developer kernels have no dummy or macvlan modules: use a bridge where a stand-alone link is
// needed. veth, bridge, vxlan and tun are available.
package kerneltest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// E2E reports whether WEFT_E2E=1 is set: then a missing prerequisite fails a test instead of skipping it.
func E2E() bool { return os.Getenv("WEFT_E2E") == "1" }

// RequireRoot skips the test unless it runs as root with iproute2 available; with WEFT_E2E=1 it fails instead.
func RequireRoot(t testing.TB) {
	t.Helper()
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		missing = "the ip command (iproute2)"
	}
	if missing == "" {
		return
	}
	if E2E() {
		t.Fatalf("WEFT_E2E=1 but this test needs %s", missing)
	}
	t.Skipf("needs %s (set WEFT_E2E=1 to make this a failure)", missing)
}

// RequireCommand skips (or with WEFT_E2E=1 fails) unless every named command is on PATH.
func RequireCommand(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if E2E() {
				t.Fatalf("WEFT_E2E=1 but command %q is not installed", n)
			}
			t.Skipf("needs command %q", n)
		}
	}
}

// Prefix returns a short random name prefix for one test's namespaces, so runs never collide.
func Prefix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "wt" + hex.EncodeToString(b)
}

// NS is a named network namespace (visible to `ip netns`) owned by a test.
type NS struct {
	Name string
}

// NewNS creates the named namespace and deletes it in t.Cleanup. Loopback is brought up.
func NewNS(t testing.TB, name string) *NS {
	t.Helper()
	ns, err := CreateNS(name)
	if ns != nil {
		t.Cleanup(func() { ns.Delete() })
	}
	if err != nil {
		t.Fatal(err)
	}
	return ns
}

// CreateNS creates the named namespace with loopback up, for callers that are not tests (the caller deletes
// it with Delete). If the namespace was created but bringing loopback up failed, it returns the namespace
// together with the error, so the caller can delete it.
func CreateNS(name string) (*NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	ns := &NS{Name: name}
	if _, err := ns.IP("link", "set", "lo", "up"); err != nil {
		return ns, err
	}
	return ns, nil
}

// ListNS returns the names of the named namespaces (as `ip netns list` shows them) that start with prefix.
func ListNS(prefix string) ([]string, error) {
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ip netns list: %w: %s", err, bytes.TrimSpace(out))
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // "name (id: 3)" or "name"
		if len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names, nil
}

// Delete removes the namespace (its links go with it). Deleting a missing namespace is not an error.
func (ns *NS) Delete() error {
	out, err := exec.Command("ip", "netns", "delete", ns.Name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "No such file") {
		return fmt.Errorf("ip netns delete %s: %w: %s", ns.Name, err, out)
	}
	return nil
}

// Do runs fn on a dedicated OS thread that has entered the namespace. The thread is never handed back to
// the Go scheduler (its goroutine exits while still locked, so the runtime discards it), so no other code
// ever runs in the wrong namespace. Sockets, netlink handles and TUN devices opened by fn stay bound to ns.
func (ns *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: the thread dies with this goroutine.
		h, err := netns.GetFromName(ns.Name)
		if err != nil {
			errc <- fmt.Errorf("open netns %s: %w", ns.Name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Exec runs argv inside the namespace (ip netns exec) and returns its combined output.
func (ns *NS) Exec(argv ...string) (string, error) {
	cmd := ns.Command(argv...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	if err != nil {
		return b.String(), fmt.Errorf("in netns %s: %s: %w: %s", ns.Name, strings.Join(argv, " "), err, b.String())
	}
	return b.String(), nil
}

// Command returns an unstarted command that runs argv inside the namespace.
func (ns *NS) Command(argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
}

// MustExec is Exec that fails the test on error.
func (ns *NS) MustExec(t testing.TB, argv ...string) string {
	t.Helper()
	out, err := ns.Exec(argv...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// IP runs `ip -n <ns> args...`.
func (ns *NS) IP(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip -n %s %s: %w: %s", ns.Name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// MustIP is IP that fails the test on error.
func (ns *NS) MustIP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := ns.IP(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Veth creates a veth pair with end aName in a and end bName in b, both up. addrA/addrB (CIDR, may be "")
// are assigned to the ends.
func Veth(t testing.TB, a *NS, aName, addrA string, b *NS, bName, addrB string) {
	t.Helper()
	if err := CreateVeth(a, aName, addrA, b, bName, addrB); err != nil {
		t.Fatal(err)
	}
}

// CreateVeth is Veth for callers that are not tests. The pair is created inside a (never in the caller's
// namespace) with its peer moved to b at creation.
func CreateVeth(a *NS, aName, addrA string, b *NS, bName, addrB string) error {
	if _, err := a.IP("link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name); err != nil {
		return err
	}
	for _, e := range []struct {
		ns         *NS
		name, addr string
	}{{a, aName, addrA}, {b, bName, addrB}} {
		if e.addr != "" {
			if _, err := e.ns.IP("addr", "add", e.addr, "dev", e.name); err != nil {
				return err
			}
		}
		if _, err := e.ns.IP("link", "set", e.name, "up"); err != nil {
			return err
		}
	}
	return nil
}

// Bridge creates an up bridge named name in ns.
func Bridge(t testing.TB, ns *NS, name string) {
	t.Helper()
	if err := CreateBridge(ns, name); err != nil {
		t.Fatal(err)
	}
}

// CreateBridge is Bridge for callers that are not tests.
func CreateBridge(ns *NS, name string) error {
	if _, err := ns.IP("link", "add", name, "type", "bridge"); err != nil {
		return err
	}
	_, err := ns.IP("link", "set", name, "up")
	return err
}

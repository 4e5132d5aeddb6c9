package kubetest

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

var (
	clusterBinOnce sync.Once
	clusterBin     string
	clusterBinErr  error
)

// Env is a kube-apiserver with its own etcd in a fresh namespace, for tests of the kube store: both listen
// on 127.0.0.1 inside it.
type Env struct {
	*Server
	t      testing.TB
	api    *Process
	apiLog string
}

// NewEnv starts etcd and kube-apiserver in a new namespace and removes everything in t.Cleanup (the
// processes by PID, then the namespace). Call Require first.
func NewEnv(t testing.TB) *Env {
	t.Helper()
	clusterBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "weft-kubetest")
		if err != nil {
			clusterBinErr = err
			return
		}
		clusterBin, clusterBinErr = buildClusterBin(dir)
	})
	if clusterBinErr != nil {
		t.Fatal(clusterBinErr)
	}
	ns := kerneltest.NewNS(t, kerneltest.Prefix()+"-kube")
	dir := t.TempDir()
	startProcess(t, ns, "etcd", filepath.Join(dir, "etcd.log"),
		clusterBin, "etcd", "--listen", "127.0.0.1:2379", "--data-dir", filepath.Join(dir, "etcd"), "--fast", "--unsafe-no-fsync")
	s, err := NewServer(filepath.Join(dir, "apiserver"), ns, netip.MustParseAddrPort("127.0.0.1:6443"), "http://127.0.0.1:2379")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{Server: s, t: t, apiLog: filepath.Join(dir, "kube-apiserver.log")}
	e.startAPIServer()
	return e
}

func (e *Env) startAPIServer() {
	e.t.Helper()
	e.api = startProcess(e.t, e.NS, "kube-apiserver", e.apiLog, e.Argv()...)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := e.WaitReady(ctx, e.api.done); err != nil {
		e.t.Fatalf("%v\n%s", err, tailFile(e.apiLog, 30))
	}
}

// StopAPIServer stops kube-apiserver (etcd keeps running).
func (e *Env) StopAPIServer() {
	e.t.Helper()
	if err := e.api.Stop(); err != nil {
		e.t.Log(err)
	}
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the same address and data, and waits
// until it is ready.
func (e *Env) StartAPIServer() {
	e.t.Helper()
	e.startAPIServer()
}

// Process is a child process started in a namespace.
type Process struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited and been waited for
}

// startProcess starts argv in ns with output to logPath; t.Cleanup stops it (SIGTERM, then SIGKILL after
// 10 s) and waits for it. Cleanups run last-registered first, so the apiserver stops before its etcd. The
// kernel kills it if the test process dies (PR_SET_PDEATHSIG on a thread locked for its life).
func startProcess(t testing.TB, ns *kerneltest.NS, name, logPath string, argv ...string) *Process {
	t.Helper()
	p, err := StartProcess(ns, name, logPath, argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// kube-apiserver's graceful shutdown can outlast the grace period while clients it served still
		// hold connections; it is then killed, which loses nothing (its state is in etcd).
		if err := p.Stop(); err != nil {
			t.Logf("stop %s: %v", name, err)
		}
	})
	return p
}

// StartProcess starts argv inside ns (ip netns exec, which execs in place: the PID is the program's) with
// stdout and stderr appended to logPath. The caller stops it with Stop.
func StartProcess(ns *kerneltest.NS, name, logPath string, argv ...string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, done: make(chan struct{})}
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // Pdeathsig is tied to the forking thread
		defer runtime.UnlockOSThread()
		err := p.cmd.Start()
		started <- err
		if err == nil {
			p.cmd.Wait()
			close(p.done)
		}
		logf.Close()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to 10 s, then SIGKILLs; it returns once the process is gone. Stopping a
// process that already exited is not an error.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for 10s; killed", p.Name, p.cmd.Process.Pid)
}

// tailFile returns the last n lines of a file.
func tailFile(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package netcluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// proc is a child process the cluster started (weftd or etcd), always run through `ip netns exec`, which
// execs the program in place: the PID is the program's own.
type proc struct {
	name  string
	argv  []string
	cmd   *exec.Cmd
	start uint64        // start time from /proc/PID/stat, to recognise the process later (weft-cluster down)
	done  chan struct{} // closed once the process has exited and been waited for
	err   error         // Wait's result; valid after done
}

// startProc starts argv with stdout and stderr appended to logPath. The process gets its own process group,
// so a terminal's Ctrl-C reaches only the harness, which then tears down in order. Unless detach is set, the
// process is SIGKILLed by the kernel if the harness dies (PR_SET_PDEATHSIG); the signal is tied to the thread
// that forked, so that thread is locked for the process's whole life.
func startProc(name string, argv []string, logPath string, detach bool) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	fmt.Fprintf(logf, "=== netcluster %s: start %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	p := &proc{name: name, argv: argv, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !detach {
		p.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	started := make(chan error, 1)
	go func() {
		if !detach {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
		}
		err := p.cmd.Start()
		started <- err
		if err != nil {
			logf.Close()
			return
		}
		p.err = p.cmd.Wait()
		fmt.Fprintf(logf, "=== netcluster %s: %s exited: %v\n", time.Now().Format(time.RFC3339Nano), name, exitText(p.err))
		logf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.start, _ = procStartTime(p.cmd.Process.Pid)
	return p, nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// running reports whether the process has not exited yet.
func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends sig and waits up to grace for the exit; then it SIGKILLs and waits. It returns the process's
// exit error only when the process was still running and did not exit from sig within grace.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) error {
	if !p.running() {
		return nil
	}
	// Signal the PID we started, never a group or a name; Process.Signal refuses once Wait has reaped it.
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s (pid %d): %w", p.name, p.pid(), err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	if sig == syscall.SIGKILL {
		return nil
	}
	return fmt.Errorf("%s (pid %d) did not exit within %s of %s; killed", p.name, p.pid(), grace, sig)
}

// statFields returns the fields of /proc/PID/stat after the command name (field 3, the state, first).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may contain spaces; the fields after it follow the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	return f, nil
}

// procStat returns the state (field 3) and start time (field 22, clock ticks since boot) of /proc/PID/stat.
func procStat(pid int) (state string, start uint64, err error) {
	f, err := statFields(pid)
	if err != nil {
		return "", 0, err
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return f[0], start, err
}

// procParent returns the parent PID (field 4) of /proc/PID/stat.
func procParent(pid int) (int, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(f[1])
}

// procStartTime returns the process's start time, which tells it from a later process with a reused PID.
func procStartTime(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// procAlive reports whether pid is a live (not zombie) process whose start time is start.
func procAlive(pid int, start uint64) bool {
	state, st, err := procStat(pid)
	return err == nil && state != "Z" && state != "X" && st == start
}

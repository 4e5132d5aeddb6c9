//go:build unix

package subnet

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked is wrapped by LockEnvFile's error when another process holds the lock.
var ErrLocked = errors.New("locked by another weftd")

// LockEnvFile takes an exclusive lock for the env file at path, so that one weftd at a time writes it (and
// holds the lease it names): an flock on "<path>.lock", which records the holder's PID. The kernel drops the
// lock when the process exits, however it exits. If another process holds it, the error wraps ErrLocked
// and names the file and the holder's PID. unlock releases the lock (the lock file stays).
func LockEnvFile(path string) (unlock func(), err error) {
	lockPath := path + ".lock"
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return nil, fmt.Errorf("lock env file %s: %w", path, err)
	}
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock env file %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := "unknown pid"
		if b, rerr := os.ReadFile(lockPath); rerr == nil && strings.TrimSpace(string(b)) != "" {
			holder = "pid " + strings.TrimSpace(string(b))
		}
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("env file %s: another weftd (%s) uses it (lock %s): %w", path, holder, lockPath, ErrLocked)
		}
		return nil, fmt.Errorf("lock env file %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

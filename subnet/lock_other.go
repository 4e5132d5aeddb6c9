//go:build !unix

package subnet

import (
	"errors"
	"fmt"
)

// ErrLocked is wrapped by LockEnvFile's error when another process holds the lock.
var ErrLocked = errors.New("locked by another weftd")

// LockEnvFile is not supported on this system.
func LockEnvFile(path string) (unlock func(), err error) {
	return nil, fmt.Errorf("lock env file %s: %w", path, errors.ErrUnsupported)
}

//go:build !linux

package probe

import (
	"errors"
	"fmt"
)

// Listen is not supported off Linux.
func Listen() (Conn, error) {
	return nil, fmt.Errorf("open raw ICMP socket for probes: %w", errors.ErrUnsupported)
}

//go:build !linux

package kernel

import "errors"

// Handle is unavailable off Linux.
type Handle struct{}

// NewHandle returns errors.ErrUnsupported off Linux.
func NewHandle() (*Handle, error) { return nil, errors.ErrUnsupported }

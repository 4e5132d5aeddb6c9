//go:build !linux

package kernel

import "errors"

// Handle is unavailable off Linux.
type Handle struct{}

// NewHandle returns errors.ErrUnsupported off Linux.
func NewHandle() (*Handle, error) { return nil, errors.ErrUnsupported }

// NewForwardingHandle returns errors.ErrUnsupported off Linux.
func NewForwardingHandle(link int) (*Handle, error) { return nil, errors.ErrUnsupported }

// Close does nothing off Linux.
func (h *Handle) Close() {}

// Namespace is unavailable off Linux.
type Namespace struct{}

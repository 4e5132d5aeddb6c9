//go:build !linux

package kernel

import "errors"

// IPTables is unavailable off Linux.
type IPTables struct{}

// NewIPTables returns errors.ErrUnsupported off Linux.
func NewIPTables(v6 bool) (*IPTables, error) { return nil, errors.ErrUnsupported }

// HasRandomFully reports false off Linux.
func (t *IPTables) HasRandomFully() bool { return false }

// SyncChain returns errors.ErrUnsupported off Linux.
func (t *IPTables) SyncChain(c Chain) (bool, error) { return false, errors.ErrUnsupported }

// Generation returns errors.ErrUnsupported off Linux.
func (t *IPTables) Generation() (uint64, error) { return 0, errors.ErrUnsupported }

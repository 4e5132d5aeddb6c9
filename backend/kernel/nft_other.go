//go:build !linux

package kernel

import "errors"

// NFTables is unavailable off Linux.
type NFTables struct{}

// NewNFTables returns errors.ErrUnsupported off Linux.
func NewNFTables(v6 bool) (*NFTables, error) { return nil, errors.ErrUnsupported }

// HasFullyRandom reports false off Linux.
func (t *NFTables) HasFullyRandom() bool { return false }

// SyncChain returns errors.ErrUnsupported off Linux.
func (t *NFTables) SyncChain(c NFTChain) (bool, error) { return false, errors.ErrUnsupported }

// Generation returns errors.ErrUnsupported off Linux.
func (t *NFTables) Generation() (uint64, error) { return 0, errors.ErrUnsupported }

//go:build !linux

package udp

import (
	"context"
	"errors"

	"github.com/weft-net/weft/backend"
)

// Up returns errors.ErrUnsupported off Linux.
func (b *Backend) Up(context.Context) (backend.Local, error) {
	return backend.Local{}, errors.ErrUnsupported
}

// Set returns errors.ErrUnsupported off Linux.
func (b *Backend) Set(*backend.Config) error { return errors.ErrUnsupported }

// Close is a no-op off Linux.
func (b *Backend) Close() error { return nil }

// datapath is the Linux data path; there is none elsewhere.
type datapath struct{}

func (b *Backend) socketDrops() uint64 { return 0 }

// Healthy reports no data path off Linux.
func (b *Backend) Healthy() error { return errors.ErrUnsupported }

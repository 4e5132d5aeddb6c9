//go:build !linux

package hostgw

import (
	"errors"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/kernel"
)

func up(backend.External) (*kernel.Handle, error) { return nil, errors.ErrUnsupported }

func apply(*kernel.Handle, []kernel.Route) error { return errors.ErrUnsupported }

func closeHandle(*kernel.Handle) {}

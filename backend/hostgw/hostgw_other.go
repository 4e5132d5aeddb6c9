//go:build !linux

package hostgw

import (
	"errors"

	"github.com/weft-net/weft/backend/kernel"
)

func apply(*kernel.Handle, []kernel.Route, func(kernel.Route) bool) error {
	return errors.ErrUnsupported
}

func update(*kernel.Handle, []kernel.Route, []kernel.Route) error { return errors.ErrUnsupported }

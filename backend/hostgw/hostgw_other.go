//go:build !linux

package hostgw

import (
	"errors"

	"github.com/weft-net/weft/backend/kernel"
)

func apply(*kernel.Handle, []kernel.Route) error { return errors.ErrUnsupported }

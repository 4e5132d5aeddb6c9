//go:build !linux

package backend

import "errors"

// SelectExternal is unsupported off Linux.
func SelectExternal(s IfaceSelector) (External, error) { return External{}, errors.ErrUnsupported }

// Package alloc is the "alloc" backend: the node holds a subnet lease and gets an env file, and nothing in
// the kernel is touched (routing between nodes is done by something else, such as a cloud route table).
package alloc

import (
	"context"

	"github.com/weft-net/weft/backend"
)

// New returns the alloc backend. Its MTU is the external interface's.
func New(d backend.Deps) (backend.Backend, error) { return &alloc{mtu: d.External.MTU}, nil }

type alloc struct{ mtu int }

func (a *alloc) Up(context.Context) (backend.Local, error) {
	return backend.Local{BackendType: "alloc", MTU: a.mtu}, nil
}
func (a *alloc) Set(*backend.Config) error { return nil }
func (a *alloc) Close() error              { return nil }

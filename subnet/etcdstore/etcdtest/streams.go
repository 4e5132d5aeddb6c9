package etcdtest

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// streamKiller ends every open gRPC stream (watch, lease keepalive) on demand. etcd's graceful stop waits
// up to its request timeout (5 s and more) for open streams to end; a test stopping the server wants the
// effect of a crash instead: streams end at once with codes.Unavailable, which clients retry.
type streamKiller struct {
	mu       sync.Mutex // guards the fields below
	stopping bool       // refuse new streams: clients reconnect while the server shuts down
	next     int
	cancels  map[int]context.CancelFunc
}

func (k *streamKiller) serverOption() grpc.ServerOption {
	return grpc.ChainStreamInterceptor(k.intercept)
}

func (k *streamKiller) intercept(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, cancel := context.WithCancel(ss.Context())
	defer cancel()
	k.mu.Lock()
	if k.stopping {
		k.mu.Unlock()
		return status.Error(codes.Unavailable, "etcdtest: server stopping")
	}
	if k.cancels == nil {
		k.cancels = map[int]context.CancelFunc{}
	}
	id := k.next
	k.next++
	k.cancels[id] = cancel
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		delete(k.cancels, id)
		k.mu.Unlock()
	}()
	err := handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	if ctx.Err() != nil && ss.Context().Err() == nil {
		return status.Error(codes.Unavailable, "etcdtest: server stopping")
	}
	return err
}

// stop ends all open streams and refuses new ones until start.
func (k *streamKiller) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopping = true
	for _, cancel := range k.cancels {
		cancel()
	}
}

// start accepts streams again.
func (k *streamKiller) start() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stopping = false
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *ctxStream) Context() context.Context { return s.ctx }

package etcdstore

import (
	"context"
	"math/rand/v2"
	"time"
)

const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// backoff yields growing, jittered delays between retries: about 250 ms, 500 ms, ... up to 5 s.
type backoff struct{ n int }

func (b *backoff) next() time.Duration {
	d := minBackoff << b.n
	if d >= maxBackoff || d <= 0 {
		d = maxBackoff
	} else {
		b.n++
	}
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

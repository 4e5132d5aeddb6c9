package kubestore

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestConnect checks that Connect waits and retries while the store cannot be created, naming the cause in
// an error, until ctx ends; and that an invalid annotation prefix, which no retry fixes, fails at once.
func TestConnect(t *testing.T) {
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig") // not there
	var logs bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
	defer cancel()
	s, err := Connect(ctx, Config{Kubeconfig: kubeconfig, NodeName: "n1"}, slog.New(slog.NewTextHandler(&logs, nil)))
	if s != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Connect without a kubeconfig: %v, %v; want it to wait until ctx ends", s, err)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 2 || !strings.Contains(logs.String(), kubeconfig) {
		t.Errorf("Connect logged %d errors, want 2 (at 0 s and 1 s) naming %s:\n%s", n, kubeconfig, logs.String())
	}

	start := time.Now()
	if _, err := Connect(t.Context(), Config{Kubeconfig: kubeconfig, AnnotationPrefix: "a/b/c"}, nil); err == nil || time.Since(start) > time.Second {
		t.Errorf("Connect with an invalid annotation prefix: %v after %s; want an error at once", err, time.Since(start))
	}
}

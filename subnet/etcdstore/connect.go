package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrConnect is wrapped by New's error when the etcd client could not be set up against the endpoints (with
// Username: authentication needs etcd at once); Connect retries such errors. Other errors of New (a bad
// endpoint, an unreadable TLS file) are the configuration's and retrying does not help.
var ErrConnect = errors.New("cannot connect to etcd")

// Connect is New, waiting while etcd cannot be reached or refuses the credentials: it logs a warning that
// names the endpoints and the cause, and retries with backoff (250 ms growing to 5 s) until it succeeds or
// ctx ends (then it returns ctx's error). A configuration error is returned at once.
func Connect(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	var bo backoff
	for {
		s, err := New(cfg, log)
		if err == nil || !errors.Is(err, ErrConnect) {
			return s, err
		}
		d := bo.next()
		if log != nil {
			log.Warn("etcd not available; waiting for it", "component", "etcdstore", "err", err, "retry_in", d)
		}
		if !sleep(ctx, d) {
			return nil, ctx.Err()
		}
	}
}

// unreachable reports whether err looks like etcd not answering at all (a timeout, or gRPC Unavailable), as
// opposed to an answer that refuses.
func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		if st, ok := status.FromError(e); ok && (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded) {
			return true
		}
	}
	return false
}

// explain adds to err, when it looks like etcd is not answering, which endpoint cannot be reached and why,
// found by a plain TCP connection to each endpoint ("cannot reach etcd at http://127.0.0.1:2379: connection
// refused"). Other errors are returned as they are.
func explain(ctx context.Context, endpoints []string, err error) error {
	if err == nil || !unreachable(err) {
		return err
	}
	var causes []string
	for _, ep := range endpoints {
		host := ep
		if u, perr := url.Parse(ep); perr == nil && u.Host != "" {
			host = u.Host
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		c, derr := (&net.Dialer{}).DialContext(dctx, "tcp", host)
		cancel()
		if derr != nil {
			causes = append(causes, fmt.Sprintf("%s: %s", ep, dialCause(derr)))
			continue
		}
		c.Close()
		causes = append(causes, fmt.Sprintf("%s: accepts connections but did not answer in time (TLS settings, or no quorum?)", ep))
	}
	return fmt.Errorf("cannot reach etcd at %s: %w", strings.Join(causes, "; "), err)
}

// dialCause is the short reason of a failed dial: "connection refused", "i/o timeout", "no route to host".
func dialCause(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		msg := op.Err.Error()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = msg[i+2:]
		}
		return msg
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer within 2s"
	}
	return err.Error()
}

// Explain adds, to an error of one of the store's methods that looks like etcd not answering, which endpoint
// cannot be reached and why (see the package's tests for the form); other errors are returned as they are.
// It may take up to 2 s per endpoint.
func (s *Store) Explain(ctx context.Context, err error) error { return explain(ctx, s.endpoints, err) }

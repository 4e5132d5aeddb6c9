package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/subnet"
)

// errNoNode means this node's Node object does not exist (yet, or any more).
var errNoNode = errors.New("node object not found")

// apiError wraps a failed write to the API server: retried with backoff.
type apiError struct{ err error }

func (e *apiError) Error() string { return e.err.Error() }
func (e *apiError) Unwrap() error { return e.err }

// Hold takes this node's lease and keeps it until ctx ends: the subnet is the Node's pod CIDR; Hold writes
// the annotations that announce the lease (kube-subnet-manager, backend-type, backend-data, public-ip and
// their v6 forms, as flanneld writes them; public-ip-overwrite, when an admin set it, is published instead of
// req's PublicIP), sets NetworkUnavailable=False if configured, and calls fn(lease, true).
//
// While the Node has no pod CIDR, or one outside the network, or does not exist, Hold waits and says so
// (flanneld exits instead); so it does while the network config file is missing or invalid. Afterwards it
// follows the Node: annotations removed or changed by someone else are written again; if the Node is deleted
// or its pod CIDR changes, fn(old, false) is called and the lease is taken again from the Node as it is
// then. A failed write is retried with backoff.
//
// In an IPv6-only network the Node's IPv6 pod CIDR is the lease, PublicIPv6 is required, and neither
// public-ip nor backend-data is written (as flanneld's vxlan does).
//
// Hold returns nil when ctx ends, leaving the annotations in place; an error only for what retrying cannot
// fix: an invalid req (no IPv4 PublicIP, or IPv6 only no PublicIPv6), or ErrClosed. fn runs on Hold's
// goroutine; nil means no callback.
func (s *Store) Hold(ctx context.Context, req subnet.AcquireRequest, fn subnet.HoldFunc) error {
	if fn == nil {
		fn = func(subnet.Lease, bool) {}
	}
	cfg, err := s.netConfig(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("hold lease: %w", err)
	}
	switch pub, pub6 := req.Attrs.PublicIP, req.Attrs.PublicIPv6; {
	case cfg.EnableIPv4 && !pub.Is4():
		return fmt.Errorf("hold lease: PublicIP %s: must be an IPv4 address", pub)
	case !cfg.EnableIPv4 && (!pub6.Is6() || pub6.Is4In6()):
		return fmt.Errorf("hold lease: IPv6-only network: PublicIPv6 %s: must be an IPv6 address", pub6)
	case !cfg.EnableIPv4:
		req.Attrs.PublicIP = netip.Addr{}
	}
	if err := s.waitSynced(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("hold lease: %w", err)
	}
	log := s.log.With("node", s.node)
	var held *subnet.Lease
	delay := time.Duration(0)
	for {
		ch := s.changes()
		l, err := s.announce(ctx, s.self(), req.Attrs, cfg)
		var retry <-chan time.Time
		var api *apiError
		switch {
		case err == nil:
			delay = 0
			s.warnOnce("self", "", nil)
			if held != nil && (held.Subnet != l.Subnet || held.IPv6Subnet != l.IPv6Subnet) {
				log.Warn("the node's pod CIDR changed; taking the new one", "old", held.Subnet, "new", l.Subnet)
				fn(*held, false)
				held = nil
			}
			if held == nil || !sameLease(*held, l) {
				log.Info("lease announced on the node", "subnet", l.Subnet, "ipv6-subnet", l.IPv6Subnet, "public-ip", l.Attrs.PublicIP)
				fn(l, true)
				held = &l
			}
		case errors.As(err, &api):
			delay = min(max(2*delay, 250*time.Millisecond), 5*time.Second)
			log.Warn("cannot update the node; retrying", "err", err, "retry_in", delay)
			retry = time.After(delay)
		default: // waiting for the Node, its pod CIDR, or a fitting one
			if held != nil {
				log.Warn("lease lost; waiting for the node to carry a pod CIDR again", "subnet", held.Subnet, "reason", err)
				fn(*held, false)
				held = nil
			}
			s.warnOnce("self", err.Error(), func() {
				if errors.Is(err, errNoPodCIDR) || errors.Is(err, errNoNode) {
					log.Warn("waiting for the node's pod CIDR (assigned by kube-controller-manager --allocate-node-cidrs, or kubelet --pod-cidr); not ready meanwhile", "err", err)
				} else {
					log.Error("cannot use the node's pod CIDR; waiting for it to be fixed; not ready meanwhile", "err", err)
				}
			})
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return fmt.Errorf("hold lease: %w", ErrClosed)
		case <-ch:
		case <-retry:
		}
	}
}

// announce makes the Node n carry the lease annotations for attrs (and the NetworkUnavailable=False
// condition, if configured) and returns the lease. Writes happen only for what is missing or differs.
func (s *Store) announce(ctx context.Context, n *node, attrs subnet.Attrs, cfg *subnet.Config) (subnet.Lease, error) {
	if n == nil {
		return subnet.Lease{}, fmt.Errorf("node %s: %w", s.node, errNoNode)
	}
	v4, v6, err := podCIDRs(n)
	if err != nil {
		return subnet.Lease{}, err
	}
	if err := inNetwork(n.Name, cfg, v4, v6); err != nil {
		return subnet.Lease{}, err
	}
	if !cfg.EnableIPv6 {
		v6 = netip.Prefix{}
	}
	pub4, pub6, problems := s.ann.published(n, attrs)
	if !cfg.EnableIPv4 {
		pub4 = netip.Addr{}
	}
	for _, p := range problems {
		s.warnOnce("overwrite/"+p, p, func() { s.log.Warn("ignoring an admin annotation", "node", n.Name, "problem", p) })
	}
	if !v6.IsValid() {
		pub6 = netip.Addr{}
	}
	_, patch := s.ann.wantAnnotations(n, attrs, pub4, pub6)
	if patch != nil {
		body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": patch}})
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("encode annotations patch: %w", err)
		}
		if err := s.patchStatus(ctx, body); err != nil {
			return subnet.Lease{}, &apiError{fmt.Errorf("patch annotations of node %s: %w", s.node, err)}
		}
		s.log.Info("wrote lease annotations", "node", s.node, "annotations", patch)
	}
	if s.setNetUp && !networkUp(n) {
		now := metav1.Now()
		cond := nodeCondition{
			Type: condNetworkUnavailable, Status: condFalse, Reason: "FlannelIsUp",
			Message: "Flannel is running on this node", LastTransitionTime: now, LastHeartbeatTime: now,
		}
		body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []nodeCondition{cond}}})
		if err != nil {
			return subnet.Lease{}, fmt.Errorf("encode condition patch: %w", err)
		}
		if err := s.patchStatus(ctx, body); err != nil {
			return subnet.Lease{}, &apiError{fmt.Errorf("set condition NetworkUnavailable=False on node %s: %w", s.node, err)}
		}
		s.log.Info("set node condition NetworkUnavailable=False", "node", s.node)
	}
	l := subnet.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs}
	l.Attrs.PublicIP, l.Attrs.PublicIPv6 = pub4, pub6
	if len(l.Attrs.BackendData) == 0 || string(l.Attrs.BackendData) == "null" {
		l.Attrs.BackendData = nil
	}
	if !v6.IsValid() {
		l.Attrs.BackendV6Data = nil
	}
	return l, nil
}

// networkUp reports whether the (trimmed) Node has NetworkUnavailable=False.
func networkUp(n *node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == condNetworkUnavailable {
			return c.Status == condFalse
		}
	}
	return false
}

func (s *Store) patchStatus(ctx context.Context, body []byte) error {
	rctx, cancel := context.WithTimeout(ctx, s.reqTimeout)
	defer cancel()
	return s.cli.patchNodeStatus(rctx, s.node, types.StrategicMergePatchType, body)
}

package kubestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/weft-net/weft/subnet"
)

// Watch calls fn with the complete set of leases (this node's included), sorted by subnet, once the Node
// informer has listed every Node and again after every change that alters the set, until ctx ends (then
// it returns nil; ErrClosed if the store is closed). Bursts of changes are coalesced into one call. A Node
// counts once it carries the kube-subnet-manager marker, a pod CIDR inside the network and a valid
// public-ip; a Node that does not is skipped (logged once per problem). After an API error the informer
// lists again and the set delivered next reflects every change meanwhile, deletions included.
// fn runs on Watch's goroutine and gets a new slice each time.
func (s *Store) Watch(ctx context.Context, fn func([]subnet.Lease)) error {
	if err := s.waitSynced(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("watch nodes: %w", err)
	}
	cfg, err := s.netConfig(ctx)
	if err != nil {
		return fmt.Errorf("watch nodes: %w", err)
	}
	var last []subnet.Lease
	for first := true; ; first = false {
		ch := s.changes() // before reading, so a change while reading is not missed
		cur := s.leases(cfg)
		if first || !slices.EqualFunc(cur, last, sameLease) {
			fn(cur)
			last = cur
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return fmt.Errorf("watch nodes: %w", ErrClosed)
		case <-ch:
		}
	}
}

// leases returns the lease of every Node that has a valid one, sorted by subnet.
func (s *Store) leases(cfg *subnet.Config) []subnet.Lease {
	out := []subnet.Lease{}
	nodes := s.nodes()
	present := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		present["peer/"+n.Name] = true
		l, err := s.ann.nodeLease(n, cfg)
		switch {
		case err == nil:
			s.warnOnce("peer/"+n.Name, "", nil)
			out = append(out, l)
		case errors.Is(err, errUnmanaged), errors.Is(err, errNoPodCIDR):
			// Not (yet) part of the overlay: no agent runs there, or it waits for its pod CIDR.
		default:
			s.warnOnce("peer/"+n.Name, err.Error(), func() {
				s.log.Warn("skipping a node whose lease cannot be read", "node", n.Name, "err", err)
			})
		}
	}
	s.mu.Lock()
	for k := range s.warned { // forget problems of Nodes that are gone
		if strings.HasPrefix(k, "peer/") && !present[k] {
			delete(s.warned, k)
		}
	}
	s.mu.Unlock()
	slices.SortFunc(out, subnet.CompareLeases)
	return out
}

// sameLease compares everything a lease read from a Node carries.
func sameLease(a, b subnet.Lease) bool {
	return a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet &&
		a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 &&
		a.Attrs.BackendType == b.Attrs.BackendType &&
		bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) && bytes.Equal(a.Attrs.BackendV6Data, b.Attrs.BackendV6Data)
}

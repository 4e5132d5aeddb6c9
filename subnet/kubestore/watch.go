package kubestore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/weft-net/weft/subnet"
)

// Watch calls fn with the complete set of leases (this node's included), sorted by subnet, once the Node
// informer has listed every Node (and the network config is valid: it waits for both) and again after every
// change that alters the set, until ctx ends (then it returns nil; ErrClosed if the store is closed). Bursts of changes are coalesced into one call. A Node
// counts once it carries the kube-subnet-manager marker, a pod CIDR inside the network and a valid
// public-ip; a Node that does not is skipped (logged once per problem). After an API error the informer
// lists again and the set delivered next reflects every change meanwhile, deletions included.
// fn runs on Watch's goroutine and gets a new slice each time.
func (s *Store) Watch(ctx context.Context, fn func([]subnet.Lease)) error {
	cfg, err := s.watchStart(ctx)
	if cfg == nil {
		return err
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

// WatchChanges is Watch as changes (subnet.ChangeWatcher): a Full batch once the informer has listed every
// Node, then, for each burst of changes, only the leases of the Nodes that changed: the work per change does
// not grow with the number of Nodes. A Node whose lease moved to another subnet gives its old lease in
// Deleted and its new one in Put; a Node deleted, or no longer carrying a valid lease, gives its last lease
// in Deleted. After an API error the informer lists again and reports the differences as changes, so none is
// missed. One WatchChanges at a time per Store (the changed Nodes are taken by whoever looks first).
func (s *Store) WatchChanges(ctx context.Context, fn func(subnet.Changes)) error {
	cfg, err := s.watchStart(ctx)
	if cfg == nil {
		return err
	}
	ch := s.changes()
	s.takeDirty() // the full listing below covers them
	last := s.nodeLeases(cfg)
	full := slices.SortedFunc(maps.Values(last), subnet.CompareLeases)
	if full == nil {
		full = []subnet.Lease{}
	}
	fn(subnet.Changes{Full: true, Put: full})
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
			return fmt.Errorf("watch nodes: %w", ErrClosed)
		case <-ch:
		}
		ch = s.changes()
		var c subnet.Changes
		for name := range s.takeDirty() {
			was, had := last[name]
			now, has := s.nodeLeaseByName(name, cfg)
			switch {
			case has && had && sameLease(was, now):
				continue
			case has:
				if had && was.Key() != now.Key() {
					c.Deleted = append(c.Deleted, was)
				}
				c.Put = append(c.Put, now)
				last[name] = now
			case had:
				c.Deleted = append(c.Deleted, was)
				delete(last, name)
			}
		}
		if len(c.Put) > 0 || len(c.Deleted) > 0 {
			slices.SortFunc(c.Put, subnet.CompareLeases)
			slices.SortFunc(c.Deleted, subnet.CompareLeases)
			fn(c)
		}
	}
}

// watchStart waits for the informer's first list and for the network config, for Watch and WatchChanges.
// A nil config ends the watch with the error returned: nil when ctx ended, else ErrClosed.
func (s *Store) watchStart(ctx context.Context) (*subnet.Config, error) {
	if err := s.waitSynced(ctx); err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	cfg, err := s.netConfig(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil
		}
		return nil, fmt.Errorf("watch nodes: %w", err)
	}
	return cfg, nil
}

// takeDirty returns the names of the Nodes changed since the last call, and forgets them.
func (s *Store) takeDirty() map[string]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dirty
	s.dirty = nil
	return d
}

// leases returns the lease of every Node that has a valid one, sorted by subnet.
func (s *Store) leases(cfg *subnet.Config) []subnet.Lease {
	out := slices.SortedFunc(maps.Values(s.nodeLeases(cfg)), subnet.CompareLeases)
	if out == nil {
		out = []subnet.Lease{}
	}
	return out
}

// nodeLeases returns the lease of every Node that has a valid one, by Node name.
func (s *Store) nodeLeases(cfg *subnet.Config) map[string]subnet.Lease {
	out := map[string]subnet.Lease{}
	nodes := s.nodes()
	present := make(map[string]bool, len(nodes))
	for _, n := range nodes {
		present["peer/"+n.Name] = true
		if l, ok := s.nodeLease(n, cfg); ok {
			out[n.Name] = l
		}
	}
	s.mu.Lock()
	for k := range s.warned { // forget problems of Nodes that are gone
		if strings.HasPrefix(k, "peer/") && !present[k] {
			delete(s.warned, k)
		}
	}
	s.mu.Unlock()
	return out
}

// nodeLeaseByName reads one Node's lease from the informer; a Node that is gone forgets its warning.
func (s *Store) nodeLeaseByName(name string, cfg *subnet.Config) (subnet.Lease, bool) {
	s.mu.Lock()
	inf := s.informer
	s.mu.Unlock()
	obj, exists, err := inf.GetStore().GetByKey(name)
	n, ok := obj.(*node)
	if err != nil || !exists || !ok {
		s.mu.Lock()
		delete(s.warned, "peer/"+name)
		s.mu.Unlock()
		return subnet.Lease{}, false
	}
	return s.nodeLease(n, cfg)
}

// nodeLease reads n's lease, warning once about a Node whose lease cannot be read.
func (s *Store) nodeLease(n *node, cfg *subnet.Config) (subnet.Lease, bool) {
	l, err := s.ann.nodeLease(n, cfg)
	switch {
	case err == nil:
		s.warnOnce("peer/"+n.Name, "", nil)
		return l, true
	case errors.Is(err, errUnmanaged), errors.Is(err, errNoPodCIDR):
		// Not (yet) part of the overlay: no agent runs there, or it waits for its pod CIDR.
	default:
		s.warnOnce("peer/"+n.Name, err.Error(), func() {
			s.log.Warn("skipping a node whose lease cannot be read", "node", n.Name, "err", err)
		})
	}
	return subnet.Lease{}, false
}

// sameLease compares everything a lease read from a Node carries.
func sameLease(a, b subnet.Lease) bool {
	return a.Subnet == b.Subnet && a.IPv6Subnet == b.IPv6Subnet &&
		a.Attrs.PublicIP == b.Attrs.PublicIP && a.Attrs.PublicIPv6 == b.Attrs.PublicIPv6 &&
		a.Attrs.BackendType == b.Attrs.BackendType &&
		bytes.Equal(a.Attrs.BackendData, b.Attrs.BackendData) && bytes.Equal(a.Attrs.BackendV6Data, b.Attrs.BackendV6Data)
}

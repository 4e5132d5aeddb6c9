// Package kubestore is the subnet lease store on the Kubernetes API, compatible with flannel's kube subnet
// manager (flanneld --kube-subnet-mgr; docs kubernetes.md §1): a node's subnet is its Node's pod CIDR
// (spec.podCIDRs, else spec.podCIDR), which must lie in the network config's Network; the lease's public
// address and backend data are Node annotations (<prefix>/public-ip, backend-type, backend-data, ...),
// written byte for byte as flanneld writes them, so weftd and flanneld nodes form one cluster. The network
// config is a file (net-conf.json, flannel's schema), not an etcd key.
//
// Store implements subnet.Store. One Node informer (list, then watch, re-listed by client-go after errors)
// serves both Hold and Watch; it keeps only a trimmed copy of each Node (the flannel annotations, the pod
// CIDRs and the NetworkUnavailable condition), so a status heartbeat is recognised as "no change" without
// any work beyond the comparison. Writes are strategic merge patches through nodes/status, the only write
// permission kube-flannel's RBAC grants.
//
// Goroutines: the informer's, started by the first Hold or Watch and stopped by Close. Hold and Watch run
// on their caller's goroutine.
package kubestore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weft-net/weft/subnet"
)

// DefaultNetConfPath is flannel's default --net-config-path.
const DefaultNetConfPath = "/etc/kube-flannel/net-conf.json"

// DefaultRequestTimeout bounds one API request when Config.RequestTimeout is zero.
const DefaultRequestTimeout = 10 * time.Second

// ErrClosed is returned by WaitConfig, Hold and Watch when the store is closed while they run.
var ErrClosed = errors.New("kube store closed")

// Config says how to reach the API server and which Node is this one.
type Config struct {
	// APIURL is the API server's URL (--kube-api-url). Empty: from Kubeconfig, or in-cluster.
	APIURL string
	// Kubeconfig is a kubeconfig file (--kubeconfig-file). Empty with APIURL empty: the in-cluster config
	// (the pod's service account).
	Kubeconfig string
	// NodeName is this node's Node name (NODE_NAME). Empty: the spec.nodeName of the pod PodNamespace/PodName.
	NodeName string
	// PodName and PodNamespace (POD_NAME, POD_NAMESPACE) find the node when NodeName is empty.
	PodName, PodNamespace string
	// AnnotationPrefix is --kube-annotation-prefix. Empty: DefaultAnnotationPrefix.
	AnnotationPrefix string
	// NetConfPath is the network config file (--net-config-path). Empty: DefaultNetConfPath.
	NetConfPath string
	// SetNodeNetworkUnavailable makes Hold set the Node condition NetworkUnavailable=False (reason
	// FlannelIsUp) once the lease is announced (--set-node-network-unavailable, true in flanneld).
	SetNodeNetworkUnavailable bool
	// RequestTimeout bounds each API request. Zero: DefaultRequestTimeout.
	RequestTimeout time.Duration
	// Dial, if set, opens the connections to the API server (tests dial into a network namespace). Nil:
	// client-go's default dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Store is the lease store on the Kubernetes API. Create it with New; Close it when done.
type Store struct {
	cli        coreClient
	log        *slog.Logger
	ann        Annotations
	node       string
	netConf    string
	setNetUp   bool
	reqTimeout time.Duration

	startOnce sync.Once
	stop      context.CancelFunc // stops the informer
	done      chan struct{}      // closed when Close is called
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu       sync.Mutex // guards all following fields
	net      *subnet.Config
	informer cache.SharedIndexInformer
	changed  chan struct{}   // closed and replaced whenever a Node's lease-relevant content changes
	dirty    map[string]bool // names of the Nodes changed since WatchChanges last looked (nil: none)
	warned   map[string]string
}

var _ subnet.Store = (*Store)(nil)

// New creates a store: it builds the API client and, without cfg.NodeName, looks up the node name from the
// pod (one API request). log gets the component attribute "kubestore"; nil discards.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "kubestore")
	prefix := cfg.AnnotationPrefix
	if prefix == "" {
		prefix = DefaultAnnotationPrefix
	}
	ann, err := NewAnnotations(prefix)
	if err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags(cfg.APIURL, cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config (api url %q, kubeconfig %q): %w", cfg.APIURL, cfg.Kubeconfig, err)
	}
	if cfg.Dial != nil {
		rc.Dial = cfg.Dial
	}
	rc.UserAgent = "weftd"
	return newStore(ctx, cfg, rc, ann, log)
}

// Connect is New, waiting while it fails (the API server does not answer the pod lookup, the kubeconfig is
// not there yet, ...): it logs an error naming the cause and retries, 1 s growing to ConnectRetryMax apart,
// until it succeeds or ctx ends (then it returns ctx's error). An invalid AnnotationPrefix, which no retry
// fixes, is returned at once.
func Connect(ctx context.Context, cfg Config, log *slog.Logger) (*Store, error) {
	if cfg.AnnotationPrefix != "" {
		if _, err := NewAnnotations(cfg.AnnotationPrefix); err != nil {
			return nil, err
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	delay := time.Second
	for {
		s, err := New(ctx, cfg, log)
		if err == nil {
			return s, nil
		}
		log.Error("cannot open the kube lease store; retrying", "component", "kubestore", "err", err, "retry_in", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		delay = min(2*delay, ConnectRetryMax)
	}
}

// ConnectRetryMax is the longest wait between Connect's attempts.
const ConnectRetryMax = 30 * time.Second

func newStore(ctx context.Context, cfg Config, rc *rest.Config, ann Annotations, log *slog.Logger) (*Store, error) {
	cli, err := newCoreClient(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", rc.Host, err)
	}
	s := &Store{
		cli: cli, log: log, ann: ann, node: cfg.NodeName, netConf: cfg.NetConfPath, setNetUp: cfg.SetNodeNetworkUnavailable,
		reqTimeout: cfg.RequestTimeout, done: make(chan struct{}), changed: make(chan struct{}), warned: map[string]string{},
	}
	if s.netConf == "" {
		s.netConf = DefaultNetConfPath
	}
	if s.reqTimeout <= 0 {
		s.reqTimeout = DefaultRequestTimeout
	}
	if s.node == "" {
		if cfg.PodName == "" || cfg.PodNamespace == "" {
			return nil, errors.New("node name unknown: set NODE_NAME, or POD_NAME and POD_NAMESPACE (the pod's spec.nodeName is used)")
		}
		rctx, cancel := context.WithTimeout(ctx, s.reqTimeout)
		defer cancel()
		pod, err := cli.getPod(rctx, cfg.PodNamespace, cfg.PodName)
		if err != nil {
			return nil, fmt.Errorf("node name from pod %s/%s: %w", cfg.PodNamespace, cfg.PodName, err)
		}
		if pod.Spec.NodeName == "" {
			return nil, fmt.Errorf("node name from pod %s/%s: spec.nodeName is empty", cfg.PodNamespace, cfg.PodName)
		}
		s.node = pod.Spec.NodeName
	}
	log.Info("kube subnet manager", "node", s.node, "api", rc.Host, "annotation-prefix", prefix(ann))
	return s, nil
}

func prefix(a Annotations) string {
	return a.KubeSubnetManager[:len(a.KubeSubnetManager)-len("kube-subnet-manager")]
}

// NodeName returns the name of this node's Node.
func (s *Store) NodeName() string { return s.node }

// Close stops the informer and waits for it. Annotations stay on the Node. Close is idempotent.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		s.mu.Lock()
		stop := s.stop
		s.mu.Unlock()
		if stop != nil {
			stop()
		}
		s.wg.Wait()
	})
	return nil
}

func (s *Store) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Config reads and validates the network config file. A missing file gives an error wrapping
// subnet.ErrNoConfig. SubnetLen, SubnetMin and SubnetMax do not apply: the subnet is the Node's.
func (s *Store) Config(context.Context) (*subnet.Config, error) {
	raw, err := os.ReadFile(s.netConf)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("network config file %s: %w", s.netConf, subnet.ErrNoConfig)
	}
	if err != nil {
		return nil, fmt.Errorf("network config file %s: %w", s.netConf, err)
	}
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("network config file %s: %w", s.netConf, err)
	}
	s.mu.Lock()
	s.net = cfg
	s.mu.Unlock()
	return cfg, nil
}

// WaitConfig implements subnet.Store: Config until it succeeds (subnet.PollConfig), reporting each failure.
func (s *Store) WaitConfig(ctx context.Context, report func(error)) (*subnet.Config, error) {
	cfg, err := subnet.PollConfig(ctx, s.done, s.Config, report)
	if err != nil && ctx.Err() == nil && s.closed() {
		return nil, fmt.Errorf("network config file %s: %w", s.netConf, ErrClosed)
	}
	return cfg, err
}

// netConfig returns the network config, waiting for a valid one (warning once per problem) if Config did
// not succeed yet. It fails only when ctx ends or the store is closed.
func (s *Store) netConfig(ctx context.Context) (*subnet.Config, error) {
	s.mu.Lock()
	cfg := s.net
	s.mu.Unlock()
	if cfg != nil {
		return cfg, nil
	}
	cfg, err := s.WaitConfig(ctx, func(err error) {
		s.warnOnce("config", err.Error(), func() { s.log.Warn("cannot use the network config; waiting for it", "err", err) })
	})
	s.warnOnce("config", "", nil)
	return cfg, err
}

// NodeInfo is what this node's Node says before the lease is taken.
type NodeInfo struct {
	// PublicIP and PublicIPv6 are the node-public-ip(v6) annotations: an admin's choice of --public-ip.
	// Zero: not set (or unparsable, which is logged).
	PublicIP, PublicIPv6 netip.Addr
	// BackendType and BackendData are what the node published last (backend-type, backend-data), so a
	// backend can keep its identity (the vxlan VtepMAC) across a reboot. Empty: nothing published.
	BackendType string
	BackendData json.RawMessage
}

// NodeInfo reads this node's Node (one API request).
func (s *Store) NodeInfo(ctx context.Context) (NodeInfo, error) {
	rctx, cancel := context.WithTimeout(ctx, s.reqTimeout)
	defer cancel()
	n, err := s.cli.getNode(rctx, s.node)
	if err != nil {
		return NodeInfo{}, fmt.Errorf("get node %s: %w", s.node, err)
	}
	ann := n.Annotations
	info := NodeInfo{BackendType: ann[s.ann.BackendType], BackendData: rawData(ann[s.ann.BackendData])}
	for _, f := range []struct {
		key string
		v6  bool
		dst *netip.Addr
	}{{s.ann.NodePublicIP, false, &info.PublicIP}, {s.ann.NodePublicIPv6, true, &info.PublicIPv6}} {
		v := ann[f.key]
		if v == "" {
			continue
		}
		ip, err := netip.ParseAddr(v)
		if err != nil || ip.Is6() != f.v6 || ip.Is4In6() {
			s.log.Warn("ignoring an unparsable node annotation", "node", s.node, "annotation", f.key, "value", v)
			continue
		}
		*f.dst = ip
	}
	return info, nil
}

// start starts the shared Node informer once. It keeps trimmed Nodes and signals s.changed when a Node's
// lease-relevant content changes, appears or goes.
func (s *Store) start() error {
	if s.closed() {
		return ErrClosed
	}
	s.startOnce.Do(func() {
		inf := cache.NewSharedIndexInformer(s.cli.nodesListWatch(), &node{}, 0, cache.Indexers{})
		_ = inf.SetTransform(func(obj any) (any, error) {
			if n, ok := obj.(*node); ok {
				return s.ann.trim(n), nil
			}
			return obj, nil
		})
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { s.notify(obj) },
			UpdateFunc: func(old, cur any) {
				o, ok1 := old.(*node)
				n, ok2 := cur.(*node)
				if ok1 && ok2 && sameLeaseView(o, n) {
					return // a heartbeat or another change that does not touch the lease
				}
				s.notify(cur)
			},
			DeleteFunc: func(obj any) { s.notify(obj) },
		})
		// Under mu, so Close either sees stop or this sees Close's done.
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed() {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.informer, s.stop = inf, cancel
		s.wg.Go(func() {
			s.log.Debug("node informer started")
			inf.RunWithContext(ctx)
			s.log.Debug("node informer stopped")
		})
	})
	if s.closed() {
		return ErrClosed
	}
	return nil
}

// notify records obj's Node as changed and wakes the watchers.
func (s *Store) notify(obj any) {
	name, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj) // a Node's key is its name
	s.mu.Lock()
	if err == nil {
		if s.dirty == nil {
			s.dirty = map[string]bool{}
		}
		s.dirty[name] = true
	}
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
}

// changes returns the channel closed at the next change.
func (s *Store) changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// waitSynced waits for the informer's first complete list. It logs while the API server does not answer.
func (s *Store) waitSynced(ctx context.Context) error {
	if err := s.start(); err != nil {
		return err
	}
	s.mu.Lock()
	inf := s.informer
	s.mu.Unlock()
	logged := time.Now()
	for !inf.HasSynced() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrClosed
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(logged) > 10*time.Second {
			s.log.Warn("waiting for the first list of Nodes from the API server")
			logged = time.Now()
		}
	}
	return nil
}

// nodes returns the trimmed Nodes the informer holds.
func (s *Store) nodes() []*node {
	s.mu.Lock()
	inf := s.informer
	s.mu.Unlock()
	objs := inf.GetStore().List()
	out := make([]*node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*node); ok {
			out = append(out, n)
		}
	}
	return out
}

// self returns this node's trimmed Node from the informer, or nil.
func (s *Store) self() *node {
	s.mu.Lock()
	inf := s.informer
	s.mu.Unlock()
	o, ok, _ := inf.GetStore().GetByKey(s.node)
	if !ok {
		return nil
	}
	n, _ := o.(*node)
	return n
}

// warnOnce logs msg for key unless the same text was the last logged for it; clearing (text "") forgets.
func (s *Store) warnOnce(key, text string, log func()) {
	s.mu.Lock()
	seen := s.warned[key] == text
	if text == "" {
		delete(s.warned, key)
	} else {
		s.warned[key] = text
	}
	s.mu.Unlock()
	if !seen && text != "" {
		log()
	}
}

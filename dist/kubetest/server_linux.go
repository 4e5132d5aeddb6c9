package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// Server is the configuration of one kube-apiserver: its files, address and credentials. NewServer writes
// the files; whoever runs the process uses Argv.
type Server struct {
	NS    *kerneltest.NS // the namespace it listens in
	Addr  netip.AddrPort // listen address, e.g. 192.0.2.2:6443
	URL   string         // https://Addr
	Token string         // admin bearer token (group system:masters)
	Dir   string         // certificates, keys, token file
	etcd  string
}

// NewServer writes the token file and the service account key pair into dir for a server that listens on
// addr inside ns and stores its objects in the etcd at etcdURL.
func NewServer(dir string, ns *kerneltest.NS, addr netip.AddrPort, etcdURL string) (*Server, error) {
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o700); err != nil {
		return nil, fmt.Errorf("kube-apiserver dir: %w", err)
	}
	tok := make([]byte, 16)
	rand.Read(tok)
	s := &Server{NS: ns, Addr: addr, URL: "https://" + addr.String(), Token: hex.EncodeToString(tok), Dir: dir, etcd: etcdURL}
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(s.Token+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		return nil, fmt.Errorf("kube-apiserver token file: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("service account key: %w", err)
	}
	for name, block := range map[string]*pem.Block{
		"sa.key": {Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)},
		"sa.pub": {Type: "PUBLIC KEY", Bytes: pub},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, fmt.Errorf("service account key: %w", err)
		}
	}
	return s, nil
}

// Argv is the kube-apiserver command line (without ip netns exec).
func (s *Server) Argv() []string {
	return []string{APIServerBin(),
		"--etcd-servers=" + s.etcd,
		"--bind-address=" + s.Addr.Addr().String(),
		"--advertise-address=" + s.Addr.Addr().String(),
		"--secure-port=" + strconv.Itoa(int(s.Addr.Port())),
		"--cert-dir=" + filepath.Join(s.Dir, "certs"),
		"--token-auth-file=" + filepath.Join(s.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--service-cluster-ip-range=10.96.0.0/24",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(s.Dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(s.Dir, "sa.key"),
		"--enable-priority-and-fairness=false",
		"--watch-cache=true",
	}
}

// Dial opens a connection from inside the server's namespace, for clients in the test process.
func (s *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := s.NS.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// RESTConfig is an admin client config for the test process (connections dialled inside the namespace).
func (s *Server) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: s.URL, BearerToken: s.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial: s.Dial, QPS: 100, Burst: 200, Timeout: 30 * time.Second,
	}
}

// Client is an admin clientset for the test process.
func (s *Server) Client() (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(s.RESTConfig())
}

// WriteKubeconfig writes an admin kubeconfig for processes that reach the server by its address (weftd in a
// node namespace of the same underlay; kubectl run inside the server's namespace).
func (s *Server) WriteKubeconfig(path string) error { return s.WriteKubeconfigToken(path, s.Token) }

// WriteKubeconfigToken is WriteKubeconfig for another bearer token (a service account's, say).
func (s *Server) WriteKubeconfigToken(path, token string) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
`, s.URL, token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// WaitReady waits until /readyz answers ok, or ctx ends, or exited (if not nil) is closed.
func (s *Server) WaitReady(ctx context.Context, exited <-chan struct{}) error {
	cli, err := s.Client()
	if err != nil {
		return err
	}
	var last error
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		body, err := cli.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		cancel()
		if err == nil && string(body) == "ok" {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver at %s not ready: %w (last: %v)", s.URL, ctx.Err(), last)
		case <-exited:
			return errors.New("kube-apiserver exited before it was ready")
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Package kubetest runs a real kube-apiserver (and the etcd it needs) inside a network namespace for Weft's
// kube test tier: the kube store's tests (subnet/kubestore) and the kube-mode end-to-end tests (cmd/agent).
//
// The apiserver is built from Go modules, not downloaded (build-apiserver.sh in this folder; about ten
// minutes cold, cached in BinDir outside the repo). Tests call Require first: it skips unless the test runs
// as root and the binary exists, and with WEFT_E2E=1 it fails instead of skipping.
//
// The server listens only inside its namespace. A client in the test process reaches it through Dial, which
// opens each connection from a thread inside that namespace; processes in other namespaces of a netns
// cluster reach it over the cluster's underlay. Authentication is a static admin token (group
// system:masters) and the server's self-signed certificate (clients skip verification: test only).
package kubetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// Version is the Kubernetes version the tier builds and the client-go in go.mod matches (v0.37.x).
const Version = "1.37.2"

// BinDir is the folder holding kube-apiserver and kubectl: $WEFT_KUBE_BIN, else
// /var/cache/weft/kube-v<Version> (where build-apiserver.sh puts them).
func BinDir() string {
	if d := os.Getenv("WEFT_KUBE_BIN"); d != "" {
		return d
	}
	return "/var/cache/weft/kube-v" + Version
}

// APIServerBin is the path of the kube-apiserver binary.
func APIServerBin() string { return filepath.Join(BinDir(), "kube-apiserver") }

// FlanneldBin is the path of flannel's flanneld (build-flanneld.sh), for mixed weftd/flanneld clusters.
func FlanneldBin() string { return filepath.Join(BinDir(), "flanneld") }

// KubectlBin is the path of the kubectl binary.
func KubectlBin() string { return filepath.Join(BinDir(), "kubectl") }

// Require skips the test unless it runs as root (with iproute2) and kube-apiserver is built; with
// WEFT_E2E=1 it fails instead.
func Require(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("kube tier: skipped in -short")
	}
	kerneltest.RequireRoot(t)
	if _, err := os.Stat(APIServerBin()); err != nil {
		msg := "kube tier needs " + APIServerBin() + ": build it with dist/kubetest/build-apiserver.sh (about 10 minutes once)"
		if kerneltest.E2E() {
			t.Fatal("WEFT_E2E=1 but the " + msg)
		}
		t.Skip(msg)
	}
}

// buildClusterBin builds weft-cluster (which runs etcd) into dir.
func buildClusterBin(dir string) (string, error) {
	bin := filepath.Join(dir, "weft-cluster")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/weft-net/weft/cmd/weft-cluster").CombinedOutput(); err != nil {
		return "", &buildError{err: err, out: string(out)}
	}
	return bin, nil
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build weft-cluster: " + e.err.Error() + "\n" + e.out }
func (e *buildError) Unwrap() error { return e.err }

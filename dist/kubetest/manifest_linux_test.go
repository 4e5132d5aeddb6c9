package kubetest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/dist/kubetest"
)

// TestManifestsServerDryRun sends every object of every manifest in dist/kubernetes to a real API server as
// a server-side dry run with strict field validation (what `kubectl apply --dry-run=server
// --validate=strict` does): unknown or misspelt fields, wrong types and invalid objects fail. Namespaces are
// created for real first, so the namespaced objects have somewhere to go.
func TestManifestsServerDryRun(t *testing.T) {
	kubetest.Require(t)
	files, err := filepath.Glob("../kubernetes/*.y*ml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests in dist/kubernetes: %v", err)
	}
	env := kubetest.NewEnv(t)
	rc := env.RESTConfig()
	dc, err := discovery.NewDiscoveryClientForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		docs := strings.Split("\n"+string(b), "\n---\n")
		var objs []*unstructured.Unstructured
		for i, doc := range docs {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatalf("%s: document %d: %v", f, i+1, err)
			}
			if strings.TrimSpace(string(js)) == "null" {
				continue
			}
			u := &unstructured.Unstructured{}
			if err := u.UnmarshalJSON(js); err != nil {
				t.Fatalf("%s: document %d: %v", f, i+1, err)
			}
			objs = append(objs, u)
		}
		accepted := 0
		for _, real := range []bool{true, false} { // namespaces for real, then everything as a dry run
			for _, u := range objs {
				if (u.GetKind() == "Namespace") != real {
					continue
				}
				gvk := u.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Errorf("%s: %s %s: %v", f, gvk.Kind, u.GetName(), err)
					continue
				}
				var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if ns := u.GetNamespace(); ns != "" {
					ri = dyn.Resource(m.Resource).Namespace(ns)
				}
				opts := metav1.CreateOptions{FieldValidation: "Strict"}
				if !real {
					opts.DryRun = []string{metav1.DryRunAll}
				}
				if _, err := ri.Create(t.Context(), u, opts); err != nil && !(real && strings.Contains(err.Error(), "already exists")) {
					t.Errorf("%s: %s %s/%s: %v", filepath.Base(f), gvk.Kind, u.GetNamespace(), u.GetName(), err)
					continue
				}
				accepted++
			}
		}
		t.Logf("%s: %d of %d objects accepted", filepath.Base(f), accepted, len(objs))
	}

	// The same with kubectl, as an operator would check it: run in the server's namespace.
	if _, err := os.Stat(kubetest.KubectlBin()); err != nil {
		if kerneltest.E2E() {
			t.Fatalf("WEFT_E2E=1 but kubectl is missing (dist/kubetest/build-apiserver.sh builds it): %v", err)
		}
		t.Skipf("kubectl is missing: %v", err)
	}
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := env.WriteKubeconfig(kc); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		abs, _ := filepath.Abs(f)
		out, err := env.NS.Exec(kubetest.KubectlBin(), "--kubeconfig", kc, "apply", "--dry-run=server", "--validate=strict", "-f", abs)
		if err != nil {
			t.Errorf("kubectl apply --dry-run=server --validate=strict -f %s: %v", filepath.Base(f), err)
			continue
		}
		t.Logf("kubectl: %s", strings.TrimSpace(out))
	}
}

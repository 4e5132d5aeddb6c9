package kernel

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestKernelBoundary: backend/kernel (and its test helpers below it) is the only code that talks netlink, iptables or
// nftables; every other package goes through it.
func TestKernelBoundary(t *testing.T) {
	restricted := []string{"github.com/vishvananda/netlink", "github.com/coreos/go-iptables", "sigs.k8s.io/knftables", "github.com/google/nftables"}
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if strings.HasPrefix(d.Name(), ".") && path != root {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		if strings.HasPrefix(filepath.ToSlash(rel), "backend/kernel/") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, r := range restricted {
				if p == r || strings.HasPrefix(p, r+"/") {
					t.Errorf("%s imports %s: only backend/kernel may", rel, p)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

//go:build unix

package subnet_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// withUmask sets the process umask for the rest of the test (tests in this package do not run in parallel).
func withUmask(t testing.TB, mask int) {
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestWriteEnvFileModes(t *testing.T) {
	// Under the usual umask the directory is created 0755.
	withUmask(t, 0o022)
	dir := filepath.Join(t.TempDir(), "flannel")
	path := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("directory: %v, %v; want mode 0755", fi.Mode(), err)
	}

	// The file is 0644 whatever the umask (readers such as the CNI plugin need it).
	withUmask(t, 0o077)
	path = filepath.Join(t.TempDir(), "subnet.env")
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("file under umask 077: %v, %v; want mode 0644", fi.Mode(), err)
	}
}

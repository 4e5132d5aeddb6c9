package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// TestVerify runs `systemd-analyze verify` on weftd.service and on docker.service with the drop-in, in a
// root folder (--root) that holds the host's system units (targets, docker.service of the installed
// docker.io), the units under test in /etc/systemd/system and stand-in executables where the units expect
// the binaries: dockerd in /usr/bin as docker-ce installs it and in /usr/sbin as Debian's docker.io does.
// Any message, a warning included, fails the test.
func TestVerify(t *testing.T) {
	kerneltest.RequireCommand(t, "systemd-analyze")
	units := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(units, "docker.service")); err != nil {
		if kerneltest.E2E() {
			t.Fatalf("WEFT_E2E=1 but docker.service is not installed (apt-get install docker.io): %v", err)
		}
		t.Skipf("needs docker.service (docker.io): %v", err)
	}
	for _, dockerd := range []string{"usr/bin/dockerd", "usr/sbin/dockerd"} {
		t.Run(strings.ReplaceAll(dockerd, "/", "_"), func(t *testing.T) {
			root := t.TempDir()
			for _, d := range []string{"usr/lib/systemd", "usr/bin", "usr/sbin", "usr/local/bin", "etc/systemd/system/docker.service.d"} {
				if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, l := range []string{"bin", "sbin", "lib"} {
				if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
					t.Fatal(err)
				}
			}
			if out, err := exec.Command("cp", "-a", units, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
				t.Fatalf("copy the system units: %v: %s", err, out)
			}
			for path, text := range map[string]string{
				"etc/systemd/system/weftd.service":              WeftdService,
				"etc/systemd/system/docker.service.d/weft.conf": DockerDropIn,
				"usr/local/bin/weftd":                           "#!/bin/sh\n",
				"usr/local/bin/weft-docker-opts":                "#!/bin/sh\n",
				dockerd:                                         "#!/bin/sh\n",
				"usr/bin/kill":                                  "#!/bin/sh\n", // docker.service's ExecReload
			} {
				mode := os.FileMode(0o755)
				if strings.HasPrefix(path, "etc/") {
					mode = 0o644
				}
				if err := os.WriteFile(filepath.Join(root, path), []byte(text), mode); err != nil {
					t.Fatal(err)
				}
			}
			out, err := exec.Command("systemd-analyze", "verify", "--root="+root, "weftd.service", "docker.service").CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Errorf("systemd-analyze verify weftd.service docker.service (dockerd in /%s): %v\n%s", dockerd, err, out)
			}
		})
	}
}

package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// binDir holds the binary built by weftDockerOpts; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// goTool returns the go command, skipping the test if there is none (failing with WEFT_E2E=1).
func goTool(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("go")
	if err != nil {
		if os.Getenv("WEFT_E2E") == "1" {
			t.Fatalf("WEFT_E2E=1 but the go command is not in PATH: %v", err)
		}
		t.Skipf("the go command is not in PATH: %v", err)
	}
	return p
}

var build struct {
	once sync.Once
	path string
	err  error
	out  []byte
}

// weftDockerOpts builds the binary once per test run and returns its path.
func weftDockerOpts(t testing.TB) string {
	t.Helper()
	gocmd := goTool(t)
	build.once.Do(func() {
		binDir, build.err = os.MkdirTemp("", "weft-docker-opts-test")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(binDir, "weft-docker-opts")
		build.out, build.err = exec.Command(gocmd, "build", "-o", build.path, ".").CombinedOutput()
	})
	if build.err != nil {
		t.Fatalf("go build: %v\n%s", build.err, build.out)
	}
	return build.path
}

// TestBinary runs the built binary on temp files, checking exit status, stderr and the output file.
func TestBinary(t *testing.T) {
	bin := weftDockerOpts(t)
	const stale = "stale\n"
	tests := []struct {
		name       string
		env        string // env file content; "-" for none
		args       []string
		environ    []string
		wantStatus int
		wantStderr string // substring; "" means stderr must be empty
		wantOut    string // output file content afterwards
	}{
		{name: "flannel default", env: sampleEnvFile, wantOut: sampleOut},
		{name: "-i", env: sampleEnvFile, args: []string{"-i"}, wantOut: "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"},
		{name: "-c", env: sampleEnvFile, args: []string{"-c"}, wantOut: "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"},
		{name: "-m", env: sampleEnvFile, args: []string{"-m"}, wantOut: "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"},
		{
			name: "distro drop-in form with an inherited value", env: sampleEnvFile,
			args: []string{"-k", "DOCKER_NETWORK_OPTIONS", "-c"}, environ: []string{"DOCKER_NETWORK_OPTIONS=--debug"},
			wantOut: "DOCKER_NETWORK_OPTIONS=\"--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n",
		},
		{name: "IPv6-only env file", env: "FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:4a::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
			wantOut: "DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1430\"\nDOCKER_OPTS=\" --ip-masq=true --mtu=1430\"\n"},
		{name: "dual-stack env file", env: "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:4a::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
			wantOut: sampleOut},
		{name: "-h", env: sampleEnvFile, args: []string{"-h"}, wantStatus: 1, wantStderr: "[-f FLANNEL-ENV-FILE]", wantOut: stale},
		{name: "unknown flag", env: sampleEnvFile, args: []string{"-q"}, wantStatus: 1, wantStderr: "illegal option -- q", wantOut: stale},
		{name: "missing env file", env: "-", wantStatus: 1, wantStderr: "no such file or directory", wantOut: stale},
		{name: "bad FLANNEL_IPMASQ", env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=maybe\n", wantStatus: 1, wantStderr: `FLANNEL_IPMASQ: "maybe"`, wantOut: stale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			in, out := filepath.Join(dir, "subnet.env"), filepath.Join(dir, "docker_opts.env")
			if tt.env != "-" {
				writeFile(t, in, tt.env)
			}
			writeFile(t, out, stale)
			cmd := exec.Command(bin, append([]string{"-f", in, "-d", out}, tt.args...)...)
			cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, tt.environ...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			status := 0
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				status = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if status != tt.wantStatus {
				t.Errorf("exit status %d, want %d; stderr:\n%s", status, tt.wantStatus, &stderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("unexpected stdout:\n%s", &stdout)
			}
			if tt.wantStderr == "" && stderr.Len() > 0 || !strings.Contains(stderr.String(), tt.wantStderr) {
				t.Errorf("stderr does not contain %q:\n%s", tt.wantStderr, &stderr)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.wantOut {
				t.Errorf("output file:\ngot:\n%s\nwant:\n%s", got, tt.wantOut)
			}
		})
	}
}

// TestBinaryCreatesOutput checks that a missing output file is created and that a longer existing one is
// truncated, not overwritten in part.
func TestBinaryCreatesOutput(t *testing.T) {
	bin := weftDockerOpts(t)
	dir := t.TempDir()
	in := writeFile(t, filepath.Join(dir, "subnet.env"), sampleEnvFile)
	out := filepath.Join(dir, "docker_opts.env")
	for _, existing := range []string{"", strings.Repeat("x", 4096)} {
		if existing != "" {
			writeFile(t, out, existing)
		}
		if b, err := exec.Command(bin, "-f", in, "-d", out, "-c").CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, b)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if want := "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"; string(got) != want {
			t.Errorf("output (existing file of %d bytes):\n%s\nwant:\n%s", len(existing), got, want)
		}
	}
}

// TestNoHeavyDeps keeps docker-opts free of etcd, grpc and netlink: it runs on hosts that have none of
// weftd's dependencies and must stay a small binary (style.md §3).
func TestNoHeavyDeps(t *testing.T) {
	out, err := exec.Command(goTool(t), "list", "-deps", ".").Output()
	if err != nil {
		var stderr []byte
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 || !strings.Contains(string(out), "github.com/weft-net/weft/subnet") {
		t.Fatalf("go list -deps output looks wrong:\n%s", out)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "go.etcd.io/") || strings.HasPrefix(d, "google.golang.org/grpc") ||
			strings.Contains(d, "netlink") || strings.Contains(d, "vishvananda") {
			t.Errorf("docker-opts depends on %s", d)
		}
	}
}

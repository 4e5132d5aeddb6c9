package subnet_test

import (
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/weft-net/weft/subnet"
)

var (
	envV4 = subnet.Env{
		Network: pfx("10.5.0.0/16"), Subnet: pfx("10.5.72.1/24"), MTU: 1450, IPMasq: false,
	}
	envV4Text = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"

	envDual = subnet.Env{
		Network: pfx("10.5.0.0/16"), Subnet: pfx("10.5.72.1/24"),
		IPv6Network: pfx("fd00:5::/48"), IPv6Subnet: pfx("fd00:5:0:48::1/64"), MTU: 1400, IPMasq: true,
	}
	envDualText = "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n" +
		"FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET=fd00:5:0:48::1/64\n" +
		"FLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n"

	envV6     = subnet.Env{IPv6Network: pfx("fd00:5::/48"), IPv6Subnet: pfx("fd00:5:0:48::1/64"), MTU: 1500}
	envV6Text = "FLANNEL_IPV6_NETWORK=fd00:5::/48\nFLANNEL_IPV6_SUBNET=fd00:5:0:48::1/64\nFLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
)

func TestEnvMarshal(t *testing.T) {
	tests := []struct {
		name string
		env  subnet.Env
		want string
	}{
		{"IPv4", envV4, envV4Text},
		{"dual stack", envDual, envDualText},
		{"IPv6 only", envV6, envV6Text},
		{"flannel's sample", subnet.Env{Network: pfx("10.1.0.0/16"), Subnet: subnet.FirstAddr(pfx("10.1.74.0/24")), MTU: 1472},
			"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.env.Marshal()); got != tt.want {
				t.Errorf("Marshal:\ngot:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// dirEntries lists the names in dir.
func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestWriteEnvFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "flannel") // neither directory exists yet
	path := filepath.Join(dir, "subnet.env")
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatalf("WriteEnvFile: %v", err)
	}
	check := func(want string) {
		t.Helper()
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("file:\ngot:\n%s\nwant:\n%s", got, want)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != 0o644 {
			t.Errorf("file mode %v, want -rw-r--r--", fi.Mode())
		}
		if names := dirEntries(t, dir); len(names) != 1 || names[0] != "subnet.env" {
			t.Errorf("directory holds %q, want only subnet.env (no temp file left)", names)
		}
	}
	check(envV4Text)

	// Overwrite with longer, then shorter content: no leftovers of the old content.
	if err := subnet.WriteEnvFile(path, envDual); err != nil {
		t.Fatalf("WriteEnvFile over an existing file: %v", err)
	}
	check(envDualText)
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatalf("WriteEnvFile: %v", err)
	}
	check(envV4Text)

	// An existing file with other permissions is replaced, not rewritten in place.
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatalf("WriteEnvFile: %v", err)
	}
	check(envV4Text)
}

// TestWriteEnvFileAtomic checks that a concurrent reader only ever sees a complete old or new file.
func TestWriteEnvFileAtomic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	if err := subnet.WriteEnvFile(path, envV4); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var bad atomic.Value
	wg.Go(func() {
		for !stop.Load() {
			b, err := os.ReadFile(path)
			if err != nil {
				bad.Store("read: " + err.Error())
				return
			}
			if s := string(b); s != envV4Text && s != envDualText {
				bad.Store("partial content: " + s)
				return
			}
		}
	})
	for i := range 300 {
		e := envV4
		if i%2 == 0 {
			e = envDual
		}
		if err := subnet.WriteEnvFile(path, e); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if v := bad.Load(); v != nil {
		t.Errorf("reader saw %s", v)
	}
	if names := dirEntries(t, filepath.Dir(path)); len(names) != 1 {
		t.Errorf("directory holds %q, want only subnet.env", names)
	}
}

func TestWriteEnvFileErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The directory cannot be created: its parent is a file.
	path := filepath.Join(file, "flannel", "subnet.env")
	err := subnet.WriteEnvFile(path, envV4)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(file, "flannel")) {
		t.Errorf("WriteEnvFile(%s) = %v, want an error naming the directory", path, err)
	}
	// The target is a directory: rename fails, and the temp file is removed.
	target := filepath.Join(dir, "subnet.env")
	if err := os.Mkdir(target, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = subnet.WriteEnvFile(target, envV4)
	if err == nil || !strings.Contains(err.Error(), "write env file "+target) {
		t.Errorf("WriteEnvFile onto a directory = %v, want an error naming it", err)
	}
	if names := dirEntries(t, dir); len(names) != 2 {
		t.Errorf("directory holds %q, want no temp file left", names)
	}
}

func TestReadEnvFileRoundTrip(t *testing.T) {
	for _, e := range []subnet.Env{envV4, envDual, envV6, {}} {
		path := filepath.Join(t.TempDir(), "subnet.env")
		if err := subnet.WriteEnvFile(path, e); err != nil {
			t.Fatal(err)
		}
		got, err := subnet.ReadEnvFile(path)
		if err != nil {
			t.Fatalf("ReadEnvFile: %v", err)
		}
		if got != e {
			t.Errorf("ReadEnvFile(WriteEnvFile(%+v)) = %+v", e, got)
		}
	}
}

func TestReadEnvFile(t *testing.T) {
	tests := []struct {
		name string
		text string
		want subnet.Env
	}{
		{"flanneld's file", "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
			subnet.Env{Network: pfx("10.1.0.0/16"), Subnet: pfx("10.1.74.1/24"), MTU: 1472}},
		{"any order, quotes, comments, unknown variables", "# weftd\nFLANNEL_IPMASQ=\"true\"\nOTHER=x\nFLANNEL_MTU='1450'\nexport FLANNEL_SUBNET=10.5.72.1/24\r\n",
			subnet.Env{Subnet: pfx("10.5.72.1/24"), MTU: 1450, IPMasq: true}},
		{"empty file", "", subnet.Env{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "subnet.env")
			if err := os.WriteFile(path, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := subnet.ReadEnvFile(path)
			if err != nil {
				t.Fatalf("ReadEnvFile: %v", err)
			}
			if got != tt.want {
				t.Errorf("ReadEnvFile = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadEnvFileErrors(t *testing.T) {
	tests := []struct {
		name string
		text string // "-" for no file
		want []string
	}{
		{"missing file", "-", []string{"read env file", "subnet.env", "no such file"}},
		{"garbage line", "FLANNEL_MTU=1450\nhello\n", []string{"subnet.env:2", `"hello"`, "NAME=value"}},
		{"bad FLANNEL_NETWORK", "FLANNEL_NETWORK=10.5.0.0\n", []string{"FLANNEL_NETWORK", `"10.5.0.0"`, "CIDR"}},
		{"bad FLANNEL_SUBNET", "FLANNEL_SUBNET=10.5.72.1\n", []string{"FLANNEL_SUBNET", `"10.5.72.1"`, "CIDR"}},
		{"bad FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_NETWORK=fd00::/129\n", []string{"FLANNEL_IPV6_NETWORK", `"fd00::/129"`, "CIDR"}},
		{"bad FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_SUBNET=x\n", []string{"FLANNEL_IPV6_SUBNET", `"x"`, "CIDR"}},
		{"bad FLANNEL_MTU", "FLANNEL_MTU=1450 bytes\n", []string{"FLANNEL_MTU", `"1450 bytes"`, "integer"}},
		{"empty FLANNEL_MTU", "FLANNEL_MTU=\n", []string{"FLANNEL_MTU", `""`, "integer"}},
		{"bad FLANNEL_IPMASQ", "FLANNEL_IPMASQ=yes\n", []string{"FLANNEL_IPMASQ", `"yes"`, "true or false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "subnet.env")
			if tt.text != "-" {
				if err := os.WriteFile(path, []byte(tt.text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			e, err := subnet.ReadEnvFile(path)
			if err == nil {
				t.Fatalf("ReadEnvFile = %+v, want an error", e)
			}
			for _, s := range append(tt.want, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if e != (subnet.Env{}) {
				t.Errorf("ReadEnvFile returned %+v with its error", e)
			}
		})
	}
	_, err := subnet.ReadEnvFile(filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadEnvFile of a missing file: %v, want errors.Is fs.ErrNotExist", err)
	}
}

func TestReadEnvVars(t *testing.T) {
	tests := []struct {
		name string
		text string
		want map[string]string
	}{
		{"plain", "A=1\nB=two\n", map[string]string{"A": "1", "B": "two"}},
		{"no final newline", "A=1", map[string]string{"A": "1"}},
		{"double quotes", `A="1 2"`, map[string]string{"A": "1 2"}},
		{"single quotes", `A='1 2'`, map[string]string{"A": "1 2"}},
		{"quotes keep inner quotes", `A="it's"`, map[string]string{"A": "it's"}},
		{"mismatched quotes are kept", `A="1'`, map[string]string{"A": `"1'`}},
		{"a lone quote is kept", `A="`, map[string]string{"A": `"`}},
		{"empty quotes", `A=""`, map[string]string{"A": ""}},
		{"empty value", "A=", map[string]string{"A": ""}},
		{"= in the value", "A=b=c", map[string]string{"A": "b=c"}},
		{"comments and blank lines", "# a comment\n\n   \n  # indented comment\nA=1\n", map[string]string{"A": "1"}},
		{"surrounding blanks and CRLF", "  A=1  \r\nB=2\r\n", map[string]string{"A": "1", "B": "2"}},
		{"export", "export A=1\n", map[string]string{"A": "1"}},
		{"blanks around the name", "A =1\n", map[string]string{"A": "1"}},
		{"the last assignment wins", "A=1\nA=2\n", map[string]string{"A": "2"}},
		{"empty file", "", map[string]string{}},
		{"comments only", "# nothing\n", map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vars.env")
			if err := os.WriteFile(path, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := subnet.ReadEnvVars(path)
			if err != nil {
				t.Fatalf("ReadEnvVars: %v", err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("ReadEnvVars(%q) = %q, want %q", tt.text, got, tt.want)
			}
		})
	}
}

func TestReadEnvVarsErrors(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string
	}{
		{"garbage line", "A=1\nnot an assignment\nB=2\n", []string{":2:", `"not an assignment"`, "want NAME=value"}},
		{"no name", "=1\n", []string{":1:", `"=1"`}},
		{"export without assignment", "A=1\n\n# c\nexport A\n", []string{":4:", `"A"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "vars.env")
			if err := os.WriteFile(path, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := subnet.ReadEnvVars(path)
			if err == nil {
				t.Fatalf("ReadEnvVars = %q, want an error", got)
			}
			for _, s := range append(tt.want, path) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
	if _, err := subnet.ReadEnvVars(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("ReadEnvVars of a missing file: %v, want fs.ErrNotExist", err)
	}
}

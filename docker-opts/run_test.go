package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-net/weft/subnet"
)

const sampleEnvFile = `FLANNEL_NETWORK=10.1.0.0/16
FLANNEL_SUBNET=10.1.74.1/24
FLANNEL_MTU=1472
FLANNEL_IPMASQ=false
`

const sampleOut = `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`

func TestParseArgs(t *testing.T) {
	def := config{envFile: subnet.DefaultEnvFile, outFile: DefaultOutFile, routeTable: procNetRoute}
	mod := func(f func(*config)) config { c := def; f(&c); return c }
	tests := []struct {
		args []string
		want config
	}{
		{nil, def},
		{[]string{"-f", "/a/subnet.env"}, mod(func(c *config) { c.envFile = "/a/subnet.env" })},
		{[]string{"-f/a/subnet.env"}, mod(func(c *config) { c.envFile = "/a/subnet.env" })},
		{[]string{"-d", "/run/flannel/docker"}, mod(func(c *config) { c.outFile = "/run/flannel/docker" })},
		{[]string{"-i"}, mod(func(c *config) { c.opts.Individual = true })},
		{[]string{"-c"}, mod(func(c *config) { c.opts.Combined = true })},
		{[]string{"-m"}, mod(func(c *config) { c.opts.NoIPMasq = true })},
		{[]string{"-k", "DOCKER_NETWORK_OPTIONS"}, mod(func(c *config) { c.opts.Key = "DOCKER_NETWORK_OPTIONS" })},
		{[]string{"-kK"}, mod(func(c *config) { c.opts.Key = "K" })},
		{[]string{"-icm"}, mod(func(c *config) { c.opts = Options{Individual: true, Combined: true, NoIPMasq: true} })},
		{[]string{"-ck", "K"}, mod(func(c *config) { c.opts = Options{Combined: true, Key: "K"} })},
		{[]string{"-ckK", "-i"}, mod(func(c *config) { c.opts = Options{Individual: true, Combined: true, Key: "K"} })},
		{[]string{"-f", "-i"}, mod(func(c *config) { c.envFile = "-i" })}, // getopts takes the next word as the value
		{[]string{"-f", "a", "-f", "b"}, mod(func(c *config) { c.envFile = "b" })},
		{[]string{"-c", "--"}, mod(func(c *config) { c.opts.Combined = true })},
		{[]string{"-k", "DOCKER_NETWORK_OPTIONS", "-d", "/run/flannel/docker"}, mod(func(c *config) {
			c.opts.Key, c.outFile = "DOCKER_NETWORK_OPTIONS", "/run/flannel/docker"
		})},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got, err := parseArgs(tt.args)
			if err != nil {
				t.Fatalf("parseArgs(%q): %v", tt.args, err)
			}
			if got != tt.want {
				t.Errorf("parseArgs(%q) = %+v, want %+v", tt.args, got, tt.want)
			}
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string // "" means errHelp
	}{
		{[]string{"-h"}, ""},
		{[]string{"-?"}, ""},
		{[]string{"-ih"}, ""},
		{[]string{"-x"}, "illegal option -- x"},
		{[]string{"-i", "-Z"}, "illegal option -- Z"},
		{[]string{"--help"}, "illegal option -- -"},
		{[]string{"-f"}, "option requires an argument -- f"},
		{[]string{"-i", "-d"}, "option requires an argument -- d"},
		{[]string{"-ik"}, "option requires an argument -- k"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-i", "-"}, `unexpected argument "-"`},
		{[]string{"-c", "--", "-i"}, `unexpected argument "-i"`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := parseArgs(tt.args)
			switch {
			case err == nil:
				t.Fatalf("parseArgs(%q) succeeded", tt.args)
			case tt.want == "" && !errors.Is(err, errHelp):
				t.Errorf("parseArgs(%q) = %v, want errHelp", tt.args, err)
			case tt.want != "" && err.Error() != tt.want:
				t.Errorf("parseArgs(%q) = %q, want %q", tt.args, err, tt.want)
			}
		})
	}
}

// routeTable returns /proc/net/route text: each route is "IFACE DST/LEN GATEWAY" (GATEWAY "-" for none).
func routeTable(t testing.TB, routes ...string) []byte {
	t.Helper()
	hex := func(a netip.Addr) string {
		b := a.As4()
		return fmt.Sprintf("%08X", binary.NativeEndian.Uint32(b[:]))
	}
	var b bytes.Buffer
	b.WriteString("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n")
	for _, r := range routes {
		f := strings.Fields(r)
		p := netip.MustParsePrefix(f[1])
		mask := netip.AddrFrom4([4]byte{})
		if p.Bits() > 0 {
			var m [4]byte
			binary.BigEndian.PutUint32(m[:], ^uint32(0)<<(32-p.Bits()))
			mask = netip.AddrFrom4(m)
		}
		gw, flags := netip.AddrFrom4([4]byte{}), 0x1
		if f[2] != "-" {
			gw, flags = netip.MustParseAddr(f[2]), 0x3
		}
		fmt.Fprintf(&b, "%s\t%s\t%s\t%04X\t0\t0\t0\t%s\t0\t0\t0\n", f[0], hex(p.Addr()), hex(gw), flags, hex(mask))
	}
	return b.Bytes()
}

func TestRoutedViaGateway(t *testing.T) {
	subnet := netip.MustParsePrefix("10.1.74.0/24")
	tests := []struct {
		name   string
		routes []string
		junk   string // lines inserted after the header
		want   string
	}{
		{"empty table", nil, "", ""},
		{"default route only", []string{"eth0 0.0.0.0/0 192.0.2.1", "eth0 192.0.2.0/24 -"}, "", ""},
		{"subnet via a gateway", []string{"eth0 0.0.0.0/0 192.0.2.1", "eth1 10.1.74.0/24 198.51.100.9"}, "", "10.1.74.0/24 via 198.51.100.9 dev eth1"},
		{"subnet directly connected (docker0 or cbr0)", []string{"docker0 10.1.74.0/24 -"}, "", ""},
		{"the whole network into the TUN", []string{"flannel0 10.1.0.0/16 -"}, "", ""},
		{"a peer's subnet via vxlan", []string{"flannel.1 10.1.75.0/24 10.1.75.0"}, "", ""},
		{"same address, other length", []string{"eth0 10.1.74.0/23 192.0.2.1", "eth0 10.1.74.0/25 192.0.2.1"}, "", ""},
		{name: "unparsable lines are skipped", routes: []string{"eth0 10.1.74.0/24 192.0.2.1"},
			junk: "bogus line\neth9 zz 00000000 0003 0 0 0 00FFFFFF\neth9 004A010A 010200C0 0003 0 0 0 FF00FFFF 0 0 0\n",
			want: "10.1.74.0/24 via 192.0.2.1 dev eth0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := routeTable(t, tt.routes...)
			if tt.junk != "" {
				i := bytes.IndexByte(table, '\n') + 1
				table = append(append(table[:i:i], tt.junk...), table[i:]...)
			}
			if got := routedViaGateway(table, subnet); got != tt.want {
				t.Errorf("routedViaGateway = %q, want %q\ntable:\n%s", got, tt.want, table)
			}
		})
	}
}

func TestProcAddrByteOrder(t *testing.T) {
	// On little-endian hosts /proc/net/route prints 192.0.2.1 as 010200C0.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("big-endian host")
	}
	if a, ok := procAddr("010200C0"); !ok || a != netip.MustParseAddr("192.0.2.1") {
		t.Errorf(`procAddr("010200C0") = %v, %v; want 192.0.2.1`, a, ok)
	}
	for _, s := range []string{"", "0102", "010200C0FF", "XX0200C0"} {
		if _, ok := procAddr(s); ok {
			t.Errorf("procAddr(%q) succeeded", s)
		}
	}
}

func writeFile(t testing.TB, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestRun(t *testing.T) {
	const stale = "stale content\n"
	tests := []struct {
		name    string
		env     string // env file content; "-" for no file
		opts    Options
		routes  []string
		wantErr []string // substrings; nil for success
		wantOut string   // the output file after the run
	}{
		{name: "sample", env: sampleEnvFile, wantOut: sampleOut},
		{name: "sample with quotes, comments and export", env: "# written by weftd\nexport FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=\"10.1.74.1/24\"\n\nFLANNEL_MTU='1472'\nFLANNEL_IPMASQ=false\n", wantOut: sampleOut},
		{name: "unrelated routes", env: sampleEnvFile, routes: []string{"eth0 0.0.0.0/0 192.0.2.1", "docker0 10.1.74.0/24 -"}, wantOut: sampleOut},
		{
			name: "subnet already routed via a gateway: written, then an error", env: sampleEnvFile,
			routes:  []string{"eth0 0.0.0.0/0 192.0.2.1", "eth0 10.1.74.0/24 192.0.2.7"},
			wantErr: []string{"routing table already contains the subnet: 10.1.74.0/24 via 192.0.2.7 dev eth0"},
			wantOut: sampleOut,
		},
		{name: "missing env file", env: "-", wantErr: []string{"read flannel env file", "subnet.env", "no such file"}, wantOut: stale},
		{name: "garbage line in env file", env: "FLANNEL_SUBNET=10.1.74.1/24\nthis is not an assignment\n", wantErr: []string{"subnet.env:2", "NAME=value"}, wantOut: stale},
		{name: "invalid FLANNEL_IPMASQ", env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=yes\n", wantErr: []string{"subnet.env", "FLANNEL_IPMASQ", `"yes"`}, wantOut: stale},
		{name: "invalid FLANNEL_IPMASQ with -m", env: "FLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPMASQ=yes\n", opts: Options{NoIPMasq: true, Combined: true}, wantOut: "DOCKER_OPTS=\" --bip=10.1.74.1/24\"\n"},
		{name: "invalid key", env: sampleEnvFile, opts: Options{Key: "A-B"}, wantErr: []string{`"A-B"`}, wantOut: stale},
		{name: "empty env file", env: "", wantOut: "DOCKER_OPTS=\"\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := config{
				envFile:    filepath.Join(dir, "subnet.env"),
				outFile:    writeFile(t, filepath.Join(dir, "docker_opts.env"), stale),
				opts:       tt.opts,
				routeTable: filepath.Join(dir, "route"),
			}
			if tt.env != "-" {
				writeFile(t, cfg.envFile, tt.env)
			}
			writeFile(t, cfg.routeTable, string(routeTable(t, tt.routes...)))
			err := run(cfg, func(string) string { return "" })
			switch {
			case err != nil && tt.wantErr == nil:
				t.Errorf("run: %v", err)
			case err == nil && tt.wantErr != nil:
				t.Errorf("run succeeded, want an error containing %q", tt.wantErr)
			case err != nil:
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
			}
			got, rerr := os.ReadFile(cfg.outFile)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if string(got) != tt.wantOut {
				t.Errorf("output file:\ngot:\n%s\nwant:\n%s", got, tt.wantOut)
			}
		})
	}
}

func TestRunNoRouteTable(t *testing.T) {
	dir := t.TempDir()
	cfg := config{
		envFile:    writeFile(t, filepath.Join(dir, "subnet.env"), sampleEnvFile),
		outFile:    filepath.Join(dir, "out.env"),
		routeTable: filepath.Join(dir, "no-such-table"),
	}
	if err := run(cfg, nil); err != nil {
		t.Errorf("run with no route table: %v", err)
	}
	cfg.outFile = filepath.Join(dir, "missing-dir", "out.env")
	err := run(cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "write docker env file") || !strings.Contains(err.Error(), cfg.outFile) {
		t.Errorf("run into a missing directory: %v, want a write error naming the file", err)
	}
}

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	in := writeFile(t, filepath.Join(dir, "subnet.env"), sampleEnvFile)
	out := filepath.Join(dir, "docker_opts.env")
	tests := []struct {
		args       []string
		wantStatus int
		wantStderr []string
	}{
		{[]string{"-f", in, "-d", out}, 0, nil},
		{[]string{"-h"}, 1, []string{"prog [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]\n", "\t-m\t"}},
		{[]string{"-x"}, 1, []string{"prog: illegal option -- x\n", "prog [-f FLANNEL-ENV-FILE]"}},
		{[]string{"-f", filepath.Join(dir, "nope"), "-d", out}, 1, []string{"prog: read flannel env file: open ", "nope: no such file or directory\n"}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var stderr bytes.Buffer
			status := cli(append([]string{"prog"}, tt.args...), func(string) string { return "" }, &stderr)
			if status != tt.wantStatus {
				t.Errorf("status %d, want %d; stderr:\n%s", status, tt.wantStatus, &stderr)
			}
			if tt.wantStderr == nil && stderr.Len() > 0 {
				t.Errorf("unexpected stderr:\n%s", &stderr)
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr does not contain %q:\n%s", s, &stderr)
				}
			}
		})
	}
}

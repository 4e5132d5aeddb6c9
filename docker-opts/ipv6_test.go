package main

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/weft-net/weft/subnet"
)

// TestEnvFamilies: env files as weftd writes them for an IPv4, an IPv6-only and a dual-stack network read
// back equal (the round trip), and weft-docker-opts accepts each: the Docker options come from the IPv4
// subnet, MTU and IPMASQ, as mk-docker-opts.sh derives them (it has no IPv6 option), so an IPv6-only file
// gives no --bip and the IPv6 variables change nothing.
func TestEnvFamilies(t *testing.T) {
	p := netip.MustParsePrefix
	v4 := subnet.Env{Network: p("10.1.0.0/16"), Subnet: p("10.1.74.1/24"), MTU: 1450, IPMasq: true}
	v6 := subnet.Env{IPv6Network: p("fd00:5::/56"), IPv6Subnet: p("fd00:5:0:4a::1/64"), MTU: 1430}
	dual := v4
	dual.IPv6Network, dual.IPv6Subnet, dual.MTU = v6.IPv6Network, v6.IPv6Subnet, 1430
	tests := []struct {
		name     string
		env      subnet.Env
		wantFile string
		wantOut  string
	}{
		{"IPv4", v4,
			"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1450\"\n"},
		{"IPv6 only", v6,
			"FLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:4a::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
			"DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1430\"\nDOCKER_OPTS=\" --ip-masq=true --mtu=1430\"\n"},
		{"dual stack", dual,
			"FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_IPV6_NETWORK=fd00:5::/56\nFLANNEL_IPV6_SUBNET=fd00:5:0:4a::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
			"DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1430\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1430\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := config{envFile: filepath.Join(dir, "subnet.env"), outFile: filepath.Join(dir, "docker_opts.env"),
				routeTable: writeFile(t, filepath.Join(dir, "route"), string(routeTable(t, "eth0 0.0.0.0/0 192.0.2.1")))}
			if err := subnet.WriteEnvFile(cfg.envFile, tt.env); err != nil {
				t.Fatal(err)
			}
			if raw, _ := os.ReadFile(cfg.envFile); string(raw) != tt.wantFile {
				t.Errorf("env file:\n%s\nwant:\n%s", raw, tt.wantFile)
			}
			if back, err := subnet.ReadEnvFile(cfg.envFile); err != nil || back != tt.env {
				t.Errorf("read back %+v, %v; want %+v", back, err, tt.env)
			}
			if err := run(cfg, func(string) string { return "" }); err != nil {
				t.Fatalf("run: %v", err)
			}
			if out, _ := os.ReadFile(cfg.outFile); string(out) != tt.wantOut {
				t.Errorf("docker options:\n%s\nwant:\n%s", out, tt.wantOut)
			}
		})
	}
}

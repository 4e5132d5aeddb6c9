package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
	"github.com/weft-net/weft/subnet/etcdstore"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestAgentConfigFlagsAndEnv(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, c Config)
	}{
		{"defaults", nil, nil, func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c.Etcd.Endpoints, []string{"http://127.0.0.1:2379"}) || c.Etcd.Prefix != "/coreos.com/network" ||
				c.SubnetFile != "/run/flannel/subnet.env" || c.LeaseTTL != 24*time.Hour || c.HealthzPort != 0 ||
				!c.FwdRules || c.IPTResync != 5*time.Second || c.Reconcile != 30*time.Second || c.Log.Format != "text" {
				t.Errorf("unexpected defaults: %+v", c)
			}
		}},
		{"flags", []string{"--etcd-endpoints=http://192.0.2.2:2379,http://192.0.2.3:2379", "--iface", "eth0", "--iface=192.0.2.11",
			"--subnet-lease-ttl=10s", "--public-ip=203.0.113.4", "--log-format=json", "--healthz-port=9101"}, nil, func(t *testing.T, c Config) {
			if len(c.Etcd.Endpoints) != 2 || !reflect.DeepEqual(c.Ifaces, []string{"eth0", "192.0.2.11"}) || c.LeaseTTL != 10*time.Second ||
				c.PublicIP != netip.MustParseAddr("203.0.113.4") || c.Log.Format != "json" || c.HealthzPort != 9101 {
				t.Errorf("flags not applied: %+v", c)
			}
		}},
		{"flanneld's single-dash flags", []string{"-etcd-endpoints=http://192.0.2.2:2379", "-iface", "eth0", "-ip-masq", "-subnet-lease-ttl", "10s",
			"-etcd-prefix=/weft/x", "-node-id", "n7"}, nil, func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c.Etcd.Endpoints, []string{"http://192.0.2.2:2379"}) || !reflect.DeepEqual(c.Ifaces, []string{"eth0"}) ||
				!c.IPMasq || c.LeaseTTL != 10*time.Second || c.Etcd.Prefix != "/weft/x" || c.NodeID != "n7" {
				t.Errorf("single-dash flags not applied: %+v", c)
			}
		}},
		{"a value that starts with a dash stays a value", []string{"-iface-regex", "-eth[0-9]"}, nil, func(t *testing.T, c Config) {
			if !reflect.DeepEqual(c.IfaceRegexes, []string{"-eth[0-9]"}) {
				t.Errorf("iface-regex = %q, want [-eth[0-9]]", c.IfaceRegexes)
			}
		}},
		{"WEFTD_ environment", nil, map[string]string{"WEFTD_ETCD_PREFIX": "/weft/net", "WEFTD_IFACE": "eth1,eth2", "WEFTD_IP_MASQ": "true"}, func(t *testing.T, c Config) {
			if c.Etcd.Prefix != "/weft/net" || !reflect.DeepEqual(c.Ifaces, []string{"eth1", "eth2"}) || !c.IPMasq {
				t.Errorf("environment not applied: %+v", c)
			}
		}},
		{"FLANNELD_ environment for migration", nil, map[string]string{"FLANNELD_SUBNET_FILE": "/tmp/s.env", "FLANNELD_ETCD_PASSWORD": "pw"}, func(t *testing.T, c Config) {
			if c.SubnetFile != "/tmp/s.env" || c.Etcd.Password != "pw" {
				t.Errorf("FLANNELD_ environment not applied: %+v", c)
			}
		}},
		{"iptables-resync as flanneld's seconds", nil, map[string]string{"FLANNELD_IPTABLES_RESYNC": "7", "FLANNELD_IPTABLES_FORWARD_RULES": "false"}, func(t *testing.T, c Config) {
			if c.IPTResync != 7*time.Second || c.FwdRules {
				t.Errorf("iptables-resync = %s, forward rules %t; want 7s, false", c.IPTResync, c.FwdRules)
			}
		}},
		{"iptables-resync as a duration", []string{"--iptables-resync=1500ms"}, nil, func(t *testing.T, c Config) {
			if c.IPTResync != 1500*time.Millisecond {
				t.Errorf("iptables-resync = %s, want 1.5s", c.IPTResync)
			}
		}},
		{"WEFTD_ wins over FLANNELD_", nil, map[string]string{"FLANNELD_ETCD_PREFIX": "/f", "WEFTD_ETCD_PREFIX": "/w"}, func(t *testing.T, c Config) {
			if c.Etcd.Prefix != "/w" {
				t.Errorf("prefix = %q, want /w", c.Etcd.Prefix)
			}
		}},
		{"kube mode as kube-flannel.yml runs flanneld", []string{"--ip-masq", "--kube-subnet-mgr"},
			map[string]string{"POD_NAME": "kube-flannel-ds-x", "POD_NAMESPACE": "kube-flannel"}, func(t *testing.T, c Config) {
				k := c.Kube
				if !k.SubnetMgr || k.AnnotationPrefix != "flannel.alpha.coreos.com" || k.NetConfPath != "/etc/kube-flannel/net-conf.json" ||
					!k.SetNodeNetworkUnavailable || k.APIURL != "" || k.Kubeconfig != "" || k.PodName != "kube-flannel-ds-x" || k.PodNamespace != "kube-flannel" {
					t.Errorf("kube flags: %+v", k)
				}
			}},
		{"kube flags from FLANNELD_ environment", nil, map[string]string{"FLANNELD_KUBE_SUBNET_MGR": "true", "NODE_NAME": "n1",
			"FLANNELD_KUBECONFIG_FILE": "/k", "FLANNELD_SET_NODE_NETWORK_UNAVAILABLE": "false", "FLANNELD_KUBE_ANNOTATION_PREFIX": "example.com/weft"}, func(t *testing.T, c Config) {
			k := c.Kube
			if !k.SubnetMgr || k.NodeName != "n1" || k.Kubeconfig != "/k" || k.SetNodeNetworkUnavailable || k.AnnotationPrefix != "example.com/weft" {
				t.Errorf("kube flags: %+v", k)
			}
		}},
		{"command line wins over environment", []string{"--etcd-prefix=/cli"}, map[string]string{"WEFTD_ETCD_PREFIX": "/w"}, func(t *testing.T, c Config) {
			if c.Etcd.Prefix != "/cli" {
				t.Errorf("prefix = %q, want /cli", c.Etcd.Prefix)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := agentConfig(tt.args, envOf(tt.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestAgentConfigErrors(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--public-ip=eth0"}, nil, `invalid argument "eth0" for "--public-ip" flag: want an IPv4 address`},
		{[]string{"--public-ip=2001:db8::1"}, nil, `invalid argument "2001:db8::1" for "--public-ip" flag: want an IPv4 address`},
		{nil, map[string]string{"WEFTD_PUBLIC_IP": "eth0"}, `"eth0"`},
		{[]string{"--iface-can-reach=nowhere"}, nil, `invalid argument "nowhere" for "--iface-can-reach" flag: want an IP address`},
		{[]string{"--subnet-lease-ttl=1s"}, nil, "--subnet-lease-ttl 1s: must be at least 2s"},
		{[]string{"--healthz-port=70000"}, nil, "--healthz-port 70000"},
		{[]string{"--log-format=xml"}, nil, `--log-format "xml": want text or json`},
		{[]string{"--log-level=loud"}, nil, `--log-level "loud"`},
		{[]string{"--no-such-flag"}, nil, "unknown flag: --no-such-flag"},
		{[]string{"stray"}, nil, `unexpected argument "stray"`},
		{[]string{"--iptables-resync=0"}, nil, "--iptables-resync 0s: must be at least 100ms"},
		{[]string{"--iptables-resync=often"}, nil, "want a duration (5s) or a number of seconds (5)"},
		{nil, map[string]string{"WEFTD_SUBNET_LEASE_TTL": "soon"}, `environment WEFTD_SUBNET_LEASE_TTL="soon"`},
		{[]string{"--kube-subnet-mgr"}, map[string]string{"POD_NAME": "p"}, "--kube-subnet-mgr: set NODE_NAME, or POD_NAME and POD_NAMESPACE"},
		{[]string{"--kube-subnet-mgr", "--kube-annotation-prefix=a/b/c"}, map[string]string{"NODE_NAME": "n1"}, `--kube-annotation-prefix: annotation prefix "a/b/c": at most one slash`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := agentConfig(tt.args, envOf(tt.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	var out bytes.Buffer
	if _, err := agentConfig([]string{"--help"}, envOf(nil), &out); !errors.Is(err, errHelp) {
		t.Fatalf("--help: err = %v, want errHelp", err)
	}
	for _, want := range []string{"--etcd-endpoints", "--subnet-lease-ttl", "WEFTD_", "FLANNELD_"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q", want)
		}
	}
	c, err := agentConfig([]string{"--version"}, envOf(nil), io.Discard)
	if err != nil || !c.Version {
		t.Fatalf("--version: %v %+v", err, c)
	}
}

func TestLogValueRedactsSecrets(t *testing.T) {
	c, err := agentConfig([]string{"--etcd-password=hunter2", "--etcd-keyfile=/secret/key.pem", "--etcd-username=weft"}, envOf(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"text", "json"} {
		var b bytes.Buffer
		var h slog.Handler = slog.NewTextHandler(&b, nil)
		if format == "json" {
			h = slog.NewJSONHandler(&b, nil)
		}
		slog.New(h).Info("starting", "config", c)
		if strings.Contains(b.String(), "hunter2") || strings.Contains(b.String(), "/secret/key.pem") {
			t.Errorf("%s log leaks a secret: %s", format, b.String())
		}
		if !strings.Contains(b.String(), "weft") || !strings.Contains(b.String(), "redacted") {
			t.Errorf("%s log lacks the username or the redaction marker: %s", format, b.String())
		}
	}
}

func TestConfigSetBuild(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{"network and backend", []string{"--network=10.5.0.0/16", "--backend=vxlan"}, `{"Backend":{"Type":"vxlan"},"Network":"10.5.0.0/16"}`, ""},
		{"vxlan keys", []string{"--network=10.5.0.0/16", "--backend=vxlan", "--vni=4", "--port=4789", "--direct-routing"},
			`{"Backend":{"DirectRouting":true,"Port":4789,"Type":"vxlan","VNI":4},"Network":"10.5.0.0/16"}`, ""},
		{"ranges", []string{"--network=10.5.0.0/16", "--subnet-len=26", "--subnet-min=10.5.1.0", "--subnet-max=10.5.9.192"},
			`{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMax":"10.5.9.192","SubnetMin":"10.5.1.0"}`, ""},
		{"backend json merged with type", []string{"--network=10.5.0.0/16", `--backend-json={"VNI":7}`, "--backend=vxlan"},
			`{"Backend":{"Type":"vxlan","VNI":7},"Network":"10.5.0.0/16"}`, ""},
		{"dual stack", []string{"--network=10.5.0.0/16", "--ipv6-network=fd00:5::/48"}, `{"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Network":"10.5.0.0/16"}`, ""},
		{"IPv6 only with ranges", []string{"--disable-ipv4", "--ipv6-network=fd00:5::/48", "--ipv6-subnet-len=64", "--ipv6-subnet-min=fd00:5:0:10::", "--ipv6-subnet-max=fd00:5:0:20::"},
			`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","IPv6SubnetLen":64,"IPv6SubnetMax":"fd00:5:0:20::","IPv6SubnetMin":"fd00:5:0:10::"}`, ""},
		{"nftables", []string{"--network=10.5.0.0/16", "--enable-nftables"}, `{"EnableNFTables":true,"Network":"10.5.0.0/16"}`, ""},
		{"raw json", []string{`--json={"Network":"10.6.0.0/16"}`, "--etcd-prefix=/x"}, `{"Network":"10.6.0.0/16"}`, ""},
		{"raw json mixed", []string{`--json={"Network":"10.6.0.0/16"}`, "--network=10.5.0.0/16"}, "", "--json cannot be combined"},
		{"bad backend json", []string{`--backend-json=[1]`}, "", "--backend-json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o configSetOpts
			var ec etcdstore.Config
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			ec.AddFlags(fs)
			o.register(fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			got, err := o.build(fs)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("build = %s, %v; want %s", got, err, tt.want)
			}
			if !json.Valid(got) {
				t.Fatalf("not JSON: %s", got)
			}
		})
	}
}

func TestValidateConfigBackendKeys(t *testing.T) {
	if _, err := validateConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}`)); err != nil {
		t.Errorf("alloc config rejected: %v", err)
	}
	for _, raw := range []string{
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"vxlan"}}`,
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/48","Backend":{"Type":"host-gw"}}`,
	} {
		if _, err := validateConfig([]byte(raw)); err != nil {
			t.Errorf("IPv6 config %s rejected: %v", raw, err)
		}
	}
	_, err := validateConfig([]byte(`{"Network":"10.5.0.0/16","SubnetLen":31}`))
	if err == nil || !strings.Contains(err.Error(), "SubnetLen 31") {
		t.Errorf("err = %v, want the SubnetLen rule", err)
	}
	_, err = validateConfig([]byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"gre"}}`))
	if err == nil || !strings.Contains(err.Error(), `"gre"`) {
		t.Errorf("err = %v, want an unknown backend error naming gre", err)
	}
}

func TestPrintLeases(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	leases := []subnet.Lease{
		{Subnet: netip.MustParsePrefix("10.5.1.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.11"), BackendType: "vxlan"}, Expires: now.Add(90 * time.Second)},
		{Subnet: netip.MustParsePrefix("10.5.2.0/24"), Attrs: subnet.Attrs{PublicIP: netip.MustParseAddr("192.0.2.12")}, Reservation: true},
	}
	var b bytes.Buffer
	if err := printLeases(&b, leases, now); err != nil {
		t.Fatal(err)
	}
	want := "SUBNET       PUBLIC-IP   BACKEND  TTL-LEFT       KIND\n" +
		"10.5.1.0/24  192.0.2.11  vxlan    1m30s          lease\n" +
		"10.5.2.0/24  192.0.2.12  -        never expires  reservation\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestPrintLeasesIPv6 shows both families' subnets and public addresses once a lease has IPv6, and "-"
// for what an IPv6-only lease lacks (flannel writes its PublicIP as 0.0.0.0).
func TestPrintLeasesIPv6(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	a, p := netip.MustParseAddr, netip.MustParsePrefix
	leases := []subnet.Lease{
		{Subnet: p("10.5.1.0/24"), IPv6Subnet: p("fd00:5:0:1::/64"), Attrs: subnet.Attrs{PublicIP: a("192.0.2.11"), PublicIPv6: a("2001:db8::11"), BackendType: "vxlan"}, Expires: now.Add(90 * time.Second)},
		{IPv6Subnet: p("fd00:5:0:2::/64"), Attrs: subnet.Attrs{PublicIP: a("0.0.0.0"), PublicIPv6: a("2001:db8::12"), BackendType: "vxlan"}, Reservation: true},
	}
	var b bytes.Buffer
	if err := printLeases(&b, leases, now); err != nil {
		t.Fatal(err)
	}
	want := "SUBNET       IPV6-SUBNET      PUBLIC-IP   PUBLIC-IPV6   BACKEND  TTL-LEFT       KIND\n" +
		"10.5.1.0/24  fd00:5:0:1::/64  192.0.2.11  2001:db8::11  vxlan    1m30s          lease\n" +
		"-            fd00:5:0:2::/64  -           2001:db8::12  vxlan    never expires  reservation\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestHealthzAddr: "%s:%d" made "::1:9101" of an IPv6 --healthz-ip, which net.Listen refuses ("too many
// colons"), so weftd exited at start.
func TestHealthzAddr(t *testing.T) {
	for _, tt := range []struct {
		ip   string
		port int
		want string
	}{
		{"0.0.0.0", 9101, "0.0.0.0:9101"},
		{"::", 9101, "[::]:9101"},
		{"::1", 0, "[::1]:0"},
	} {
		c := Config{HealthzIP: tt.ip, HealthzPort: tt.port}
		if got := c.healthzAddr(); got != tt.want {
			t.Errorf("--healthz-ip %s --healthz-port %d: address %q, want %q", tt.ip, tt.port, got, tt.want)
		}
	}
}

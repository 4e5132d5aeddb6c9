package main

import (
	"strings"
	"testing"
)

// sampleVars is flannel's dist/sample_subnet.env, the input of its mk_docker_opts_test.go.
var sampleVars = map[string]string{
	"FLANNEL_NETWORK": "10.1.0.0/16",
	"FLANNEL_SUBNET":  "10.1.74.1/24",
	"FLANNEL_MTU":     "1472",
	"FLANNEL_IPMASQ":  "false",
}

func with(base map[string]string, kv ...string) map[string]string {
	m := map[string]string{}
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func without(base map[string]string, keys ...string) map[string]string {
	m := with(base)
	for _, k := range keys {
		delete(m, k)
	}
	return m
}

func env(kv ...string) func(string) string {
	m := with(nil, kv...)
	return func(k string) string { return m[k] }
}

// TestFormat is a golden table. The first five cases are flannel's mk_docker_opts_test.go, compared
// byte for byte (flannel's test ignores blank lines and trailing blanks); the output of the others was
// checked against mk-docker-opts.sh run by dash.
func TestFormat(t *testing.T) {
	tests := []struct {
		name    string
		vars    map[string]string
		opts    Options
		environ func(string) string
		want    string
	}{
		{
			name: "default (individual + combined)",
			vars: sampleVars,
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "individual only (-i)",
			vars: sampleVars,
			opts: Options{Individual: true},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
`,
		},
		{
			name: "combined only (-c)",
			vars: sampleVars,
			opts: Options{Combined: true},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "custom key (-k CUSTOM_KEY)",
			vars: sampleVars,
			opts: Options{Key: "CUSTOM_KEY"},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
CUSTOM_KEY=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "strip ip-masq (-m)",
			vars: sampleVars,
			opts: Options{NoIPMasq: true},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"
`,
		},
		{
			name: "-i -c is the default",
			vars: sampleVars,
			opts: Options{Individual: true, Combined: true},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "-m -i",
			vars: sampleVars,
			opts: Options{Individual: true, NoIPMasq: true},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_MTU="--mtu=1472"
`,
		},
		{
			name: "-k -c distro form",
			vars: sampleVars,
			opts: Options{Combined: true, Key: "DOCKER_NETWORK_OPTIONS"},
			want: `DOCKER_NETWORK_OPTIONS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "FLANNEL_IPMASQ=true turns Docker's masquerading off",
			vars: with(sampleVars, "FLANNEL_IPMASQ", "true"),
			opts: Options{Combined: true},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472"
`,
		},
		{
			name:    "existing value of the key from the environment, then two spaces",
			vars:    sampleVars,
			environ: env("DOCKER_OPTS", "--foo bar"),
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS="--foo bar  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name:    "existing value of a custom key",
			vars:    sampleVars,
			opts:    Options{Combined: true, Key: "DOCKER_NETWORK_OPTIONS"},
			environ: env("DOCKER_OPTS", "--ignored", "DOCKER_NETWORK_OPTIONS", "--debug"),
			want: `DOCKER_NETWORK_OPTIONS="--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name:    "the env file's value of the key wins over the environment",
			vars:    with(sampleVars, "DOCKER_OPTS", "--from-file"),
			opts:    Options{Combined: true},
			environ: env("DOCKER_OPTS", "--from-env"),
			want: `DOCKER_OPTS="--from-file  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
		{
			name:    "FLANNEL_ variables missing from the file come from the environment",
			vars:    without(sampleVars, "FLANNEL_MTU"),
			opts:    Options{Combined: true},
			environ: env("FLANNEL_MTU", "9000", "FLANNEL_SUBNET", "10.9.9.1/24"),
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=9000"
`,
		},
		{
			name:    "an empty variable in the file hides the environment's",
			vars:    with(sampleVars, "FLANNEL_MTU", ""),
			opts:    Options{Combined: true},
			environ: env("FLANNEL_MTU", "9000"),
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true"
`,
		},
		{
			name: "no FLANNEL_SUBNET: no --bip",
			vars: without(sampleVars, "FLANNEL_SUBNET"),
			want: `DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --ip-masq=true --mtu=1472"
`,
		},
		{
			name: "no FLANNEL_IPMASQ: no --ip-masq",
			vars: without(sampleVars, "FLANNEL_IPMASQ"),
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_MTU="--mtu=1472"
DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"
`,
		},
		{
			name: "no FLANNEL_MTU: no --mtu",
			vars: without(sampleVars, "FLANNEL_MTU"),
			opts: Options{Individual: true},
			want: `DOCKER_OPT_BIP="--bip=10.1.74.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
`,
		},
		{
			name: "empty env file: an empty combined variable",
			vars: map[string]string{},
			want: `DOCKER_OPTS=""
`,
		},
		{
			name: "empty env file, individual only: an empty output file",
			vars: map[string]string{},
			opts: Options{Individual: true},
			want: ``,
		},
		{
			name: "-m skips the FLANNEL_IPMASQ check",
			vars: with(sampleVars, "FLANNEL_IPMASQ", "yes"),
			opts: Options{NoIPMasq: true, Combined: true},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"
`,
		},
		{
			name: "IPv6 variables are ignored",
			vars: with(sampleVars, "FLANNEL_IPV6_NETWORK", "fd00:5::/48", "FLANNEL_IPV6_SUBNET", "fd00:5:0:34::1/64"),
			opts: Options{Combined: true},
			want: `DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Format(tt.vars, tt.opts, tt.environ)
			if err != nil {
				t.Fatalf("Format: %v", err)
			}
			if got != tt.want {
				t.Errorf("Format:\ngot:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestFormatErrors(t *testing.T) {
	tests := []struct {
		name string
		vars map[string]string
		opts Options
		want []string // substrings of the error
	}{
		{"FLANNEL_IPMASQ not a boolean", with(sampleVars, "FLANNEL_IPMASQ", "yes"), Options{}, []string{"FLANNEL_IPMASQ", `"yes"`, "true or false"}},
		{"FLANNEL_IPMASQ capitalised", with(sampleVars, "FLANNEL_IPMASQ", "True"), Options{}, []string{"FLANNEL_IPMASQ", `"True"`}},
		{"FLANNEL_IPMASQ numeric", with(sampleVars, "FLANNEL_IPMASQ", "1"), Options{Individual: true}, []string{"FLANNEL_IPMASQ", `"1"`}},
		{"key with a dash", sampleVars, Options{Key: "DOCKER-OPTS"}, []string{"combined key", `"DOCKER-OPTS"`, "shell variable name"}},
		{"key starting with a digit", sampleVars, Options{Key: "1OPTS"}, []string{`"1OPTS"`}},
		{"key with shell syntax", sampleVars, Options{Key: "X;rm -rf /"}, []string{"shell variable name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Format(tt.vars, tt.opts, nil)
			if err == nil {
				t.Fatalf("Format succeeded with %q, want an error", got)
			}
			if got != "" {
				t.Errorf("Format returned output %q with its error", got)
			}
			for _, s := range tt.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

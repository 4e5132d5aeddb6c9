package systemd

import (
	"slices"
	"testing"
)

func TestCommand(t *testing.T) {
	env := map[string]string{"OPTS": " --bip=10.5.3.1/24 --ip-masq=false  --mtu=1450", "EMPTY": "", "X": "a b"}
	for _, tc := range []struct {
		line string
		want []string
	}{
		{"/usr/bin/dockerd $OPTS", []string{"/usr/bin/dockerd", "--bip=10.5.3.1/24", "--ip-masq=false", "--mtu=1450"}},
		{"/usr/bin/dockerd $EMPTY", []string{"/usr/bin/dockerd"}},
		{"/usr/bin/dockerd $UNSET --debug", []string{"/usr/bin/dockerd", "--debug"}},
		{"-/bin/prog ${X}", []string{"/bin/prog", "a b"}},
		{"/bin/prog --opt=${X}/z", []string{"/bin/prog", "--opt=a b/z"}},
		{`/bin/prog "$X" 'lit $X' a\ b`, []string{"/bin/prog", "$X", "lit $X", "a b"}},
		{`@/bin/prog "say \"hi\""`, []string{"/bin/prog", `say "hi"`}},
	} {
		got, err := Command(tc.line, env)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Command(%q) = %q, %v; want %q", tc.line, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "$EMPTY", `/bin/prog "open`} {
		if got, err := Command(bad, env); err == nil {
			t.Errorf("Command(%q) = %q, want an error", bad, got)
		}
	}
}

func TestParseEnvFile(t *testing.T) {
	got, err := ParseEnvFile("# comment\nA=1\nB=\"x \\\"y\\\" z\"\n; other\nC='q r'\n\nD=\n")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"A": "1", "B": `x "y" z`, "C": "q r", "D": ""}
	if len(got) != len(want) {
		t.Errorf("ParseEnvFile = %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("ParseEnvFile: %s=%q, want %q", k, got[k], v)
		}
	}
	if _, err := ParseEnvFile("novalue\n"); err == nil {
		t.Error("ParseEnvFile(\"novalue\"): want an error")
	}
}

func TestUnitValues(t *testing.T) {
	u, err := Parse("[Service]\nExecStart=/a\nExecStart=\nExecStart=/b \\\n  --x\n[Unit]\nAfter=x.service\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Values("Service", "ExecStart"); !slices.Equal(got, []string{"/b --x"}) {
		t.Errorf("ExecStart after reset = %q, want [/b --x]", got)
	}
	if _, err := u.Value("Service", "Missing"); err == nil {
		t.Error("Value of a missing key: want an error")
	}
	if _, err := Parse("Key=outside\n"); err == nil {
		t.Error("Parse of a key outside a section: want an error")
	}
}

// The shipped units wire weft-docker-opts to dockerd: the file weftd.service's ExecStartPost writes is the
// drop-in's EnvironmentFile, and the drop-in's dockerd gets the options weft-docker-opts writes.
func TestShippedUnits(t *testing.T) {
	argv, optsFile, err := DockerOptsCommand()
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/usr/local/bin/weft-docker-opts", "-k", "DOCKER_NETWORK_OPTIONS", "-d", "/run/flannel/docker"}; !slices.Equal(argv, want) {
		t.Errorf("weftd.service ExecStartPost = %q, want %q", argv, want)
	}
	// What weft-docker-opts -k DOCKER_NETWORK_OPTIONS writes (docker-opts tests pin this format).
	opts := "DOCKER_OPT_BIP=\"--bip=10.5.3.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=false\"\nDOCKER_OPT_MTU=\"--mtu=1450\"\n" +
		"DOCKER_NETWORK_OPTIONS=\" --bip=10.5.3.1/24 --ip-masq=false --mtu=1450\"\n"
	dockerd, envFile, err := DockerdCommand(opts)
	if err != nil {
		t.Fatal(err)
	}
	if envFile != optsFile {
		t.Errorf("drop-in EnvironmentFile %s, but weftd.service writes %s", envFile, optsFile)
	}
	want := []string{"dockerd", "-H", "fd://", "--containerd=/run/containerd/containerd.sock", "--bip=10.5.3.1/24", "--ip-masq=false", "--mtu=1450"}
	if !slices.Equal(dockerd, want) {
		t.Errorf("drop-in dockerd = %q, want %q", dockerd, want)
	}
}

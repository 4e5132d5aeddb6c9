package etcdstore

import (
	"reflect"
	"testing"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
)

// TestAddFlags checks that the etcd flags write into Config, with flanneld's defaults, and that IsFlag tells
// them from a command's own flags.
func TestAddFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want Config
	}{
		{"defaults", nil, Config{Endpoints: []string{DefaultEndpoint}, Prefix: subnet.DefaultPrefix}},
		{"every flag", []string{"--etcd-endpoints=https://192.0.2.2:2379,https://192.0.2.3:2379", "--etcd-prefix=/weft/x",
			"--etcd-certfile=/c.pem", "--etcd-keyfile=/k.pem", "--etcd-cafile=/ca.pem", "--etcd-username=weft", "--etcd-password=pw"},
			Config{Endpoints: []string{"https://192.0.2.2:2379", "https://192.0.2.3:2379"}, Prefix: "/weft/x",
				CertFile: "/c.pem", KeyFile: "/k.pem", CAFile: "/ca.pem", Username: "weft", Password: "pw"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			c.AddFlags(fs)
			other := fs.String("other", "", "a command's own flag")
			if err := fs.Parse(append(tc.args, "--other=x")); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(c, tc.want) || *other != "x" {
				t.Errorf("parsed %#v (other %q), want %#v", c, *other, tc.want)
			}
			var etcd []string
			fs.VisitAll(func(f *pflag.Flag) {
				if IsFlag(f) {
					etcd = append(etcd, f.Name)
				}
			})
			want := []string{"etcd-cafile", "etcd-certfile", "etcd-endpoints", "etcd-keyfile", "etcd-password", "etcd-prefix", "etcd-username"}
			if !reflect.DeepEqual(etcd, want) {
				t.Errorf("IsFlag holds for %q, want %q", etcd, want)
			}
		})
	}
}

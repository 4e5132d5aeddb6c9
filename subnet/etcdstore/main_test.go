package etcdstore

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

// memberEnv, when set in the test binary's environment, makes it run one etcd member (etcdtest.Options in
// JSON) until SIGTERM instead of the tests: the partition test starts its members this way, each inside a
// network namespace of its own.
const memberEnv = "WEFT_TEST_ETCD_MEMBER"

func TestMain(m *testing.M) {
	if raw := os.Getenv(memberEnv); raw != "" {
		os.Exit(runMember(raw))
	}
	os.Exit(m.Run())
}

func runMember(raw string) int {
	var o etcdtest.Options
	if err := json.Unmarshal([]byte(raw), &o); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%s: %v\n", memberEnv, raw, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := etcdtest.Run(ctx, o, func(url string) { fmt.Printf("etcd member %s ready at %s\n", o.Name, url) }); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

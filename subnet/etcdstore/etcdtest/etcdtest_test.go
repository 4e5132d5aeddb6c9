package etcdtest_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/subnet/etcdstore/etcdtest"
)

func TestRestartKeepsDataAndPorts(t *testing.T) {
	s := etcdtest.Start(t)
	cli := s.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	put, err := cli.Put(ctx, "/k", "v1")
	if err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, "/k", clientv3.WithRev(put.Header.Revision+1), clientv3.WithCreatedNotify())
	if resp := <-wch; !resp.Created {
		t.Fatalf("watch: got %+v, want created", resp)
	}

	start := time.Now()
	s.Stop()
	t.Logf("stop took %s", time.Since(start))
	start = time.Now()
	s.Restart()
	t.Logf("restart took %s", time.Since(start))

	if _, err := cli.Put(ctx, "/k", "v2"); err != nil {
		t.Fatal(err)
	}
	select {
	case wr := <-wch:
		if len(wr.Events) != 1 || string(wr.Events[0].Kv.Value) != "v2" {
			t.Fatalf("watch after restart: got %+v", wr.Events)
		}
	case <-ctx.Done():
		t.Fatal("watch did not resume after restart")
	}
	resp, err := cli.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("get after restart: %v %v", resp, err)
	}
	if rev := s.Compact(t); rev < 3 {
		t.Errorf("Compact returned revision %d, want >= 3", rev)
	}
}

func TestClientCertAuth(t *testing.T) {
	s := etcdtest.Start(t, etcdtest.WithClientCertAuth())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := s.Client(t).Put(ctx, "/k", "v"); err != nil {
		t.Fatalf("with client certificate: %v", err)
	}
	cfg := s.ClientConfig()
	cfg.TLS.Certificates = nil
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	short, cancel2 := context.WithTimeout(ctx, time.Second)
	defer cancel2()
	if _, err := cli.Get(short, "/k"); err == nil {
		t.Fatal("get without a client certificate succeeded")
	}
}

func TestRun(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	ready := make(chan string, 1)
	go func() {
		done <- etcdtest.Run(ctx, etcdtest.Options{
			Dir: dir + "/data", ClientAddr: "127.0.0.1:0", PeerAddr: "127.0.0.1:0", LogFile: dir + "/log",
		}, func(u string) { ready <- u })
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatal(err)
	case <-time.After(30 * time.Second):
		t.Fatal("not ready")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

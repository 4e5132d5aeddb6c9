package udp

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProbeThroughput(t *testing.T) {
	if os.Getenv("WEFT_PROBE") == "" {
		t.Skip("probe")
	}
	cl := newCluster(t, 2)
	n1, n2 := cl.nodes[0], cl.nodes[1]
	srv := exec.Command("ip", "netns", "exec", n1.Ctr.Name, "iperf3", "-s", "-1")
	srv.Start()
	time.Sleep(300 * time.Millisecond)
	b1, b2 := n1.b.Stats(), n2.b.Stats()
	out, err := exec.Command("ip", "netns", "exec", n2.Ctr.Name, "iperf3", "-c", n1.CtrAddr.String(), "-t", "5", os.Getenv("WEFT_PROBE_ARGS")).CombinedOutput()
	t.Logf("%s %v", out, err)
	srv.Wait()
	a1, a2 := n1.b.Stats(), n2.b.Stats()
	for _, k := range []string{"tx_packets", "tun_reads", "sendmmsg_calls"} {
		t.Logf("sender %s %d", k, a2[k]-b2[k])
	}
	for _, k := range []string{"rx_packets", "recvmmsg_calls", "tun_write_errors", "socket_drops"} {
		t.Logf("receiver %s %d", k, a1[k]-b1[k])
	}
}

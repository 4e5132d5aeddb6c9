// Command weft-cluster runs a demo Weft cluster in network namespaces on one Linux host (as root), and the
// embedded etcd server that cluster uses.
//
//	weft-cluster up [--backend vxlan|udp|host-gw] [--nodes 3] [--keep] [--docker] [--weftd PATH]
//	weft-cluster down
//	weft-cluster bench [--time 3] [--reps 3] [--paths veth,host-gw,vxlan,udp,udp-nooffload] [--baseline-weftd PATH]
//	weft-cluster etcd --listen ADDR --data-dir DIR [--name N --peer ADDR --initial-cluster N=URL,...]
//
// up builds the cluster (cmd/internal/netcluster), prints the leases, proves container-to-container ICMP and TCP
// across every ordered pair of nodes and removes everything again, unless --keep; with --docker every node
// runs weft-docker-opts and dockerd as dist/systemd does, and the containers are Docker containers; down
// removes a kept cluster, using the state file up left in /run/weft-cluster; bench measures TCP throughput
// (iperf3, 1 and 4 streams), round trip (ping) and the agents' CPU between two containers over a plain veth
// pair and over each backend (udp also with its offloads off, and with a baseline weftd binary if given),
// each in its own
// 2-node cluster made and removed in turn, and prints them side by side.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

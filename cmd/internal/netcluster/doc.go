// Package netcluster builds a Weft cluster of real processes inside network namespaces on one Linux host,
// for the end-to-end tests (cmd/agent) and the demo (weft-cluster up). It never touches the host's own
// namespace: every link, address and route lives in a namespace it creates.
//
//	netns <p>-lan    bridge br0: the underlay switch (no address)
//	  ├─ veth ─ netns <p>-etcd   192.0.2.2/24   etcd (client :2379), run as `weft-cluster etcd`
//	  ├─ veth ─ netns <p>-n1     192.0.2.11/24  weftd; bridge cbr0 = FLANNEL_SUBNET (x.y.z.1/len)
//	  │                              └─ veth ─ netns <p>-n1c1  x.y.z.2, default via x.y.z.1 (a "container")
//	  ├─ veth ─ netns <p>-n2     192.0.2.12/24  ...
//	  └─ ...
//
// Start creates the whole cluster and returns once every node holds a lease, has written its env file, has
// its container attached and (with a health port) reports ready. Cluster.Close removes everything Start and
// later calls created: it stops the processes it started (by PID), deletes the namespaces and, if asked,
// the working directory. Close is idempotent and safe after a partial setup; Start calls it itself when it
// fails.
//
// With Options.EtcdMembers etcd has several members, each a process in the etcd namespace on an address of
// its own (192.0.2.2, 192.0.2.3 ...), and the agents get every member's URL.
//
// With Options.Docker every node is a Docker host instead: weft-docker-opts and a real dockerd, started as
// the units in dist/systemd start them, and a busybox container (see DockerOptions).
//
// Kube mode (the kube tier's end-to-end tests): Options.Setup replaces writing the network config to etcd
// (it starts kube-apiserver in the etcd namespace with StartService and creates the Node objects), and
// Options.AgentStore replaces the agents' --etcd-endpoints with the kube flags. Services are stopped after
// the agents and before etcd.
//
// The API returns errors and takes no testing.TB, so the demo command can use it too; tests wrap it.
package netcluster

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

const usage = `Usage:
  weft-cluster up [--backend vxlan|udp|host-gw] [--nodes 3] [--keep] [--docker] [--weftd PATH]
                              start a demo cluster in network namespaces, prove traffic, clean up;
                              --docker: a dockerd and a busybox container on each node
  weft-cluster down           remove a cluster left by "up --keep"
  weft-cluster bench [--time 5] [--reps 3] [--paths veth,host-gw,vxlan,udp]
                              measure container-to-container TCP throughput and round trip over a plain
                              veth pair (the reference) and each backend, one 2-node cluster at a time
  weft-cluster bench-scale [--peers 100,1000,4000] [--samples 100] [--rest 10s]
                              one weftd (vxlan) with N simulated peers in a local etcd: time until every
                              route is in, new lease to route p50/p99, CPU at rest, RSS
  weft-cluster etcd --listen ADDR --data-dir DIR [--name N --peer ADDR --initial-cluster N=URL,...]
                              run the embedded etcd server, or one member of a multi-member etcd (used
                              inside the cluster's etcd namespace)
Run "weft-cluster COMMAND --help" for a command's flags.
`

// errUsage marks a command-line error; usage has been printed.
var errUsage = errors.New("usage")

// run dispatches to a subcommand and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "up":
		err = cmdUp(ctx, args[1:], stdout, stderr)
	case "down":
		err = cmdDown(args[1:], stdout, stderr)
	case "bench":
		err = cmdBench(ctx, args[1:], stdout, stderr)
	case "bench-scale":
		err = cmdBenchScale(ctx, args[1:], stdout, stderr)
	case "bench-wakeup":
		err = cmdBenchWakeup(ctx, args[1:], stdout, stderr)
	case "bench-scale-node":
		err = cmdBenchScaleNode(ctx, args[1:], stdout, stderr)
	case "etcd":
		err = cmdEtcd(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "weft-cluster: unknown command %q\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "weft-cluster %s: %v\n", args[0], err)
	return 1
}

// parse parses a subcommand's flags; positional arguments are refused.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

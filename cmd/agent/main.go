// Command weftd is Weft's node agent: it leases a subnet for this node from etcd (or, with --kube-subnet-mgr,
// takes its Kubernetes Node's pod CIDR), writes the subnet env file and programs the data path to every other
// node. It also carries the operator commands (config, leases, reserve, unreserve). See the README for the
// flags.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// dispatch runs a subcommand or the agent and returns the exit code.
func dispatch(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if cmd, ok := commands[args[0]]; ok {
			if err := cmd(ctx, args[1:], cmdEnv{getenv: getenv, stdout: stdout, stderr: stderr}); err != nil {
				return report(stderr, err)
			}
			return 0
		}
	}
	cfg, err := agentConfig(args, getenv, stderr)
	if err != nil {
		return report(stderr, err)
	}
	if cfg.Version {
		fmt.Fprintln(stdout, "weftd", version)
		return 0
	}
	log, _ := cfg.Log.logger(stderr)
	if err := run(ctx, cfg, log); err != nil {
		log.Error("weftd failed", "err", err)
		return 1
	}
	return 0
}

func report(stderr io.Writer, err error) int {
	if errors.Is(err, errHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "weftd:", err)
	return 2
}

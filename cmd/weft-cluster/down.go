package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"strings"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
	"github.com/weft-net/weft/cmd/internal/netcluster"
)

// cmdDown removes a cluster left by `up --keep`: the processes and namespaces its state file names.
func cmdDown(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("weft-cluster down", flag.ContinueOnError)
	prefix := fs.String("prefix", "weft", "name prefix of the cluster's namespaces")
	if err := parse(fs, args, stderr); err != nil {
		return err
	}
	path := stateFile(*prefix)
	err := netcluster.Teardown(path)
	if errors.Is(err, iofs.ErrNotExist) {
		left, _ := kerneltest.ListNS(*prefix + "-")
		if len(left) == 0 {
			fmt.Fprintf(stdout, "No cluster %q is up.\n", *prefix)
			return nil
		}
		return fmt.Errorf("no state file %s, but these namespaces exist: %s\n"+
			"They were not made by `weft-cluster up --keep` (or its state was lost). Inspect them with `ip netns pids NAME`, "+
			"stop what runs there, and delete them with `ip netns delete NAME`", path, strings.Join(left, " "))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Cluster %q removed.\n", *prefix)
	return nil
}

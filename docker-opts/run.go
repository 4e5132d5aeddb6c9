package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/weft-net/weft/subnet"
)

// Defaults of the -d flag and of the route table the subnet is checked against.
const (
	DefaultOutFile = "/run/docker_opts.env"
	procNetRoute   = "/proc/net/route"
)

// config is the parsed command line.
type config struct {
	envFile    string  // -f; default subnet.DefaultEnvFile
	outFile    string  // -d; default DefaultOutFile
	opts       Options // -i -c -k -m
	routeTable string  // a file in /proc/net/route format; "" skips the route check
}

// errHelp is returned by parseArgs for -h and -?.
var errHelp = errors.New("help requested")

// parseArgs parses args (without the program name) like the script's `getopts "f:d:icmk:?h"`: options may
// be grouped (-ic) and an option argument may be attached (-fFILE) or separate (-f FILE); "--" ends the
// options. Unlike the script, a positional argument is an error rather than silently ending the options.
func parseArgs(args []string) (config, error) {
	cfg := config{envFile: subnet.DefaultEnvFile, outFile: DefaultOutFile, routeTable: procNetRoute}
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			switch c {
			case 'i':
				cfg.opts.Individual = true
			case 'c':
				cfg.opts.Combined = true
			case 'm':
				cfg.opts.NoIPMasq = true
			case 'h', '?':
				return config{}, errHelp
			case 'f', 'd', 'k':
				var v string
				if j+1 < len(a) {
					v = a[j+1:]
				} else if i+1 < len(args) {
					i++
					v = args[i]
				} else {
					return config{}, fmt.Errorf("option requires an argument -- %c", c)
				}
				switch c {
				case 'f':
					cfg.envFile = v
				case 'd':
					cfg.outFile = v
				case 'k':
					cfg.opts.Key = v
				}
				j = len(a) // the rest of this argument was the value
			default:
				return config{}, fmt.Errorf("illegal option -- %c", c)
			}
		}
	}
	if i < len(args) {
		return config{}, fmt.Errorf("unexpected argument %q", args[i])
	}
	return cfg, nil
}

// run reads the env file, writes the Docker env file and then, like the script, fails if the routing table
// already routes the node's subnet via a gateway. The output file is written only when the options are valid.
func run(cfg config, environ func(string) string) error {
	vars, err := subnet.ReadEnvVars(cfg.envFile)
	if err != nil {
		return fmt.Errorf("read flannel env file: %w", err)
	}
	out, err := Format(vars, cfg.opts, environ)
	if err != nil {
		return fmt.Errorf("flannel env file %s: %w", cfg.envFile, err)
	}
	// Truncate and write in place, as the script's redirections do (mode 0666 less umask for a new file).
	if err := os.WriteFile(cfg.outFile, []byte(out), 0o666); err != nil {
		return fmt.Errorf("write docker env file: %w", err)
	}
	if cfg.routeTable == "" {
		return nil
	}
	return checkRoutes(cfg.routeTable, lookup(vars, environ)("FLANNEL_SUBNET"))
}

// cli is the whole program: args include the program name. It returns the exit status: 0, or 1 after
// writing a message (and for a usage error, the usage) to stderr.
func cli(args []string, environ func(string) string, stderr io.Writer) int {
	prog := "weft-docker-opts"
	if len(args) > 0 {
		prog, args = args[0], args[1:]
	}
	cfg, err := parseArgs(args)
	if err != nil {
		if !errors.Is(err, errHelp) {
			fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		}
		usage(stderr, prog)
		return 1
	}
	if err := run(cfg, environ); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
	return 0
}

func usage(w io.Writer, prog string) {
	fmt.Fprintf(w, `%s [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
	-f	Path to flannel env file. Defaults to %s
	-d	Path to Docker env file to write to. Defaults to %s
	-i	Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
	-c	Output combined Docker options into %s var
	-k	Set the combined options key to this value (default %s=)
	-m	Do not output --ip-masq (useful for older Docker version)

`, prog, subnet.DefaultEnvFile, DefaultOutFile, DefaultKey, DefaultKey)
}

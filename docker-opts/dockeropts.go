// Command weft-docker-opts is a Go port of flannel's dist/mk-docker-opts.sh: it reads the subnet env file
// written by weftd (or flanneld) and writes Docker daemon options derived from it, as individual
// DOCKER_OPT_* variables and/or one combined variable, in the script's exact output format
// (compat.md §6).
//
// Differences from the script, all for failures the script ignores or turns into garbage: a missing or
// unparsable env file, an invalid -k name, a stray positional argument and an unwritable output file are
// errors (exit status 1) that leave the output file untouched. DOCKER_OPT_* variables inherited from the
// environment are not copied into the output.
package main

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultKey is the default name of the combined variable (-k).
const DefaultKey = "DOCKER_OPTS"

// Options selects what Format writes. They mirror mk-docker-opts.sh's flags.
type Options struct {
	Individual bool   // -i: write each option as DOCKER_OPT_<NAME>="..."; false with Combined false means both
	Combined   bool   // -c: write the combined variable; false with Individual false means both
	Key        string // -k: name of the combined variable; "" means DefaultKey
	NoIPMasq   bool   // -m: omit the --ip-masq option (and do not check FLANNEL_IPMASQ)
}

var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// option is one Docker daemon option derived from the env file.
type option struct{ name, value string }

// Format returns the content of the Docker env file for the flannel env file variables vars. A variable
// missing from vars is looked up with environ (nil: none), as the script sees both once it has sourced
// the env file; so is the current value of the combined variable, which the combined line starts with.
//
// Options are written in the order BIP, IPMASQ, MTU; each is omitted when its FLANNEL_ variable is empty.
// FLANNEL_IPMASQ must be "true" or "false" unless opts.NoIPMasq is set.
func Format(vars map[string]string, opts Options, environ func(string) string) (string, error) {
	get := lookup(vars, environ)
	key := opts.Key
	if key == "" {
		key = DefaultKey
	}
	if !shellName.MatchString(key) {
		return "", fmt.Errorf("combined key %q: must be a shell variable name ([A-Za-z_][A-Za-z0-9_]*)", key)
	}
	if !opts.Individual && !opts.Combined {
		opts.Individual, opts.Combined = true, true
	}

	// The script lists the DOCKER_OPT_ variables with `set`, which sorts them by name: BIP, IPMASQ, MTU.
	var list []option
	if v := get("FLANNEL_SUBNET"); v != "" {
		list = append(list, option{"DOCKER_OPT_BIP", "--bip=" + v})
	}
	if v := get("FLANNEL_IPMASQ"); v != "" && !opts.NoIPMasq {
		// Docker masquerades unless told not to; flannel already does when FLANNEL_IPMASQ is true.
		switch v {
		case "true":
			list = append(list, option{"DOCKER_OPT_IPMASQ", "--ip-masq=false"})
		case "false":
			list = append(list, option{"DOCKER_OPT_IPMASQ", "--ip-masq=true"})
		default:
			return "", fmt.Errorf("invalid value of FLANNEL_IPMASQ: %q: must be true or false", v)
		}
	}
	if v := get("FLANNEL_MTU"); v != "" {
		list = append(list, option{"DOCKER_OPT_MTU", "--mtu=" + v})
	}

	var b strings.Builder
	combined := get(key)
	if combined != "" {
		combined += " " // the script's separator; each option adds another leading space
	}
	for _, o := range list {
		if opts.Individual {
			fmt.Fprintf(&b, "%s=\"%s\"\n", o.name, o.value)
		}
		combined += " " + o.value
	}
	if opts.Combined {
		fmt.Fprintf(&b, "%s=\"%s\"\n", key, combined)
	}
	return b.String(), nil
}

// lookup returns a variable lookup that prefers vars (the sourced env file) over environ.
func lookup(vars map[string]string, environ func(string) string) func(string) string {
	return func(name string) string {
		if v, ok := vars[name]; ok {
			return v
		}
		if environ != nil {
			return environ(name)
		}
		return ""
	}
}

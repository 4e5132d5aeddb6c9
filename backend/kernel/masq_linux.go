package kernel

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// IPTables runs iptables (or ip6tables) through github.com/coreos/go-iptables. Each call runs the binary
// as a child of the calling thread, so it acts on that thread's network namespace at the time of the call.
// It is safe for concurrent use (iptables serialises through its lock; --wait is passed).
type IPTables struct {
	ipt    *iptables.IPTables
	path   string // the iptables (ip6tables) binary, for listing a whole table in one run
	v6     bool
	legacy bool // iptables-legacy (x_tables), not iptables-nft
}

// NewIPTables finds iptables (v6: ip6tables), its version and its mode (legacy or nf_tables).
func NewIPTables(v6 bool) (*IPTables, error) {
	proto, name := iptables.ProtocolIPv4, "iptables"
	if v6 {
		proto, name = iptables.ProtocolIPv6, "ip6tables"
	}
	ipt, err := iptables.New(iptables.IPFamily(proto))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	legacy, err := isLegacy(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &IPTables{ipt: ipt, path: path, v6: v6, legacy: legacy}, nil
}

// HasRandomFully reports whether this iptables supports MASQUERADE --random-fully (1.6.2 and later).
func (t *IPTables) HasRandomFully() bool { return t.ipt.HasRandomFully() }

// SyncChain makes the kernel match c, idempotently: the chain exists, its rules are exactly c.Rules in
// order, and c.Jump is present exactly once in its built-in chain (appended when missing). Nothing else
// is touched: other rules of the built-in chain stay as they are. When the chain's content differs
// (missing, extra, reordered or foreign rules), the desired rules are appended first and the old ones
// deleted afterwards, so the chain is never empty in between. The jump is added only after the chain is
// complete. It reports whether it changed anything.
func (t *IPTables) SyncChain(c Chain) (changed bool, err error) {
	// One listing of the table shows the chain, its rules and the jumps: a pass that finds everything in
	// place runs iptables once per table (it runs every --iptables-resync, on every node).
	tab, err := t.table(c.Table)
	if err != nil {
		return false, err
	}
	have, exists := tab[c.Name]
	if !exists {
		if err := t.ipt.NewChain(c.Table, c.Name); err != nil {
			// Lost a race with another creator? Then the chain is there, which is all we want.
			if ok, cerr := t.ipt.ChainExists(c.Table, c.Name); cerr != nil || !ok {
				return false, fmt.Errorf("create %s chain %s: %w", c.Table, c.Name, err)
			}
			if have, err = t.rules(c.Table, c.Name); err != nil {
				return true, err
			}
		}
		changed = true
	}
	if !slices.Equal(have, c.Lines()) {
		for _, r := range c.Rules {
			if err := t.ipt.Append(c.Table, r.Chain, r.Spec...); err != nil {
				return true, fmt.Errorf("%s chain %s: append %q: %w", c.Table, c.Name, r, err)
			}
		}
		for range have {
			if err := t.ipt.DeleteById(c.Table, c.Name, 1); err != nil {
				return true, fmt.Errorf("%s chain %s: delete an old rule: %w", c.Table, c.Name, err)
			}
		}
		changed = true
	}
	jumps := tab[c.Jump.Chain]
	n := 0
	for _, l := range jumps {
		if l == c.Jump.String() {
			n++
		}
	}
	switch {
	case n == 0:
		if err := t.ipt.Append(c.Table, c.Jump.Chain, c.Jump.Spec...); err != nil {
			return true, fmt.Errorf("%s chain %s: append %q: %w", c.Table, c.Jump.Chain, c.Jump, err)
		}
		changed = true
	case n > 1:
		for range n - 1 {
			if err := t.ipt.Delete(c.Table, c.Jump.Chain, c.Jump.Spec...); err != nil && !isNotExist(err) {
				return true, fmt.Errorf("%s chain %s: delete a duplicate %q: %w", c.Table, c.Jump.Chain, c.Jump, err)
			}
		}
		changed = true
	}
	return changed, nil
}

// table lists every chain of table, as `iptables -t table -S` prints it, by name: the -A lines of each chain
// that exists (has a -N or -P line).
func (t *IPTables) table(table string) (map[string][]string, error) {
	out, err := exec.Command(t.path, "-w", "-t", table, "-S").Output()
	if err != nil {
		if ee, ok := errors.AsType[*exec.ExitError](err); ok {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("list %s table: %w", table, err)
	}
	chains := map[string][]string{}
	for l := range strings.Lines(string(out)) {
		l = strings.TrimRight(l, "\n")
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "-N", "-P":
			if _, ok := chains[f[1]]; !ok {
				chains[f[1]] = nil
			}
		case "-A":
			chains[f[1]] = append(chains[f[1]], l)
		}
	}
	return chains, nil
}

// rules lists a chain's rules as `iptables -S` prints them, without the chain's own -N or -P line.
func (t *IPTables) rules(table, chain string) ([]string, error) {
	lines, err := t.ipt.List(table, chain)
	if err != nil {
		return nil, fmt.Errorf("list %s chain %s: %w", table, chain, err)
	}
	out := lines[:0]
	for _, l := range lines {
		if len(l) > 3 && l[:3] == "-A " {
			out = append(out, l)
		}
	}
	return out, nil
}

func isNotExist(err error) bool {
	e, ok := errors.AsType[*iptables.Error](err)
	return ok && e.IsNotExist()
}

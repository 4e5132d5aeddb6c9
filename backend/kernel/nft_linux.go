package kernel

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"sigs.k8s.io/knftables"
)

// nftTimeout bounds each run of the nft binary.
const nftTimeout = 30 * time.Second

// NFTables keeps Weft's chains in one nftables table (NFTTableIPv4 or NFTTableIPv6) through
// sigs.k8s.io/knftables, which runs the nft binary (1.0.1 or later). Like IPTables, each call runs nft as a
// child of the calling thread, so it acts on that thread's network namespace at the time of the call. It is
// safe for concurrent use.
type NFTables struct {
	family, table string
	nft           knftables.Interface
	path          string // the nft binary, for listing chains

	mu      sync.Mutex         // guards applied
	applied map[string]applied // by chain name: what the last SyncChain applied and then read back
}

// applied is a chain's plan (its Listing) and the kernel's listing read right after applying it.
type applied struct{ plan, listing string }

// NewNFTables finds nft and checks that it works in the calling thread's network namespace, for the table of
// the IPv4 (v6: IPv6) rules. Nothing is created yet.
func NewNFTables(v6 bool) (*NFTables, error) {
	family, table := knftables.IPv4Family, NFTTableIPv4
	if v6 {
		family, table = knftables.IPv6Family, NFTTableIPv6
	}
	path, err := exec.LookPath("nft")
	if err != nil {
		return nil, fmt.Errorf("nftables table %s: %w", table, err)
	}
	nft, err := knftables.New(family, table)
	if err != nil {
		return nil, fmt.Errorf("nftables table %s: %w", table, err)
	}
	return &NFTables{family: string(family), table: table, nft: nft, path: path, applied: map[string]applied{}}, nil
}

// HasFullyRandom reports whether the kernel and nft accept masquerade fully-random (a dry run, nothing is
// changed).
func (t *NFTables) HasFullyRandom() bool {
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	const probe = "weft-fully-random-probe"
	tx := t.nft.NewTransaction()
	tx.Add(&knftables.Table{})
	tx.Add(&knftables.Chain{
		Name: probe, Type: knftables.PtrTo(knftables.NATType),
		Hook: knftables.PtrTo(knftables.PostroutingHook), Priority: knftables.PtrTo(knftables.SNATPriority),
	})
	tx.Add(&knftables.Rule{Chain: probe, Rule: "masquerade fully-random"})
	return t.nft.Check(ctx, tx) == nil
}

// SyncChain makes the kernel match c, idempotently: the table exists and the chain has exactly c's hook,
// priority and rules. Other chains of the table, and other tables, are not touched. When the chain differs
// from the plan (missing, rules changed, added or deleted, another hook or priority), it is replaced in one
// nftables transaction: the packet path sees the old chain or the new one, never an empty or partial one.
// It reports whether the chain's content changed.
//
// It tells "unchanged" by comparing the chain as nft lists it with the listing read right after its own
// last apply of the same plan, so it does not depend on how this nft version prints rules. The first call
// for a plan therefore always applies it (and reports a change only if the listing differs afterwards).
func (t *NFTables) SyncChain(c NFTChain) (changed bool, err error) {
	if c.Family != t.family || c.Table != t.table {
		return false, fmt.Errorf("nftables chain %s: plan for table %s %s given to table %s %s", c.Name, c.Family, c.Table, t.family, t.table)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nftTimeout)
	defer cancel()
	plan := c.Listing()
	before, err := t.list(ctx, c.Name)
	if err != nil {
		return false, err
	}
	t.mu.Lock()
	last := t.applied[c.Name]
	t.mu.Unlock()
	if last.plan == plan && last.listing == before {
		return false, nil
	}

	tx := t.nft.NewTransaction()
	tx.Add(&knftables.Table{Comment: knftables.PtrTo("rules for " + t.table)})
	tx.Add(&knftables.Chain{Name: c.Name}) // so the delete below finds it whether or not it exists
	tx.Delete(&knftables.Chain{Name: c.Name})
	tx.Add(&knftables.Chain{
		Name:     c.Name,
		Type:     knftables.PtrTo(knftables.BaseChainType(c.Type)),
		Hook:     knftables.PtrTo(knftables.BaseChainHook(c.Hook)),
		Priority: knftables.PtrTo(knftables.BaseChainPriority(c.Priority)),
		Comment:  knftables.PtrTo(c.Comment),
	})
	for _, r := range c.Rules {
		tx.Add(&knftables.Rule{Chain: c.Name, Rule: r})
	}
	if err := t.nft.Run(ctx, tx); err != nil {
		return false, fmt.Errorf("nftables chain %s %s %s: replace: %w", c.Family, c.Table, c.Name, err)
	}
	after, err := t.list(ctx, c.Name)
	if err != nil {
		return true, err
	}
	t.mu.Lock()
	t.applied[c.Name] = applied{plan: plan, listing: after}
	t.mu.Unlock()
	return before != after, nil
}

// list returns `nft list chain` of the named chain in t's table; "" when the table or chain does not exist.
func (t *NFTables) list(ctx context.Context, chain string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, t.path, "list", "chain", t.family, t.table, chain)
	cmd.Env = append(os.Environ(), "LC_ALL=C") // the not-found test below reads strerror's English text
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stderr.String(), "No such file or directory") {
			return "", nil
		}
		return "", fmt.Errorf("nft list chain %s %s %s: %w: %s", t.family, t.table, chain, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

package netcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/weft-net/weft/backend/kernel/kerneltest"
)

// State is what a cluster has created: enough for Teardown to remove it from another process (weft-cluster
// down after weft-cluster up --keep).
type State struct {
	Prefix     string      `json:"prefix"`
	Dir        string      `json:"dir"`        // the cluster's working directory
	OwnDir     bool        `json:"own_dir"`    // Teardown removes Dir
	Namespaces []string    `json:"namespaces"` // in creation order; Teardown deletes them in reverse
	Procs      []ProcState `json:"procs"`
	// Cgroups are the parent cgroups of Docker containers (Options.Docker); Teardown removes them.
	Cgroups []string `json:"cgroups,omitempty"`
}

// ProcState identifies one started process. Start (from /proc/PID/stat) guards against a recycled PID.
type ProcState struct {
	Name  string   `json:"name"`
	PID   int      `json:"pid"`
	Start uint64   `json:"start"`
	Argv  []string `json:"argv"`
}

// ReadState reads a state file written by a cluster with Options.StateFile.
func ReadState(path string) (State, error) {
	var s State
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("read cluster state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("cluster state %s: %w", path, err)
	}
	return s, nil
}

func writeState(path string, s State) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write cluster state: %w", err)
	}
	return nil
}

// Teardown removes what the state file at path describes: it stops the recorded processes (SIGTERM, then
// SIGKILL after a grace period; only a PID whose start time still matches the record, so a recycled PID is
// never signalled), deletes the recorded namespaces, removes the directory if the cluster owned it, and
// finally the state file. Things already gone are not errors. It returns fs.ErrNotExist (wrapped) when
// there is no state file.
func Teardown(path string) error {
	s, err := ReadState(path)
	if err != nil {
		return err
	}
	var errs []error
	var live []ProcState
	for _, p := range s.Procs {
		if p.PID > 0 && procAlive(p.PID, p.Start) {
			if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("signal %s (pid %d): %w", p.Name, p.PID, err))
			}
			live = append(live, p)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range live {
		for procAlive(p.PID, p.Start) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if procAlive(p.PID, p.Start) {
			syscall.Kill(p.PID, syscall.SIGKILL)
			for i := 0; i < 100 && procAlive(p.PID, p.Start); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	for _, cg := range s.Cgroups {
		if err := RemoveCgroup(cg); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(s.Namespaces) - 1; i >= 0; i-- {
		if err := (&kerneltest.NS{Name: s.Namespaces[i]}).Delete(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.OwnDir && s.Dir != "" {
		if err := os.RemoveAll(s.Dir); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", s.Dir, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove cluster state: %w", err)
	}
	return nil
}

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/runbook-dev/runbook/internal/toolcache"
)

func init() {
	register(&command{name: "fleet", usage: "plan|apply|worker|approve|pause|resume|status|server|demo FLEET: roll this runbook over many deployments on Temporal (runbook fleet help)", run: runFleet})
}

// runFleet runs runbook-fleet, the fleet module's binary (Temporal's server
// and SDK live in their own module, fleet/, so that this one does not carry
// them), with RUNBOOK_BIN naming this executable: it plans and runs each
// deployment with it. The binary is runbook-fleet beside this executable,
// on PATH, or built once from the clone's fleet/ module into the tools cache.
func runFleet(ctx context.Context, env *cliEnv, args []string) error {
	bin, err := fleetBinary(env)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the runbook executable: %w", err)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(append([]string(nil), env.environ...), "RUNBOOK_BIN="+self)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, env.stdout, env.stderr
	// Ctrl-C reaches runbook-fleet too (the terminal signals the process
	// group); on SIGTERM it is passed on, and the worker interrupts its
	// deployments at a checkpoint.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 2 * time.Minute
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return &exitStatus{code: ee.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", bin, err)
	}
	return nil
}

// exitStatus passes a child's exit code on; the child printed its errors.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// fleetBinary finds runbook-fleet: $RUNBOOK_FLEET_BIN, beside this
// executable, on PATH, or in the tools cache (internal/toolcache's), built
// there from the clone's fleet/ module when missing.
func fleetBinary(env *cliEnv) (string, error) {
	if p := os.Getenv("RUNBOOK_FLEET_BIN"); p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "runbook-fleet")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("runbook-fleet"); err == nil {
		return p, nil
	}
	root, err := toolcache.RepoRoot()
	if err != nil {
		return "", &usageError{msg: "runbook-fleet is not installed and no clone of runbook is here to build it from", hint: "go build -o DIR/runbook-fleet ./cmd/runbook-fleet in the clone's fleet/ folder, DIR beside runbook or on PATH"}
	}
	key, err := sourceKey(root)
	if err != nil {
		return "", err
	}
	cache, err := toolcache.Dir()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(cache, "runbook-fleet-"+key, "runbook-fleet")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(env.stderr, "runbook: building runbook-fleet from %s into %s (Temporal's server: about 10 minutes the first time on 2 cores)\n", filepath.Join(root, "fleet"), filepath.Dir(bin))
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", err
	}
	tmp := bin + fmt.Sprintf(".tmp.%d", os.Getpid())
	build := exec.Command("go", "build", "-trimpath", "-o", tmp, "./cmd/runbook-fleet")
	build.Dir = filepath.Join(root, "fleet")
	build.Stdout, build.Stderr = env.stderr, env.stderr
	if err := build.Run(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("build runbook-fleet: %w", err)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("install runbook-fleet: %w", err)
	}
	return bin, nil
}

// sourceKey is the first 8 hex digits of the SHA-256 of the Go sources and
// module files runbook-fleet is built from (the clone's, but testdata and
// tools/): unlike a tools module's server (internal/toolcache keys those by
// go.sum), runbook-fleet is the clone's own code, so an edit must rebuild it.
func sourceKey(root string) (string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && p != root || d.Name() == "testdata" || p == filepath.Join(root, "tools")) {
			return filepath.SkipDir
		}
		if n := d.Name(); !d.IsDir() && (strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") || n == "go.mod" || n == "go.sum" || strings.HasSuffix(n, ".hcl")) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read the fleet module's sources: %w", err)
	}
	sort.Strings(files)
	h := sha256.New()
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", strings.TrimPrefix(f, root), len(raw))
		h.Write(raw)
	}
	return hex.EncodeToString(h.Sum(nil))[:8], nil
}

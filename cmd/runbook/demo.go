package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/runbooks"
)

func init() {
	register(&command{name: "demo", usage: "[--dir DIR]: rehearse the KES → Key Manager migration on embedded defaults", run: runDemo})
}

// runDemo unpacks the bundled demo runbook and key store, starts a Key
// Manager emulator, writes the change request, applies it, and leaves
// everything in one folder for a look afterwards.
func runDemo(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("demo", &cf)
	dir := fs.String("dir", "", "where to put the demo's files (default: a new temporary folder)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected argument %q", pos[0]), hint: "runbook demo [--dir DIR]"}
	}
	if *dir == "" {
		if *dir, err = os.MkdirTemp("", "runbook-demo-"); err != nil {
			return fmt.Errorf("create demo dir: %w", err)
		}
	}
	if err := unpackDemo(*dir); err != nil {
		return err
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(*dir, "key-manager")})
	if err != nil {
		return fmt.Errorf("start key manager emulator: %w", err)
	}
	defer km.Close()
	out := cf.output(env)
	out.Emit(engine.Event{Type: engine.EventRun, Message: fmt.Sprintf("runbook: demo in %s; Key Manager emulator at %s", *dir, km.URL())})

	file := filepath.Join(*dir, "demo.hcl")
	ca, err := filepath.Abs(km.CAFile())
	if err != nil {
		return fmt.Errorf("resolve the emulator's CA file: %w", err)
	}
	cf.vars = append([]string{"km_server=" + km.URL(), "km_ca=" + ca, "km_api_key=" + km.RootAPIKey()}, cf.vars...)
	s, err := openSession(env, file, &cf, true)
	if err != nil {
		return err
	}
	res, err := s.Plan(ctx, cf.options(env, "runbook demo", ""))
	if err != nil {
		return err
	}
	planDir := filepath.Join(*dir, "change-request")
	journal := defaultJournal(file)
	key, err := engine.EnsureHashKey(journal)
	if err != nil {
		return err
	}
	art, err := s.BuildPlan(res, planDir, engine.PlanMeta{Key: key})
	if err != nil {
		return err
	}
	if err := engine.WritePlanDir(planDir, art, ""); err != nil {
		return err
	}
	if err := s.Apply(ctx, cf.options(env, "runbook demo", journal)); err != nil {
		return err
	}
	out.Emit(engine.Event{Type: engine.EventSummary, Message: fmt.Sprintf(`
runbook: demo complete
  change request: %s
  journal:        %s   (runbook status %s)
  key manager:    %s (stopped; its state is kept)`, filepath.Join(planDir, engine.ChangeFile), journal, file, km.Addr())})
	return nil
}

// unpackDemo copies the embedded demo runbook and key store into dir.
func unpackDemo(dir string) error {
	return fs.WalkDir(runbooks.Demo, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		raw, err := fs.ReadFile(runbooks.Demo, p)
		if err != nil {
			return fmt.Errorf("read embedded %s: %w", p, err)
		}
		mode := os.FileMode(0o644)
		if filepath.Base(filepath.Dir(p)) == "keystore" {
			mode = 0o600 // key material, as KES stores it
		}
		if err := os.WriteFile(target, raw, mode); err != nil {
			return fmt.Errorf("unpack demo: %w", err)
		}
		return nil
	})
}

package main

import (
	"context"
	"fmt"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "unlock", usage: "[FILE]: break a lock whose owner process is gone, after showing the owner", run: runUnlock})
}

func runUnlock(_ context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("unlock", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "unlock", false)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	owner, alive, err := engine.InspectLock(journal)
	if err != nil {
		return fmt.Errorf("inspect lock: %w", err)
	}
	if owner == nil {
		fmt.Fprintf(env.stdout, "runbook: %s is not locked\n", journal)
		return nil
	}
	fmt.Fprintf(env.stdout, "lock owner: %s\n", owner)
	if alive {
		return engine.Refusef("the owner is still running; stop it (or wait) instead of breaking its lock")
	}
	if _, err := engine.BreakLock(journal); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: lock broken; continue with runbook resume or runbook rollback\n")
	return nil
}

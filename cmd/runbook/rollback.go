package main

import (
	"context"
)

func init() {
	register(&command{name: "rollback", usage: "[FILE] [--to TYPE.NAME]: undo completed steps in reverse order", run: runRollback})
}

func runRollback(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("rollback", &cf)
	to := fs.String("to", "", "keep this step and what it depends on; undo the rest")
	force := fs.Bool("force", false, "undo even what a step refuses as unsafe (it shows what it found again)")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "rollback", false)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	s, err := openFromJournal(env, journal, file, &cf)
	if err != nil {
		return err
	}
	opts := cf.options(env, "runbook rollback", journal)
	opts.Force = *force
	return s.Rollback(ctx, opts, *to)
}

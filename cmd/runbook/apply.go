package main

import (
	"context"
)

func init() {
	register(&command{name: "apply", usage: "FILE: execute the runbook, journaling every step", run: runApply})
}

func runApply(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("apply", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "apply", true)
	if err != nil {
		return err
	}
	s, err := openSession(env, file, &cf, true)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	return s.Apply(ctx, cf.options(env, "runbook apply", journal))
}

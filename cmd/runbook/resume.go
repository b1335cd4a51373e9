package main

import (
	"context"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "resume", usage: "[FILE]: continue an interrupted run from its journal", run: runResume})
}

func runResume(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("resume", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "resume", false)
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
	return s.Resume(ctx, cf.options(env, "runbook resume", journal))
}

// openFromJournal loads the runbook text the journal recorded.
func openFromJournal(env *cliEnv, journal, file string, cf *commonFlags) (*engine.Session, error) {
	s, diags, err := engine.OpenFromJournal(journal, file, cf.inputs(env))
	if s != nil {
		env.redactor = s.Redactor
		if derr := printDiags(env, s.Config.Files, diags, s.Redactor); derr != nil {
			return nil, derr
		}
	}
	return s, err
}

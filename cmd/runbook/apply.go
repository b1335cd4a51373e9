package main

import (
	"context"
	"os"
	"path/filepath"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "apply", usage: "FILE | PLANDIR: execute the runbook, or exactly a saved and approved plan", run: runApply})
}

func runApply(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("apply", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	arg, err := onePositional(pos, "apply", true)
	if err != nil {
		return err
	}
	if info, err := os.Stat(arg); err == nil && info.IsDir() {
		return applyPlanDir(ctx, env, arg, &cf)
	}
	s, err := openSession(env, arg, &cf, true)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(arg)
	if err != nil {
		return err
	}
	return s.Apply(ctx, cf.options(env, "runbook apply", journal))
}

// applyPlanDir applies a saved plan: the runbook it names, the variables it
// recorded (sensitive ones given again), its targets.
func applyPlanDir(ctx context.Context, env *cliEnv, dir string, cf *commonFlags) error {
	doc, err := engine.ReadPlanDir(dir)
	if err != nil {
		return err
	}
	if len(cf.targets) > 0 {
		return &usageError{msg: "a saved plan carries its own targets; -target cannot change them", hint: "make a new plan with the targets you want"}
	}
	file := filepath.Join(dir, filepath.FromSlash(doc.Runbook.File))
	recorded := map[string][]byte{}
	for _, v := range doc.Variables {
		if !v.Sensitive {
			recorded[v.Name] = v.Value
		}
	}
	s, err := openSessionWith(env, file, cf, recorded)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	opts := cf.options(env, "runbook apply "+dir, journal)
	opts.Targets = doc.Targets
	return s.ApplyPlan(ctx, opts, dir, doc)
}

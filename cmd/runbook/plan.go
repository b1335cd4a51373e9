package main

import (
	"context"
	"fmt"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "plan", usage: "FILE [-out DIR]: observe the real systems read-only and print what each step would do; -out writes the change request", run: runPlan})
}

func runPlan(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("plan", &cf)
	out := fs.String("out", "", "write the change request (plan.json, CHANGE.md) to this directory")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "plan", true)
	if err != nil {
		return err
	}
	s, err := openSession(env, file, &cf, true)
	if err != nil {
		return err
	}
	// Read-only: the plan reads the journal (what an earlier run did) and
	// writes nothing there.
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	res, err := s.Plan(ctx, cf.options(env, "runbook plan", journal))
	if err != nil {
		return err
	}
	if *out == "" {
		return nil
	}
	art, err := s.BuildPlan(res, *out, cf.targets)
	if err != nil {
		return err
	}
	if err := engine.WritePlanDir(*out, art); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\nrunbook: change request written to %s (%s, %s); fingerprint %s\n", *out, engine.PlanFile, engine.ChangeFile, art.Doc.Fingerprint)
	if art.Doc.Runbook.Approvals > 0 {
		fmt.Fprintf(env.stdout, "runbook: it needs %d approval(s): runbook approve %s --by NAME\n", art.Doc.Runbook.Approvals, *out)
	}
	return nil
}

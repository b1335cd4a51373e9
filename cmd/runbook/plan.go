package main

import (
	"context"
)

func init() {
	register(&command{name: "plan", usage: "FILE: observe the real systems read-only and print what each step would do", run: runPlan})
}

func runPlan(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("plan", &cf)
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
	_, err = s.Plan(ctx, cf.options(env, "runbook plan", ""))
	return err
}

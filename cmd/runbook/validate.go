package main

import (
	"context"
	"fmt"
)

func init() {
	register(&command{name: "validate", usage: "FILE: parse, type-check and graph a runbook; print every problem", run: runValidate})
}

func runValidate(_ context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("validate", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "validate", true)
	if err != nil {
		return err
	}
	s, err := openSession(env, file, &cf, false)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: %s is valid: %d block(s), %d variable(s)\n", file, len(s.Config.Blocks), len(s.Config.Variables))
	return nil
}

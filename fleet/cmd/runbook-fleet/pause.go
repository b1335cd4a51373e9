package main

import (
	"context"
	"fmt"
	"os/user"

	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "pause", usage: "FLEET [--by NAME]: start no new deployment; running ones finish", run: func(ctx context.Context, env *cliEnv, args []string) error {
		return runSignal(ctx, env, "pause", rollout.SignalPause, args)
	}})
	register(&command{name: "resume", usage: "FLEET [--by NAME]: start deployments again after a pause", run: func(ctx context.Context, env *cliEnv, args []string) error {
		return runSignal(ctx, env, "resume", rollout.SignalResume, args)
	}})
}

func runSignal(ctx context.Context, env *cliEnv, name, signal string, args []string) error {
	fs := newFlagSet(env, name)
	by := fs.String("by", "", "who pauses or resumes (default: the user name)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *by == "" {
		if u, err := user.Current(); err == nil {
			*by = u.Username
		}
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SignalWorkflow(ctx, rollout.FleetWorkflowID(f.Name), "", signal, *by); err != nil {
		return fmt.Errorf("%s the rollout of %s: %w", name, f.Name, err)
	}
	fmt.Fprintf(env.stdout, "runbook: %s sent to the rollout of %s\n", name, f.Name)
	return nil
}

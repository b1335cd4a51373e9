package main

import (
	"context"
	"fmt"
	"os"

	"go.temporal.io/sdk/worker"

	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "worker", usage: "FLEET [--host NAME] [--runbook PATH]: run the deployments whose journals this host holds, and the rollout's coordination, until interrupted", run: runWorker})
}

func runWorker(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "worker")
	host := fs.String("host", fleet.DefaultHost, "the host name the fleet file pins deployments to (their journals are here)")
	rb := fs.String("runbook", "", "the runbook executable (default: runbook fleet's own)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	bin, err := runbookExecutable(*rb)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	acts := &rollout.Activities{Runbook: bin, Log: env.stdout}
	// Every worker coordinates (fleet workflows, approval checks); only the
	// host's own run its deployments.
	coord := worker.New(c.Client, rollout.CoordinatorQueue, rollout.WorkerOptions())
	coord.RegisterWorkflow(rollout.FleetWorkflow)
	coord.RegisterActivity(acts.JudgeApproval)
	local := worker.New(c.Client, rollout.HostQueue(*host), rollout.WorkerOptions())
	local.RegisterWorkflow(rollout.DeploymentWorkflow)
	local.RegisterActivity(acts.RunDeployment)
	for _, w := range []worker.Worker{coord, local} {
		if err := w.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		defer w.Stop()
	}
	fmt.Fprintf(env.stdout, "runbook: fleet %s worker (pid %d) for host %s on Temporal at %s; runbook %s\n", f.Name, os.Getpid(), *host, c.Address, bin)
	<-ctx.Done()
	fmt.Fprintf(env.stdout, "runbook: worker stopping: running deployments are interrupted at a checkpoint and resumed by the next worker\n")
	return nil
}

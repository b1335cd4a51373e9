package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "apply", usage: "FLEET [-plan DIR] [--wait]: start the rollout of the fleet plan; refused (exit 3) while this fleet or one of its deployments runs", run: runApply})
}

// heartbeatTimeout is how long a deployment's run may stay silent before
// Temporal takes its worker for dead and retries it; the activity beats
// every second. RUNBOOK_FLEET_HEARTBEAT_TIMEOUT (a Go duration) changes it.
const heartbeatTimeout = "20s"

func runApply(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "apply")
	planDir := fs.String("plan", "", "the fleet plan directory (default .runbook-fleet/NAME/plan beside the fleet file)")
	wait := fs.Bool("wait", false, "wait for the rollout to end and print its status (a worker must run)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	if *planDir == "" {
		*planDir = defaultPlanDir(f)
	}
	doc, err := fleet.ReadPlan(*planDir)
	if errors.Is(err, os.ErrNotExist) {
		return engine.WithHint(engine.Refusef("no fleet plan in %s", *planDir), "make it with runbook fleet plan "+path)
	}
	if err != nil {
		return err
	}
	if doc.Fleet != f.Name || doc.FleetFileSHA256 != sha(f.Src) {
		return engine.WithHint(engine.Refusef("the fleet plan in %s was made from another version of %s", *planDir, path), "make a new plan with runbook fleet plan "+path)
	}
	in, err := fleetInput(doc, *planDir)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	// A deployment already run by a workflow (this fleet's earlier rollout,
	// another fleet's, or one started by hand) is refused before anything
	// starts; the child workflow's ID refuses it again if one starts now.
	var busy []string
	for _, wave := range in.Waves {
		for _, d := range wave {
			id := rollout.DeploymentWorkflowID(in.Runbook, d.Name)
			desc, err := c.DescribeWorkflowExecution(ctx, id, "")
			var nf *serviceerror.NotFound
			switch {
			case errors.As(err, &nf):
			case err != nil:
				return fmt.Errorf("look up %s: %w", id, err)
			case desc.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING:
				busy = append(busy, fmt.Sprintf("%s (workflow %s)", d.Name, id))
			}
		}
	}
	if len(busy) > 0 {
		return engine.WithHint(engine.Refusef("%d deployment(s) of this fleet are being run already: %s", len(busy), strings.Join(busy, ", ")), "wait for those runs to end (runbook fleet status shows a fleet's), then apply again")
	}
	run, err := startRollout(ctx, c, f, in)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: rollout of fleet %s started (workflow %s, run %s) on Temporal at %s\n", f.Name, run.GetID(), run.GetRunID(), c.Address)
	if !*wait {
		fmt.Fprintf(env.stdout, "runbook: workers run it: runbook fleet worker %s [--host NAME]; follow it with runbook fleet status %s\n", path, path)
		return nil
	}
	var st rollout.Status
	if err := run.Get(ctx, &st); err != nil {
		return fmt.Errorf("wait for the rollout: %w", err)
	}
	return printStatus(ctx, env, c, f, false)
}

// fleetInput is the fleet workflow's input from the fleet plan: names and
// paths only (the var files hold the secrets, on the workers' hosts).
func fleetInput(doc *fleet.PlanDoc, planDir string) (rollout.FleetInput, error) {
	abs, err := filepath.Abs(planDir)
	if err != nil {
		return rollout.FleetInput{}, err
	}
	hb, err := parseDuration(os.Getenv("RUNBOOK_FLEET_HEARTBEAT_TIMEOUT"), heartbeatTimeout)
	if err != nil {
		return rollout.FleetInput{}, &usageError{msg: "RUNBOOK_FLEET_HEARTBEAT_TIMEOUT: " + err.Error(), hint: "a Go duration such as 20s"}
	}
	in := rollout.FleetInput{Fleet: doc.Fleet, Fingerprint: doc.Fingerprint, Runbook: doc.Runbook.Name,
		MaxConcurrency: doc.Rollout.MaxConcurrency, MaxErrors: doc.Rollout.MaxErrors}
	byName := map[string]fleet.PlanDeployment{}
	for _, d := range doc.Deployments {
		byName[d.Name] = d
	}
	for _, names := range doc.Waves {
		var wave []rollout.DeploymentInput
		for _, n := range names {
			d := byName[n]
			pdoc, err := engine.ReadPlanDir(filepath.Join(abs, d.PlanDir))
			if err != nil {
				return in, err
			}
			wave = append(wave, rollout.DeploymentInput{Name: d.Name, Host: d.Host, PlanDir: filepath.Join(abs, d.PlanDir), Fingerprint: d.Fingerprint,
				RunbookFile: filepath.Join(abs, d.PlanDir, filepath.FromSlash(pdoc.Runbook.File)), VarFiles: d.VarFiles, Journal: d.Journal, HeartbeatTimeout: hb})
		}
		in.Waves = append(in.Waves, wave)
	}
	if len(doc.Rollout.ApprovalWaves) > 0 {
		in.Gate = &rollout.GateInput{Waves: doc.Rollout.ApprovalWaves, Approvers: doc.Rollout.Approvers, AllowedSigners: doc.Rollout.AllowedSigners, Author: doc.MadeBy}
		if sig, err := os.ReadFile(filepath.Join(abs, fleet.AuthorSig)); err == nil {
			in.Gate.AuthorSig = string(sig)
		}
	}
	return in, nil
}

// startRollout starts the fleet workflow, or refuses when this fleet's
// rollout runs already.
func startRollout(ctx context.Context, c *connection, f *fleet.Fleet, in rollout.FleetInput) (client.WorkflowRun, error) {
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:        rollout.FleetWorkflowID(f.Name),
		TaskQueue: rollout.CoordinatorQueue,
		// Without this, starting an ID that runs returns the running
		// execution as if it were new (Temporal's Go SDK; conflict policy
		// FAIL alone is not enough).
		WorkflowExecutionErrorWhenAlreadyStarted: true,
		WorkflowIDConflictPolicy:                 enumspb.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
		WorkflowIDReusePolicy:                    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
	}, rollout.FleetWorkflow, in)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return nil, engine.WithHint(engine.Refusef("the rollout of fleet %s is running already (workflow %s): a second one is not started", f.Name, rollout.FleetWorkflowID(f.Name)), "runbook fleet status "+f.File+" shows it; pause it with runbook fleet pause "+f.File)
	}
	if err != nil {
		return nil, fmt.Errorf("start the rollout: %w", err)
	}
	return run, nil
}

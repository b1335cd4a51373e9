package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
)

func init() {
	register(&command{name: "plan", usage: "FLEET [-out DIR] [--by NAME [--key SSH_KEY]]: a plan and change request per deployment, and the fleet plan binding them and the rollout", run: runPlan})
	register(&command{name: "validate", usage: "FLEET: check the fleet file; every problem at once, file:line:col", run: runValidate})
}

// defaultPlanDir is where plan writes and apply reads the fleet plan.
func defaultPlanDir(f *fleet.Fleet) string { return filepath.Join(f.StateDir(), "plan") }

func runValidate(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "validate")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: fleet %s is valid: %d deployment(s) in %d wave(s)\n", f.Name, len(f.Deployments), len(f.Waves()))
	return nil
}

func runPlan(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "plan")
	out := fs.String("out", "", "the fleet plan directory (default .runbook-fleet/NAME/plan beside the fleet file)")
	by := fs.String("by", "", "who makes the plan; that principal cannot approve a wave")
	key := fs.String("key", "", "the SSH key that signs the fleet plan as --by (with allowed_signers)")
	par := fs.Int("parallelism", 4, "deployments planned at once")
	rb := fs.String("runbook", "", "the runbook executable (default: runbook fleet's own)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	signed := f.Rollout.Approval != nil && f.Rollout.Approval.AllowedSigners != ""
	switch {
	case *key != "" && *by == "":
		return &usageError{msg: "--key signs the fleet plan as its author, named with --by", hint: "runbook fleet plan " + path + " --by NAME --key " + *key}
	case *key != "" && !signed:
		return &usageError{msg: "--key signs the fleet plan, but its approval block names no allowed_signers to check it against", hint: "add allowed_signers = \"FILE\" to rollout { approval { … } }, or leave out --key"}
	case signed && (*by == "" || *key == ""):
		return &usageError{msg: "the fleet names allowed signers: the fleet plan is signed by its author, who cannot approve a wave", hint: "runbook fleet plan " + path + " --by NAME --key SSH_KEY"}
	}
	bin, err := runbookExecutable(*rb)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = defaultPlanDir(f)
	}
	fmt.Fprintf(env.stdout, "runbook: planning %d deployment(s), %d at once\n", len(f.Deployments), *par)
	doc, err := fleet.Plan(ctx, f, fleet.PlanOptions{Runbook: bin, Out: *out, Parallelism: *par, By: *by, Key: *key,
		Progress: func(name string, err error) {
			if err == nil {
				fmt.Fprintf(env.stdout, "  %-24s planned\n", name)
			}
		}})
	var shared *fleet.SharedSystemsError
	if errors.As(err, &shared) {
		return err // every deployment planned; the fleet as a whole is refused
	}
	if err != nil {
		var lines []string
		refused := false
		for _, e := range unjoin(err) {
			var de *fleet.DeploymentPlanError
			if errors.As(e, &de) {
				refused = refused || de.Code == 3
				lines = append(lines, fmt.Sprintf("  %-24s %s (exit %d; %s)", de.Name, de.Msg, de.Code, filepath.Join(*out, de.Log)))
				continue
			}
			lines = append(lines, "  "+e.Error())
		}
		fmt.Fprintf(env.stderr, "runbook: error: %d deployment(s) could not be planned, so no fleet plan was written:\n%s\n", len(lines), strings.Join(lines, "\n"))
		if refused {
			return &reportedError{err: engine.Refusef("fleet plan refused")}
		}
		return &reportedError{err: err}
	}
	fmt.Fprintf(env.stdout, "\nrunbook: fleet plan written to %s (%s, %s); fingerprint %s\n", *out, fleet.PlanFile, fleet.SummaryFile, doc.Fingerprint)
	fmt.Fprintf(env.stdout, "runbook: start it with runbook fleet apply %s", path)
	if *out != defaultPlanDir(f) {
		fmt.Fprintf(env.stdout, " -plan %s", *out)
	}
	fmt.Fprintln(env.stdout)
	return nil
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "show", usage: "PLANDIR: print a saved plan and its approvals", run: runShow})
}

func runShow(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("show", nil)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	dir, err := onePositional(pos, "show", true)
	if err != nil {
		return err
	}
	doc, err := engine.ReadPlanDir(dir)
	if err != nil {
		return err
	}
	change, err := os.ReadFile(filepath.Join(dir, engine.ChangeFile))
	if err != nil {
		return fmt.Errorf("read change request: %w", err)
	}
	fmt.Fprint(env.stdout, string(change))
	approvals, err := engine.ReadApprovals(dir)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\n## Approvals\n\n")
	if len(approvals) == 0 {
		fmt.Fprintln(env.stdout, "None yet.")
	}
	for _, a := range approvals {
		state := "valid"
		if a.Fingerprint != doc.Fingerprint {
			state = "for another version of the plan: does not count"
		}
		line := fmt.Sprintf("- %s at %s (%s)", a.By, a.Time, state)
		if a.Comment != "" {
			line += ": " + a.Comment
		}
		fmt.Fprintln(env.stdout, line)
	}
	names := engine.Approvers(approvals, doc.Fingerprint)
	fmt.Fprintf(env.stdout, "\n%d of %d required approval(s)%s\n", len(names), doc.Runbook.Approvals, map[bool]string{true: ": " + strings.Join(names, ", "), false: ""}[len(names) > 0])
	return nil
}

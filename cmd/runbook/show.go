package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "show", usage: "PLANDIR: print a saved plan and its approvals, each signature checked", run: runShow})
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
	check, err := engine.CheckApprovals(dir, doc)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\n## Approvals\n\n")
	switch {
	case check.Signed && check.AuthorOK:
		fmt.Fprintf(env.stdout, "Made by %s: %s.\n\n", check.Author, check.AuthorWhy)
	case check.Signed:
		fmt.Fprintf(env.stdout, "Made by %s: NOT PROVEN: %s. No approval lets this plan apply.\n\n", map[bool]string{true: check.Author, false: "(nobody named)"}[check.Author != ""], check.AuthorWhy)
	case check.Author != "":
		fmt.Fprintf(env.stdout, "Made by %s (a name, not signed: the runbook names no allowed_signers).\n\n", check.Author)
	}
	if doc.Runbook.Approvals > 0 && !check.Signed {
		fmt.Fprintf(env.stdout, "Approvals are names anyone can type: the runbook names no allowed_signers.\n\n")
	}
	if len(check.Entries) == 0 {
		fmt.Fprintln(env.stdout, "None yet.")
	}
	for _, e := range check.Entries {
		line := fmt.Sprintf("- %s at %s (%s)", e.By, e.Time, e.Why)
		if e.Comment != "" {
			line += ": " + e.Comment
		}
		fmt.Fprintln(env.stdout, line)
	}
	fmt.Fprintf(env.stdout, "\n%s\n", approvalTally(check.Approvers, doc.Runbook.Approvals))
	return nil
}

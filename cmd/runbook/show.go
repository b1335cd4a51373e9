package main

import (
	"context"
	"fmt"

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
	// The change request shown is the one rendered from what the
	// fingerprint binds (OpenPlanDir refuses a CHANGE.md that differs).
	pd, err := engine.OpenPlanDir(dir)
	if err != nil {
		return err
	}
	doc := pd.Doc
	env.stdout.Write(pd.Change)
	check, err := engine.CheckApprovals(dir, doc)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\n## Approvals\n\n")
	// Approvals are read from approvals.jsonl, which anyone who can write
	// the plan directory can append to: every field is printed escaped, so
	// that no control character in a name or comment can paint over the
	// verdict printed beside it.
	pr := engine.Printable
	switch {
	case check.Signed && check.AuthorOK:
		fmt.Fprintf(env.stdout, "Made by %s: %s.\n\n", pr(check.Author), pr(check.AuthorWhy))
	case check.Signed:
		fmt.Fprintf(env.stdout, "Made by %s: NOT PROVEN: %s. No approval lets this plan apply.\n\n", map[bool]string{true: pr(check.Author), false: "(nobody named)"}[check.Author != ""], pr(check.AuthorWhy))
	case check.Author != "":
		fmt.Fprintf(env.stdout, "Made by %s (a name, not signed: the runbook names no allowed_signers).\n\n", pr(check.Author))
	}
	if doc.Runbook.Approvals > 0 && !check.Signed {
		fmt.Fprintf(env.stdout, "Approvals are names anyone can type: the runbook names no allowed_signers.\n\n")
	}
	if len(check.Entries) == 0 {
		fmt.Fprintln(env.stdout, "None yet.")
	}
	for _, e := range check.Entries {
		line := fmt.Sprintf("- %s at %s (%s)", pr(e.By), pr(e.Time), pr(e.Why))
		if e.Comment != "" {
			line += ": " + pr(e.Comment)
		}
		fmt.Fprintln(env.stdout, line)
	}
	fmt.Fprintf(env.stdout, "\n%s\n", approvalTally(check.Approvers, doc.Runbook.Approvals))
	return nil
}

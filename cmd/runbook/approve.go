package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "approve", usage: "PLANDIR --by NAME [--comment TEXT]: record an approval of a saved plan", run: runApprove})
}

func runApprove(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("approve", nil)
	by := fs.String("by", "", "the approver's name")
	comment := fs.String("comment", "", "a comment kept with the approval")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	dir, err := onePositional(pos, "approve", true)
	if err != nil {
		return err
	}
	if strings.TrimSpace(*by) == "" {
		return &usageError{msg: "approve needs the approver's name", hint: "runbook approve " + dir + " --by NAME"}
	}
	doc, err := engine.ReadPlanDir(dir)
	if err != nil {
		return err
	}
	a := engine.Approval{By: strings.TrimSpace(*by), Comment: *comment, Fingerprint: doc.Fingerprint, Time: time.Now().UTC().Format(time.RFC3339)}
	if err := engine.Approve(dir, a); err != nil {
		return err
	}
	approvals, err := engine.ReadApprovals(dir)
	if err != nil {
		return err
	}
	names := engine.Approvers(approvals, doc.Fingerprint)
	fmt.Fprintf(env.stdout, "runbook: %s approved %s (fingerprint %s); %d of %d required approval(s): %s\n", a.By, dir, doc.Fingerprint, len(names), doc.Runbook.Approvals, strings.Join(names, ", "))
	return nil
}

package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "approve", usage: "PLANDIR --by NAME [--key SSH_KEY] [--comment TEXT]: record an approval of a saved plan, signed with SSH_KEY where the runbook names allowed signers", run: runApprove})
}

func runApprove(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("approve", nil)
	by := fs.String("by", "", "the approver's name (with allowed signers: the principal its key is listed for)")
	key := fs.String("key", "", "the SSH key (private key, or public key of one in the agent) that signs the approval")
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
	signed := doc.Runbook.AllowedSigners != ""
	switch {
	case signed && *key == "":
		return &usageError{msg: "the runbook names allowed signers: an approval counts only when signed", hint: "runbook approve " + dir + " --by " + *by + " --key SSH_KEY (a key listed for " + *by + " in " + doc.Runbook.AllowedSigners + ")"}
	case !signed && *key != "":
		return &usageError{msg: "--key signs the approval, but the runbook names no allowed_signers to check it against", hint: "add allowed_signers = \"FILE\" to the runbook block and make the plan again, or leave out --key"}
	}
	// Nanoseconds: a saved plan is told apart from the same change planned
	// and approved again by its approvals (engine refuseApplied), and a
	// script may do both within one second.
	a := engine.Approval{By: strings.TrimSpace(*by), Comment: *comment, Fingerprint: doc.Fingerprint, Time: time.Now().UTC().Format(time.RFC3339Nano)}
	if signed {
		if a.Signature, err = engine.Sign(*key, engine.ApprovalNamespace, doc.Fingerprint); err != nil {
			return err
		}
	}
	// An approval that would not count is refused before it is recorded, with
	// the reason: the approver learns now, not at apply.
	check, err := engine.CheckApprovals(dir, doc, a)
	if err != nil {
		return err
	}
	if check.Signed && !check.AuthorOK {
		return engine.RefuseWithHint(fmt.Sprintf("make the plan again with runbook plan FILE -out %s --by NAME --key KEY", dir),
			"approval by %s not recorded: the plan's author is not proven (%s), so no approval would let it apply", engine.Printable(a.By), engine.Printable(check.AuthorWhy))
	}
	if last := check.Entries[len(check.Entries)-1]; !last.Counts {
		return engine.Refusef("approval by %s not recorded: %s", engine.Printable(a.By), engine.Printable(strings.TrimSuffix(last.Why, ": does not count")))
	}
	if err := engine.Approve(dir, a); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: %s approved %s (fingerprint %s); %s\n", engine.Printable(a.By), engine.Printable(dir), doc.Fingerprint, approvalTally(check.Approvers, doc.Runbook.Approvals))
	return nil
}

// approvalTally is "N of M required approval(s): NAMES", or, for a runbook
// that requires none (an approval is then kept as a record only), "N
// approval(s), none required: NAMES".
func approvalTally(approvers []string, required int) string {
	tally := fmt.Sprintf("%d of %d required approval(s)", len(approvers), required)
	if required == 0 {
		tally = fmt.Sprintf("%d approval(s), none required", len(approvers))
	}
	if len(approvers) > 0 {
		tally += ": " + engine.Printable(strings.Join(approvers, ", "))
	}
	return tally
}

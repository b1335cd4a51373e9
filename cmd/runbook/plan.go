package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "plan", usage: "FILE [-out DIR [--by NAME [--key SSH_KEY]]]: observe the real systems read-only and print what each step would do; -out writes the change request, made by NAME (signed with SSH_KEY where the runbook names allowed signers)", run: runPlan})
}

func runPlan(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("plan", &cf)
	out := fs.String("out", "", "write the change request (plan.json, CHANGE.md) to this directory")
	by := fs.String("by", "", "who makes the plan; that principal cannot approve it")
	key := fs.String("key", "", "the SSH key (private key, or public key of one in the agent) that signs the plan as --by")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "plan", true)
	if err != nil {
		return err
	}
	*by = strings.TrimSpace(*by)
	if *out == "" && (*by != "" || *key != "") {
		return &usageError{msg: "--by and --key name the author of a saved plan; they need -out DIR", hint: "runbook plan " + file + " -out DIR --by NAME"}
	}
	if *key != "" && *by == "" {
		return &usageError{msg: "--key signs the plan as its author, named with --by", hint: "runbook plan " + file + " -out " + *out + " --by NAME --key " + *key}
	}
	s, err := openSession(env, file, &cf, true)
	if err != nil {
		return err
	}
	if *key != "" && s.Config.AllowedSigners == "" {
		return &usageError{msg: "--key signs the plan, but the runbook names no allowed_signers to check the signature against", hint: "add allowed_signers = \"FILE\" to the runbook block, or leave out --key"}
	}
	if *out != "" && s.Config.AllowedSigners != "" && s.Config.Approvals > 0 && (*by == "" || *key == "") {
		return &usageError{msg: "the runbook names allowed signers: a saved plan is signed by its author, who cannot approve it", hint: "runbook plan " + file + " -out " + *out + " --by NAME --key SSH_KEY (a key listed for NAME in " + s.Config.AllowedSigners + ")"}
	}
	// The plan reads the journal (what an earlier run did); only -out
	// writes there, and only the hash key of sensitive values.
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	res, err := s.Plan(ctx, cf.options(env, "runbook plan", journal))
	if err != nil {
		return err
	}
	if *out == "" {
		return nil
	}
	// A new journal's key is saved only once nothing refused (a signature
	// that does not verify): a refused plan leaves nothing behind.
	hk, freshKey, err := engine.HashKeyFor(journal)
	if err != nil {
		return err
	}
	art, err := s.BuildPlan(res, *out, engine.PlanMeta{Targets: cf.targets, Key: hk, MadeBy: *by})
	if err != nil {
		return err
	}
	var sig string
	if *key != "" {
		// Signed and checked before anything is written: a plan whose author
		// is not proven would never be applied.
		if sig, err = engine.Sign(*key, engine.AuthorNamespace, art.Doc.Fingerprint); err != nil {
			return err
		}
		if _, err := engine.VerifySignature(s.Config.AllowedSignersPath(), *by, engine.AuthorNamespace, art.Doc.Fingerprint, sig); err != nil {
			return engine.Refusef("the plan's signature by %s: %s; sign with a key listed for %s", *by, err, *by)
		}
	}
	if freshKey {
		if err := hk.Save(journal); err != nil {
			return err
		}
	}
	if err := engine.WritePlanDir(*out, art, sig); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\nrunbook: change request written to %s (%s, %s); fingerprint %s\n", *out, engine.PlanFile, engine.ChangeFile, art.Doc.Fingerprint)
	if art.Doc.Runbook.Approvals > 0 {
		how := "runbook approve " + *out + " --by NAME"
		if s.Config.AllowedSigners != "" {
			how += " --key SSH_KEY"
		}
		if *by != "" {
			how += " (someone other than " + *by + ")"
		}
		fmt.Fprintf(env.stdout, "runbook: it needs %d approval(s): %s\n", art.Doc.Runbook.Approvals, how)
	}
	return nil
}

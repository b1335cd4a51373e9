package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
)

// refuseEarly is what a saved plan gives apply DIR, for apply FILE: before a
// new run does anything, every selected step is planned (read-only, quietly),
// and a step that refuses what the runbook asks (a cutover whose default key
// the enclave lacks, an object that already does not read) stops the run
// before the first side effect instead of after the steps before it ran. A
// step that cannot be planned yet is left to the run itself. A run already
// under way (resume, or apply carrying a targeted run further) is not planned
// again: its done steps would observe their own work.
func (s *Session) refuseEarly(ctx context.Context, opts Options) error {
	js, _, err := LoadJournal(opts.JournalDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if js != nil && js.Run != nil && (js.Unfinished() || s.partlyApplied(js)) {
		return nil
	}
	quiet := opts
	quiet.Output = nil
	quiet.beforeApply = true
	res, err := s.Plan(ctx, quiet)
	if err == nil || !errors.Is(err, ErrRefused) || res == nil {
		return nil
	}
	return refusedQuietly(res, "nothing ran: the plan of this runbook refuses what it asks", "runbook plan FILE shows the whole plan")
}

// refusedQuietly is the refusal of a plan made quietly (apply FILE, apply
// DIR), which printed no step: it names each step's reason and carries the
// steps' own hints before the way forward (hint).
func refusedQuietly(res *PlanResult, lead, hint string) error {
	var hints []string
	for _, ps := range res.Steps {
		hints = append(hints, ps.Hints...)
	}
	return RefuseWithHint(strings.Join(append(hints, hint), "; "), "%s (%s)", lead, stepErrors(res.Steps))
}

// ApplyPlan executes a saved, reviewed plan: under the journal lock it plans
// again, refuses (naming each change) when anything the fingerprint binds is
// different, checks the approvals, and only then applies. The journal records
// which plan ran, its steps and its approvers (a "plan" record), so that a
// later resume runs nothing the approved plans do not contain.
func (s *Session) ApplyPlan(ctx context.Context, opts Options, planDir string, reviewed *PlanDoc) error {
	defer s.releaseMemo() // what the quiet plan kept for this apply
	// A journal that is not the plan's is refused before the lock is taken
	// (which would make the journal dir); under the lock it is checked again.
	if _, err := s.planKey(opts.JournalDir, reviewed); err != nil {
		return err
	}
	return s.execute(ctx, opts, opApply, func() (*PlanRecord, error) {
		key, err := s.planKey(opts.JournalDir, reviewed)
		if err != nil {
			return nil, err
		}
		check, err := CheckApprovals(planDir, reviewed)
		if err != nil {
			return nil, err
		}
		if err := s.refuseApplied(opts.JournalDir, planDir, reviewed, check); err != nil {
			return nil, err
		}
		quiet := opts
		quiet.Output = nil
		quiet.beforeApply = true
		res, err := s.Plan(ctx, quiet)
		if errors.Is(err, ErrRefused) && res != nil {
			return nil, refusedQuietly(res, "nothing ran: observed again, the systems make a step of the plan refuse", "fix that and apply the plan again (refused as stale if what it binds changed: then make a new plan and have it reviewed)")
		}
		if err != nil {
			return nil, fmt.Errorf("observe the systems again: %w", err)
		}
		art, err := s.BuildPlan(res, planDir, PlanMeta{Targets: reviewed.Targets, Key: key, MadeBy: reviewed.MadeBy})
		if err != nil {
			return nil, err
		}
		if art.Doc.Fingerprint != reviewed.Fingerprint {
			return nil, RefuseWithHint("make a new plan and have it reviewed", "the plan in %s is stale: %s", planDir, strings.Join(DiffPlans(reviewed, art.Doc), "; "))
		}
		if err := check.Enough(planDir); err != nil {
			return nil, err
		}
		pr := &PlanRecord{Dir: planDir, Fingerprint: reviewed.Fingerprint, Targets: reviewed.Targets, MadeBy: reviewed.MadeBy, Approvers: check.Approvers, Approvals: check.Digest(), Inputs: res.Inputs}
		for _, st := range reviewed.Steps {
			pr.Steps = append(pr.Steps, st.Address)
		}
		return pr, nil
	})
}

// otherJournalHint is the way forward for a plan made with another journal.
const otherJournalHint = "apply the plan with the journal it was made with (-journal DIR), or make the plan again here"

// refuseApplied refuses a saved plan that was applied already with the same
// approvals (issue 20, input 6): replayed, it would run again what was
// reviewed for one change, after whatever happened since (a rollback,
// another change). A plan is identified by its fingerprint and the
// approvals that count for it (ApprovalCheck.Digest), so that the same
// change planned again and approved again can be applied, while neither the
// directory nor a copy of it applies twice. It looks in the journal's
// current run and the runs kept in runs/, and changes nothing.
func (s *Session) refuseApplied(journal, planDir string, reviewed *PlanDoc, check *ApprovalCheck) error {
	prev, err := findApplied(journal, reviewed.Fingerprint, check.Digest())
	switch {
	case err != nil:
		return err
	case prev == nil:
		return nil
	case prev.Archived == "":
		way := "continue that run with runbook resume or undo it with runbook rollback"
		if js, _, err := LoadJournal(journal); err == nil && js.Run != nil && js.Unfinished() {
			way = unfinishedWayOn(js)
		}
		return RefuseWithHint(way+"; to make the change again, make a new plan (runbook plan FILE -out DIR) and have it reviewed",
			"the plan in %s was applied already, in the run of %s (run %s): a saved plan applies once", planDir, journal, prev.RunID)
	}
	return RefuseWithHint("to make the change again, make a new plan (runbook plan FILE -out DIR) and have it reviewed",
		"the plan in %s was applied already, in run %s (kept in %s): a saved plan applies once", planDir, prev.RunID, prev.Archived)
}

// planKey is the journal's hash key for checking a saved plan: every plan
// names the key of the journal it was made with (it binds sensitive values,
// and that journal records the plan's use), and applies with that journal
// only.
func (s *Session) planKey(journal string, reviewed *PlanDoc) (*HashKey, error) {
	key, err := LoadHashKey(journal)
	if errors.Is(err, os.ErrNotExist) {
		return nil, RefuseWithHint(otherJournalHint, "the plan was made with the journal whose hash key is %s (it binds sensitive variables and records the plan's use), and %s has none", reviewed.HashKey, journal)
	}
	if err != nil {
		return nil, err
	}
	if key.ID() != reviewed.HashKey {
		return nil, RefuseWithHint(otherJournalHint, "the plan was made with another journal's hash key (%s; %s has %s)", reviewed.HashKey, journal, key.ID())
	}
	return key, nil
}

// checkApproved refuses, when the runbook requires approvals, to run any
// selected step that no approved plan of this run contains (the plans
// recorded in the journal, and plan, the one being applied now). An applied
// plan is consumed by its rollback: a step rolled back since runs again
// only under a plan applied now (issue 20, input 6).
func (s *Session) checkApproved(js *JournalState, plan *PlanRecord, sel map[string]bool) error {
	if s.Config.Approvals == 0 {
		return nil
	}
	approved, now := map[string]bool{}, map[string]bool{}
	for _, p := range js.Plans {
		for _, a := range p.Steps {
			approved[a] = true
		}
	}
	if plan != nil {
		for _, a := range plan.Steps {
			approved[a], now[a] = true, true
		}
	}
	var outside, undone []string
	for _, addr := range s.Graph.Order() {
		if !sel[addr] || s.Config.Block(addr).BlockType.Kind != KindStep {
			continue
		}
		switch {
		case !approved[addr]:
			outside = append(outside, addr)
		case !now[addr] && js.Step(addr).State == StateRolledBack:
			undone = append(undone, addr)
		}
	}
	// No plan is made while the run is unfinished (carriedRun): the way
	// on comes first.
	first := ""
	if js.Run != nil && js.Unfinished() {
		first = "finish this run first (" + unfinishedWayOn(js) + "), then "
	}
	switch {
	case len(undone) > 0:
		return RefuseWithHint(first+"a rolled-back step runs again only under a new plan: make one (runbook plan FILE -out DIR), have it approved, and apply it with runbook apply DIR",
			"this runbook requires %d approval(s), and the approved plan of this run that contains %s was consumed when %s rolled back: nothing ran", s.Config.Approvals, strings.Join(undone, ", "), map[bool]string{true: "it was", false: "they were"}[len(undone) == 1])
	case len(outside) > 0:
		return RefuseWithHint(first+fmt.Sprintf("make a plan that does (runbook plan FILE -target %s -out DIR), have it approved, and apply it with runbook apply DIR", outside[len(outside)-1]),
			"this runbook requires %d approval(s), and no approved plan of this run contains %s: nothing ran", s.Config.Approvals, strings.Join(outside, ", "))
	}
	return nil
}

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
	res, err := s.Plan(ctx, quiet)
	if err == nil || !errors.Is(err, ErrRefused) || res == nil {
		return nil
	}
	return RefuseWithHint("runbook plan FILE shows the whole plan", "nothing ran: the plan of this runbook refuses what it asks (%s)", stepErrors(res.Steps))
}

// ApplyPlan executes a saved, reviewed plan: under the journal lock it plans
// again, refuses (naming each change) when anything the fingerprint binds is
// different, checks the approvals, and only then applies. The journal records
// which plan ran, its steps and its approvers (a "plan" record), so that a
// later resume runs nothing the approved plans do not contain.
func (s *Session) ApplyPlan(ctx context.Context, opts Options, planDir string, reviewed *PlanDoc) error {
	return s.execute(ctx, opts, opApply, func() (*PlanRecord, error) {
		key, err := s.planKey(opts.JournalDir, reviewed)
		if err != nil {
			return nil, err
		}
		quiet := opts
		quiet.Output = nil
		res, err := s.Plan(ctx, quiet)
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
		check, err := CheckApprovals(planDir, reviewed)
		if err != nil {
			return nil, err
		}
		if err := check.Enough(planDir); err != nil {
			return nil, err
		}
		pr := &PlanRecord{Dir: planDir, Fingerprint: reviewed.Fingerprint, Targets: reviewed.Targets, MadeBy: reviewed.MadeBy, Approvers: check.Approvers, Inputs: res.Inputs}
		for _, st := range reviewed.Steps {
			pr.Steps = append(pr.Steps, st.Address)
		}
		return pr, nil
	})
}

// otherJournalHint is the way forward for a plan made with another journal.
const otherJournalHint = "apply the plan with the journal it was made with (-journal DIR), or make the plan again here"

// planKey is the journal's hash key for checking a saved plan's sensitive
// values; a plan made with another journal's key cannot be checked here.
func (s *Session) planKey(journal string, reviewed *PlanDoc) (*HashKey, error) {
	if reviewed.HashKey == "" {
		return EnsureHashKey(journal)
	}
	key, err := LoadHashKey(journal)
	if errors.Is(err, os.ErrNotExist) {
		return nil, RefuseWithHint(otherJournalHint, "the plan bound its sensitive variables with the hash key of the journal it was made with, and %s has none", journal)
	}
	if err != nil {
		return nil, err
	}
	if key.ID() != reviewed.HashKey {
		return nil, RefuseWithHint(otherJournalHint, "the plan bound its sensitive variables with another journal's hash key (%s; %s has %s)", reviewed.HashKey, journal, key.ID())
	}
	return key, nil
}

// checkApproved refuses, when the runbook requires approvals, to run any
// selected step that no approved plan of this run contains (the plans
// recorded in the journal, and plan, the one being applied now).
func (s *Session) checkApproved(js *JournalState, plan *PlanRecord, sel map[string]bool) error {
	if s.Config.Approvals == 0 {
		return nil
	}
	approved := map[string]bool{}
	plans := js.Plans
	if plan != nil {
		plans = append(append([]PlanRecord(nil), plans...), *plan)
	}
	for _, p := range plans {
		for _, a := range p.Steps {
			approved[a] = true
		}
	}
	var outside []string
	for _, addr := range s.Graph.Order() {
		if sel[addr] && s.Config.Block(addr).BlockType.Kind == KindStep && !approved[addr] {
			outside = append(outside, addr)
		}
	}
	if len(outside) == 0 {
		return nil
	}
	return RefuseWithHint(fmt.Sprintf("make a plan that does (runbook plan FILE -target %s -out DIR), have it approved, and apply it with runbook apply DIR", outside[len(outside)-1]),
		"this runbook requires %d approval(s), and no approved plan of this run contains %s: nothing ran", s.Config.Approvals, strings.Join(outside, ", "))
}

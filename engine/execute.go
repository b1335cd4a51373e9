package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Options configure a command that executes steps.
type Options struct {
	JournalDir    string
	Parallelism   int
	Targets       []string // type.name; empty means all
	Output        Output
	Command       string        // recorded as the lock owner's command
	ProgressEvery time.Duration // how often progress is shown; default 2s
	// Force lets a rollback go ahead where a step refused it as unsafe; the
	// step sees it as Run.Forced and must show its reasons again.
	Force bool
	// AfterCheckpoint, when not nil, is called with the step's address and
	// the item once a checkpoint of this command is durable. Only tests
	// set it: enginetest stops a run there.
	AfterCheckpoint func(step, item string)
	// beforeApply marks the quiet plan an apply makes first (Run.BeforeApply).
	beforeApply bool
}

// ErrInterrupted is returned when a run stopped because it was asked to
// (Ctrl-C): the journal says where, and resume continues.
var ErrInterrupted = errors.New("interrupted")

// ErrFailed is returned when at least one step failed.
var ErrFailed = errors.New("run failed")

// Apply executes the runbook: a new run, recorded in the journal.
func (s *Session) Apply(ctx context.Context, opts Options) error {
	if s.Config.Approvals > 0 {
		return RefuseWithHint("run runbook plan FILE -out DIR, have it approved with runbook approve DIR --by NAME, then runbook apply DIR", "this runbook requires %d approval(s) of a saved plan", s.Config.Approvals)
	}
	defer s.releaseMemo() // what the quiet plan kept for this apply
	// Planned before the lock is taken: a refusal leaves not even a journal
	// dir behind.
	if err := s.refuseEarly(ctx, opts); err != nil {
		return err
	}
	return s.execute(ctx, opts, opApply, nil)
}

// Resume continues the run recorded in the journal: completed steps are not
// redone; a step that was under way continues from its checkpoints.
func (s *Session) Resume(ctx context.Context, opts Options) error {
	return s.execute(ctx, opts, opResume, nil)
}

// execute is apply and resume: under the journal lock, it checks what
// check checks (apply PLANDIR: the saved plan, which it names), reads from
// the journal what to continue or begin, refuses steps no approved plan
// contains, records the start, and walks the graph applying each step.
// Everything that can refuse is checked before the journal changes: a
// refused command archives nothing and records nothing (issue 20, input 7).
func (s *Session) execute(ctx context.Context, opts Options, op operation, check func() (*PlanRecord, error)) error {
	// A mistyped -target is refused before even the journal dir is made.
	if _, err := s.selected(opts.Targets); err != nil {
		return err
	}
	x := s.newExecution(opts, op)
	release, err := x.lock()
	if err != nil {
		return err
	}
	defer release()
	var plan *PlanRecord
	if check != nil {
		if plan, err = check(); err != nil {
			return err
		}
	}
	if err := x.openJournal(); err != nil {
		return err
	}
	defer x.closeJournal()
	next, err := x.continueOrBegin()
	if err != nil {
		return err
	}
	sel, err := s.selected(next.targets)
	if err != nil {
		return err
	}
	approvedBy := x.js
	if next.archive {
		approvedBy = &JournalState{Steps: map[string]*StepState{}} // a new run: only this plan counts
	}
	if err := s.checkApproved(approvedBy, plan, sel); err != nil {
		return err
	}
	// Nothing refused: from here on the journal changes.
	key, err := EnsureHashKey(opts.JournalDir)
	if err != nil {
		return err
	}
	if err := x.begin(next); err != nil {
		return err
	}
	if err := x.recordStart(next.targets, key, plan); err != nil {
		return err
	}
	x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: %s %s (journal %s)", x.op, s.Config.Name, opts.JournalDir)})
	start := time.Now()
	return x.finish(ctx, x.walk(ctx, sel, x.applyNode), start)
}

// nextRun is what continueOrBegin decided: the targets to walk, and what
// to write before the walk (begin).
type nextRun struct {
	targets []string
	archive bool // a finished run's journal is kept beside the new one
	// widen: a partly applied run is carried further with targets (none:
	// every step), which are recorded.
	widen bool
}

// continueOrBegin reads from the journal what this command continues or
// begins, and refuses what it cannot; it writes nothing. A resume continues
// the run recorded. An apply refuses an unfinished run, carries a partly
// applied one further (it becomes a resume), or begins anew, keeping a
// finished run's journal beside the new one.
func (x *execution) continueOrBegin() (nextRun, error) {
	s, js, targets := x.s, x.js, x.opts.Targets
	switch {
	case x.op == opResume && js.Run == nil:
		return nextRun{}, RefuseWithHint("start one with runbook apply", "there is no run to resume in %s", x.dir)
	case x.op == opResume:
		if err := s.checkAgainst(js.Run, x.dir); err != nil {
			return nextRun{}, err
		}
		if len(targets) == 0 {
			targets = js.resumeTargets()
		}
	case js.Run != nil && js.Unfinished():
		return nextRun{}, RefuseWithHint(unfinishedWayOn(js), "the run started in %s is unfinished (%s)", x.dir, unfinishedSummary(js))
	case js.Run != nil && s.partlyApplied(js):
		return x.carryFurther(targets)
	case js.Run != nil:
		return nextRun{targets: targets, archive: true}, nil
	}
	return nextRun{targets: targets}, nil
}

// carryFurther makes this apply continue a targeted run that finished and
// left steps to do, so that what is done is not done again.
func (x *execution) carryFurther(targets []string) (nextRun, error) {
	ri := x.js.Run
	if sha256Hex(x.s.Config.Src) != ri.SourceSHA256 {
		return nextRun{}, RefuseWithHint("restore the runbook, or roll the run back first", "the runbook changed since the run in %s began, and that run is only partly applied", x.dir)
	}
	if err := x.s.checkAgainst(ri, x.dir); err != nil {
		return nextRun{}, err
	}
	x.op = opResume
	return nextRun{targets: targets, widen: !slices.Equal(targets, ri.Targets)}, nil
}

// begin writes what continueOrBegin decided: the finished run's journal
// archived, or the targets a partly applied run is carried further with,
// recorded before anything runs, so that a resume after this apply fails
// continues what this apply set out to do, not only the targets of the
// run's first command.
func (x *execution) begin(next nextRun) error {
	switch {
	case next.archive:
		return x.archiveJournal()
	case next.widen:
		data, _ := json.Marshal(next.targets)
		if err := x.append(&Record{Kind: RecordTargets, Data: data}); err != nil {
			return err
		}
		x.js.Run.Targets = widenTargets(x.js.Run.Targets, next.targets)
	}
	return nil
}

// recordStart writes, before any step runs, what this command begins: a
// new run (its runbook text, variables and targets), and the saved plan
// being applied.
func (x *execution) recordStart(targets []string, key *HashKey, plan *PlanRecord) error {
	if x.op == opApply {
		ri, err := x.s.runInfo(x.opts.Command, targets, key)
		if err != nil {
			return err
		}
		data, _ := json.Marshal(ri)
		if err := x.append(&Record{Kind: RecordRun, Data: data}); err != nil {
			return err
		}
		x.js.Run = ri
	}
	if plan != nil {
		data, _ := json.Marshal(plan)
		if err := x.append(&Record{Kind: RecordPlan, Data: data}); err != nil {
			return err
		}
		x.js.Plans = append(x.js.Plans, *plan)
	}
	x.bound = map[string]string{}
	for _, p := range x.js.Plans {
		maps.Copy(x.bound, p.Inputs)
	}
	return nil
}

// resumeTargets is what a resume without -target continues: the targets of
// the run and of every saved plan applied in it; none means every step.
func (js *JournalState) resumeTargets() []string {
	all := js.Run.Targets
	if len(all) == 0 {
		return nil
	}
	for _, p := range js.Plans {
		if len(p.Targets) == 0 {
			return nil
		}
		all = append(all, p.Targets...)
	}
	return all
}

// partlyApplied reports whether a finished run left steps of this runbook
// pending (it was targeted) and undid none.
func (s *Session) partlyApplied(js *JournalState) bool {
	done, pending := 0, 0
	for _, addr := range s.Graph.Nodes {
		if s.Config.Block(addr).BlockType.Kind != KindStep {
			continue
		}
		switch js.Step(addr).State {
		case StateDone:
			done++
		case StatePending:
			pending++
		default:
			return false
		}
	}
	return done > 0 && pending > 0
}

// unfinishedWayOn says how an unfinished run goes on, by the states its
// steps were left in: a rollback left mid-way is finished by rollback
// (resume would apply the step again, undoing the undo); a step waiting
// for the operator wants what it asked first.
func unfinishedWayOn(js *JournalState) string {
	var waiting bool
	for _, st := range js.Steps {
		switch st.State {
		case StateRollingBack:
			return "its rollback is unfinished: runbook rollback finishes it, with the same --to STEP if it had one (runbook resume would apply the step again)"
		case StateWaiting:
			waiting = true
		}
	}
	if waiting {
		return "do what the waiting step asked (runbook status shows it), then continue with runbook resume, or undo it with runbook rollback"
	}
	return "continue it with runbook resume, or undo it with runbook rollback"
}

// unfinishedSummary names the steps left mid-way: "addr state, …".
func unfinishedSummary(js *JournalState) string {
	var parts []string
	for _, a := range js.Order {
		if st := js.Steps[a]; midway(st.State) {
			parts = append(parts, a+" "+string(st.State))
		}
	}
	return strings.Join(parts, ", ")
}

// finish reports how the walk ended and returns the command's error: a
// refusal first (exit 3), then the first failure, a wait for the operator,
// or an interruption.
func (x *execution) finish(ctx context.Context, errs map[string]error, start time.Time) error {
	var failed, waiting []string
	interrupted := ctx.Err() != nil
	for _, addr := range x.s.Graph.Order() {
		if err, ok := errs[addr]; ok {
			if errors.Is(err, ErrInterrupted) {
				interrupted = true
				continue
			}
			if errors.Is(err, ErrWaiting) {
				waiting = append(waiting, addr)
				continue
			}
			failed = append(failed, addr)
		}
	}
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case len(failed) > 0:
		x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: %d step(s) failed after %s: %s", len(failed), took, strings.Join(failed, ", "))})
		for _, f := range failed {
			if errors.Is(errs[f], ErrRefused) {
				return fmt.Errorf("%s: %w", f, errs[f])
			}
		}
		return fmt.Errorf("%w: %s: %w", ErrFailed, failed[0], errs[failed[0]])
	case len(waiting) > 0:
		x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: %s waiting for the operator after %s: do what it says, then runbook resume", strings.Join(waiting, ", "), took)})
		return fmt.Errorf("%s: %w", waiting[0], errs[waiting[0]])
	case interrupted:
		x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: interrupted after %s; the journal holds every completed step and checkpoint: continue with runbook resume", took)})
		return ErrInterrupted
	}
	x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: complete in %s", took)})
	return nil
}

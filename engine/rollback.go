package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// OpenFromJournal prepares a session for resume or rollback from the journal
// alone: the runbook text recorded when the run began, with the variables
// checked against what was recorded. When file is not empty, its current text
// must still be the recorded one.
func OpenFromJournal(dir, file string, in VarInputs) (*Session, hcl.Diagnostics, error) {
	js, _, err := LoadJournal(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, Refusef("there is no journal in %s: nothing was run with this runbook yet", dir)
	}
	if err != nil {
		return nil, nil, err
	}
	if js.Run == nil {
		return nil, nil, Refusef("the journal in %s records no run", dir)
	}
	if file != "" {
		cur, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, fmt.Errorf("read runbook: %w", err)
		}
		if sha256Hex(cur) != js.Run.SourceSHA256 {
			return nil, nil, RefuseWithHint("restore the file (the journal holds its text), or roll the run back first", "%s changed since the run began; the journal's copy is what ran", file)
		}
	}
	// The recorded values of ordinary variables count least: the operator
	// may omit them, and one given differently is refused by checkAgainst.
	in.Recorded = js.Run.Vars
	s, diags := Open(js.Run.Runbook, []byte(js.Run.Source), in, false)
	if diags.HasErrors() {
		return s, diags, nil
	}
	if err := s.checkAgainst(js.Run, dir); err != nil {
		return s, diags, err
	}
	return s, diags, nil
}

// Rollback undoes the steps of the journal's run in reverse dependency order,
// each from its journal records. With to set, that step and what it depends
// on are kept and everything else is undone.
func (s *Session) Rollback(ctx context.Context, opts Options, to string) error {
	// A --to that names no block or a step not done is refused before the
	// lock is taken and the journal opened (which repairs a torn tail):
	// a refused command changes nothing.
	if js, _, err := LoadJournal(opts.JournalDir); err == nil {
		if _, err := s.keptBy(js, to); err != nil {
			return err
		}
	}
	x := s.newExecution(opts, opRollback)
	release, err := x.lock()
	if err != nil {
		return err
	}
	defer release()
	if err := x.openJournal(); err != nil {
		return err
	}
	defer x.closeJournal()
	keep, err := s.keptBy(x.js, to)
	if err != nil {
		return err
	}
	if err := x.restoreScope(); err != nil {
		return err
	}
	undo := x.toUndo(keep)
	x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: rollback %s (journal %s): %d step(s) to undo", s.Config.Name, opts.JournalDir, len(undo))})
	start := time.Now()
	for _, addr := range undo {
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		if err := x.rollbackStep(ctx, addr); err != nil {
			x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: rollback stopped at %s: the steps before it in this list are undone, the rest are not", addr)})
			return err
		}
	}
	x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: rollback complete in %s", time.Since(start).Round(time.Millisecond))})
	return nil
}

// keptBy is what rollback --to keeps: that step, which must be done, and
// what it depends on. None when to is empty.
func (s *Session) keptBy(js *JournalState, to string) (map[string]bool, error) {
	keep := map[string]bool{}
	if to == "" {
		return keep, nil
	}
	if s.Config.Block(to) == nil {
		return nil, fmt.Errorf("--to %q: no such block in the runbook (write it as type.name)", to)
	}
	if st := js.Step(to); st.State != StateDone {
		return nil, RefuseWithHint("roll back to a completed step", "--to %s: that step is %s, not done", to, st.State)
	}
	keep[to] = true
	for a := range s.Graph.Ancestors(to) {
		keep[a] = true
	}
	return keep, nil
}

// restoreScope decodes every connection and restores every started step's
// recorded outputs, so that a rollback evaluates each step's configuration
// as apply did.
func (x *execution) restoreScope() error {
	for _, addr := range x.s.Graph.Order() {
		b := x.cfg.Block(addr)
		if b.BlockType.Kind == KindConnection {
			if err := x.s.decodeConnection(b); err != nil {
				return err
			}
			continue
		}
		if st := x.js.Step(addr); st.State != StatePending && st.State != StateRolledBack {
			outs, err := x.restoreOutputs(addr, st.Outputs)
			if err != nil {
				return err
			}
			x.s.Scope.SetOutputs(addr, outs)
		}
	}
	return nil
}

// toUndo lists the steps to roll back, dependents first: every step the
// run started and did not undo yet, except those kept.
func (x *execution) toUndo(keep map[string]bool) []string {
	order := x.s.Graph.Order()
	var undo []string
	for i := len(order) - 1; i >= 0; i-- {
		addr := order[i]
		st := x.js.Step(addr)
		if x.cfg.Block(addr).BlockType.Kind == KindConnection || keep[addr] || st.State == StatePending || st.State == StateRolledBack {
			continue
		}
		undo = append(undo, addr)
	}
	return undo
}

// rollbackStep undoes one step from its journal records, recording that
// it is rolling back, then rolled back. A step refusing for safety is
// recorded as it was before.
func (x *execution) rollbackStep(ctx context.Context, addr string) error {
	st := x.js.Step(addr)
	inst, d, diags := x.s.decode(x.cfg.Block(addr))
	if diags.HasErrors() {
		return fmt.Errorf("decode %s for rollback: %w", addr, diagsError(diags))
	}
	outs, err := x.restoreOutputs(addr, st.Outputs)
	if err != nil {
		return err
	}
	r := x.newRun(addr, d, st, outs)
	if err := x.setState(addr, StateRollingBack, nil, nil); err != nil {
		return err
	}
	started := time.Now()
	if err := x.undo(ctx, inst, r, st); err != nil {
		return err
	}
	if err := x.append(&Record{Kind: RecordState, Step: addr, State: StateRolledBack}); err != nil {
		return err
	}
	// Secrets of an undone step are of no further use; backups stay for the operator.
	for name := range x.cfg.Block(addr).BlockType.Outputs {
		os.Remove(r.secretPath(name))
	}
	x.emit(Event{Type: EventState, Step: addr, State: StateRolledBack, Duration: time.Since(started).Round(time.Millisecond).String()})
	return nil
}

// undo calls the step's Rollback, if it has one. A failure is noted in the
// journal; a refusal comes before the rollback changes anything
// (Rollbacker), so the step's state goes back to what it was, not half
// undone.
func (x *execution) undo(ctx context.Context, inst Block, r *Run, st *StepState) error {
	rb, ok := inst.(Rollbacker)
	if !ok {
		r.Logf("nothing to undo")
		return nil
	}
	err := rb.Rollback(ctx, r)
	if err == nil {
		return nil
	}
	x.emit(Event{Type: EventState, Step: r.Addr, State: StateRollbackFailed, Error: err.Error(), Hints: Hints(err)})
	if e := x.append(&Record{Kind: RecordNote, Step: r.Addr, Error: err.Error()}); e != nil {
		return e
	}
	if errors.Is(err, ErrRefused) {
		if e := x.append(&Record{Kind: RecordState, Step: r.Addr, State: st.State, Error: st.Error}); e != nil {
			return e
		}
	}
	return fmt.Errorf("roll back %s: %w", r.Addr, err)
}

package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// OpenFromJournal prepares a session for resume or rollback from the journal
// alone: the runbook text recorded when the run began, with the variables
// checked against what was recorded. When file is not empty, its current text
// must still be the recorded one.
func OpenFromJournal(dir, file string, in VarInputs) (*Session, hcl.Diagnostics, error) {
	records, _, err := ReadJournal(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, Refusef("there is no journal in %s: nothing was run with this runbook yet", dir)
		}
		return nil, nil, err
	}
	js, err := Replay(records)
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
			return nil, nil, Refusef("%s changed since the run began; the journal's copy is what ran. Restore the file (the journal holds its text), or roll the run back first", file)
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
	x := s.newExecution(opts)
	if err := EnsureJournalDir(opts.JournalDir); err != nil {
		return err
	}
	lock, err := AcquireLock(opts.JournalDir, opts.Command)
	if err != nil {
		return err
	}
	defer lock.Release()
	x.reportTakeover(lock)
	if err := x.openJournal(); err != nil {
		return err
	}
	defer x.j.Close()
	js := x.js
	keep := map[string]bool{}
	if to != "" {
		if s.Config.Block(to) == nil {
			return fmt.Errorf("--to %q: no such block in the runbook (write it as type.name)", to)
		}
		if js.Step(to).State != StateDone {
			return Refusef("--to %s: that step is %s, not done; roll back to a completed step", to, js.Step(to).State)
		}
		keep[to] = true
		for a := range s.Graph.Ancestors(to) {
			keep[a] = true
		}
	}
	// Every connection is decoded, and every completed step's outputs restored,
	// so that a rollback can evaluate its configuration as apply did.
	for _, addr := range s.Graph.Order() {
		b := s.Config.Block(addr)
		if b.BlockType.Kind == KindConnection {
			inst := b.BlockType.New()
			if _, diags := s.Scope.Decode(b, inst.Config()); diags.HasErrors() {
				return fmt.Errorf("decode %s: %w", addr, diagsError(diags))
			}
			s.Scope.SetConnection(addr, inst)
			continue
		}
		if st := js.Step(addr); st.State != StatePending && st.State != StateRolledBack {
			outs, err := x.restoreOutputs(addr, st.Outputs)
			if err != nil {
				return err
			}
			s.Scope.SetOutputs(addr, outs)
		}
	}
	order := s.Graph.Order()
	var undo []string
	for i := len(order) - 1; i >= 0; i-- {
		addr := order[i]
		b := s.Config.Block(addr)
		st := js.Step(addr)
		if b.BlockType.Kind == KindConnection || keep[addr] || st.State == StatePending || st.State == StateRolledBack {
			continue
		}
		undo = append(undo, addr)
	}
	x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: rollback %s (journal %s): %d step(s) to undo", s.Config.Name, opts.JournalDir, len(undo))})
	start := time.Now()
	for _, addr := range undo {
		if ctx.Err() != nil {
			return ErrInterrupted
		}
		if err := x.rollbackStep(ctx, addr, js.Step(addr)); err != nil {
			x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: rollback stopped at %s: the steps before it in this list are undone, the rest are not", addr)})
			return err
		}
	}
	x.emit(Event{Type: EventSummary, Message: fmt.Sprintf("runbook: rollback complete in %s", time.Since(start).Round(time.Millisecond))})
	return nil
}

func (x *execution) rollbackStep(ctx context.Context, addr string, st *StepState) error {
	b := x.cfg.Block(addr)
	inst := b.BlockType.New()
	d, diags := x.s.Scope.Decode(b, inst.Config())
	if diags.HasErrors() {
		return fmt.Errorf("decode %s for rollback: %w", addr, diagsError(diags))
	}
	outs, err := x.restoreOutputs(addr, st.Outputs)
	if err != nil {
		return err
	}
	r := &Run{Addr: addr, Decoded: d, x: x, checkpoints: map[string]json.RawMessage{}, outputs: map[string]cty.Value{}, resumed: true}
	for k, v := range st.Checkpoints {
		r.checkpoints[k] = v
	}
	r.order = append(r.order, st.Order...)
	for k, v := range outs {
		r.outputs[k] = v
	}
	if err := x.setState(addr, StateRollingBack, nil, nil); err != nil {
		return err
	}
	started := time.Now()
	if rb, ok := inst.(Rollbacker); ok {
		if err := rb.Rollback(ctx, r); err != nil {
			x.emit(Event{Type: EventState, Step: addr, State: "rollback failed", Error: err.Error()})
			if e := x.append(&Record{Kind: "note", Step: addr, Error: err.Error()}); e != nil {
				return e
			}
			if errors.Is(err, ErrRefused) {
				// A refusal comes before the rollback changes anything
				// (Rollbacker): the step is as it was, not half undone.
				if e := x.append(&Record{Kind: "state", Step: addr, State: st.State, Error: st.Error}); e != nil {
					return e
				}
			}
			return fmt.Errorf("roll back %s: %w", addr, err)
		}
	} else {
		r.Logf("nothing to undo")
	}
	if err := x.append(&Record{Kind: "state", Step: addr, State: StateRolledBack}); err != nil {
		return err
	}
	// Secrets of an undone step are of no further use; backups stay for the operator.
	for name := range x.cfg.Block(addr).BlockType.Outputs {
		os.Remove(filepath.Join(x.dir, "secrets", addr+"."+name))
	}
	x.emit(Event{Type: EventState, Step: addr, State: StateRolledBack, Duration: time.Since(started).Round(time.Millisecond).String()})
	return nil
}

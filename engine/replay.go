package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// State is where a step is, as the journal records it ("state" records)
// and output reports it.
type State string

// Step states, as the journal records them.
const (
	StatePending     State = "pending" // never started, or not in the journal
	StateRunning     State = "running" // an attempt began (data: its number)
	StateDone        State = "done"
	StateFailed      State = "failed"
	StateInterrupted State = "interrupted" // stopped by Ctrl-C
	StateRollingBack State = "rolling_back"
	StateRolledBack  State = "rolled_back"
	// StateWaiting: the step handed work to the operator (for example a
	// Kubernetes patch to apply) and resume continues once it is done.
	StateWaiting State = "waiting"
)

// States output reports and the journal never records.
const (
	StateSkipped        State = "skipped"  // a dependency did not complete
	StateRetrying       State = "retrying" // an attempt failed; another follows
	StateRollbackFailed State = "rollback failed"
)

// StepState is one step's history, replayed from the journal.
type StepState struct {
	Addr        string
	State       State
	Attempts    int
	Started     time.Time // the first attempt's start, or the rollback's
	Finished    time.Time
	Elapsed     time.Duration // the attempts' own time (or the rollback's), without the gaps between them
	Error       string
	Checkpoints map[string]json.RawMessage
	Order       []string
	// Cleared are the checkpoints rollbacks of the step cleared (so that a
	// later apply starts afresh), each with its latest data.
	Cleared map[string]json.RawMessage
	Outputs json.RawMessage

	attemptAt   time.Time // when the attempt under way started (zero when none is)
	rollingBack bool      // a rollback began and has not completed
}

// JournalState is a run replayed from its journal records.
type JournalState struct {
	Run   *RunInfo
	Steps map[string]*StepState
	Order []string // steps in the order they first appear
	Notes []Record
	// Plans are the saved plans applied in this run (apply PLANDIR), in order.
	Plans []PlanRecord
}

// Step returns the state of addr, pending if the journal never mentions it.
func (js *JournalState) Step(addr string) *StepState {
	if st, ok := js.Steps[addr]; ok {
		return st
	}
	return &StepState{Addr: addr, State: StatePending, Checkpoints: map[string]json.RawMessage{}}
}

// Unfinished reports whether some step is mid-way: running, failed,
// interrupted or rolling back. Such a run must be resumed or rolled back
// before a new one starts.
func (js *JournalState) Unfinished() bool {
	for _, st := range js.Steps {
		if midway(st.State) {
			return true
		}
	}
	return false
}

// midway is true of the states a step is left in when a run stops before
// the step finished.
func midway(state State) bool {
	switch state {
	case StateRunning, StateFailed, StateInterrupted, StateRollingBack, StateWaiting:
		return true
	}
	return false
}

// LoadJournal reads the journal in dir without changing anything and
// replays it: how status, show and the checks before a run read a run's
// state (a command that writes opens the journal under its lock instead).
// warnings name a torn last record, left in place; a missing journal is an
// error wrapping fs.ErrNotExist.
func LoadJournal(dir string) (*JournalState, []string, error) {
	records, warnings, err := ReadJournal(dir)
	if err != nil {
		return nil, warnings, err
	}
	js, err := Replay(records)
	return js, warnings, err
}

// appliedPlan says where a saved plan was applied: in the current run of a
// journal, or in one of its finished runs kept in runs/.
type appliedPlan struct {
	RunID    string
	Archived string // the file in runs/ that holds that run, or "" for the current run
}

// findApplied looks in the journal dir's current run and in every run kept
// in runs/ for a plan record of fingerprint with the approvals digest
// approvals, without changing anything.
func findApplied(dir, fingerprint, approvals string) (*appliedPlan, error) {
	runs, _ := filepath.Glob(filepath.Join(dir, "runs", "*.log"))
	paths := append([]string{filepath.Join(dir, JournalFile)}, runs...)
	for i, path := range paths {
		f, err := os.Open(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read journal: %w", err)
		}
		res, err := scanJournal(path, f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read journal: %w", err)
		}
		js, err := Replay(res.records)
		if err != nil {
			return nil, fmt.Errorf("read journal %s: %w", path, err)
		}
		for _, p := range js.Plans {
			if p.Fingerprint != fingerprint || p.Approvals != approvals {
				continue
			}
			a := &appliedPlan{}
			if js.Run != nil {
				a.RunID = js.Run.ID
			}
			if i > 0 {
				a.Archived = path
			}
			return a, nil
		}
	}
	return nil, nil
}

// Replay rebuilds the state of a run from its records.
func Replay(records []Record) (*JournalState, error) {
	js := &JournalState{Steps: map[string]*StepState{}}
	for i := range records {
		if err := js.apply(&records[i]); err != nil {
			return nil, err
		}
	}
	return js, nil
}

// apply replays one record.
func (js *JournalState) apply(r *Record) error {
	switch r.Kind {
	case RecordRun, RecordNote, RecordTargets, RecordPlan:
		return js.applyRunRecord(r)
	}
	if r.Step == "" {
		return nil
	}
	st, ok := js.Steps[r.Step]
	if !ok {
		st = &StepState{Addr: r.Step, State: StatePending, Checkpoints: map[string]json.RawMessage{}}
		js.Steps[r.Step] = st
		js.Order = append(js.Order, r.Step)
	}
	switch r.Kind {
	case RecordState:
		st.changeState(r)
	case RecordCheckpoint:
		if _, seen := st.Checkpoints[r.Item]; !seen {
			st.Order = append(st.Order, r.Item)
		}
		st.Checkpoints[r.Item] = r.Data
	case RecordOutput:
		st.Outputs = r.Data
	}
	return nil
}

// applyRunRecord replays a record about the run as a whole.
func (js *JournalState) applyRunRecord(r *Record) error {
	switch r.Kind {
	case RecordRun:
		var ri RunInfo
		if err := json.Unmarshal(r.Data, &ri); err != nil {
			return fmt.Errorf("decode run record %d: %w", r.Seq, err)
		}
		js.Run = &ri
	case RecordNote:
		js.Notes = append(js.Notes, *r)
	case RecordTargets:
		// An apply that carried a partly applied run further with other
		// targets: the run now covers both (none: every step).
		if js.Run == nil {
			return fmt.Errorf("targets record %d before any run record", r.Seq)
		}
		var more []string
		if err := json.Unmarshal(r.Data, &more); err != nil {
			return fmt.Errorf("decode targets record %d: %w", r.Seq, err)
		}
		js.Run.Targets = widenTargets(js.Run.Targets, more)
	case RecordPlan:
		var pr PlanRecord
		if err := json.Unmarshal(r.Data, &pr); err != nil {
			return fmt.Errorf("decode plan record %d: %w", r.Seq, err)
		}
		js.Plans = append(js.Plans, pr)
	}
	return nil
}

// changeState replays a step's state record: its attempts, its own time
// (without the gaps between attempts), and a rollback that clears its
// checkpoints.
func (st *StepState) changeState(r *Record) {
	st.State = r.State
	st.Error = r.Error
	switch r.State {
	case StateRunning:
		st.Attempts++
		if st.Attempts == 1 {
			st.Started, st.Elapsed = r.Time, 0
		}
		st.Finished, st.attemptAt, st.rollingBack = time.Time{}, r.Time, false
	case StateRollingBack:
		if !st.rollingBack { // not a rollback resumed after an interruption
			st.Started, st.Elapsed = r.Time, 0
		}
		st.rollingBack = true
		st.Finished, st.attemptAt = time.Time{}, r.Time
	case StateDone, StateFailed, StateInterrupted, StateWaiting, StateRolledBack:
		st.Finished = r.Time
		if !st.attemptAt.IsZero() {
			st.Elapsed += r.Time.Sub(st.attemptAt)
			st.attemptAt = time.Time{}
		}
		if r.State == StateRolledBack {
			// Undone work is not done: a later apply starts the step afresh.
			if st.Cleared == nil {
				st.Cleared = map[string]json.RawMessage{}
			}
			maps.Copy(st.Cleared, st.Checkpoints)
			st.Checkpoints, st.Order, st.Outputs, st.Attempts = map[string]json.RawMessage{}, nil, nil, 0
			st.rollingBack = false
		}
	}
}

// widenTargets is the targets of a run that a later command carried further
// with more: both, or none (every step) when either is none.
func widenTargets(targets, more []string) []string {
	if len(targets) == 0 || len(more) == 0 {
		return nil
	}
	return append(slices.Clone(targets), more...)
}

package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// execution is one command's walk over the graph.
type execution struct {
	s             *Session
	cfg           *Config
	dir           string
	j             *Journal
	rd            *Redactor
	em            emitter
	opts          Options
	op            operation
	progressEvery time.Duration
	js            *JournalState
	logMu         sync.Mutex
	inputsMu      sync.Mutex
	inputs        map[string]string // what was read → its digest, for plan fingerprints
	// bound are the inputs of the saved plans applied in this run, as they
	// were checked: a file a step binds at apply (Run.BindFile) must still
	// have that digest.
	bound map[string]string
	// planned are the plans this command made so far, by address (nil:
	// the step's plan failed), for the steps that depend on them
	// (Run.UpstreamPlans).
	plannedMu sync.Mutex
	planned   map[string]*StepPlan
	// followsUnplanned are the steps not planned because steps they take
	// values from could not be, with those (execution.unplannedSources).
	followsUnplanned map[string][]string
}

func (x *execution) recordInput(name, digest string) {
	x.inputsMu.Lock()
	defer x.inputsMu.Unlock()
	if x.inputs == nil {
		x.inputs = map[string]string{}
	}
	x.inputs[name] = digest
}

func (s *Session) newExecution(opts Options, op operation) *execution {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 4
	}
	every := opts.ProgressEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	return &execution{s: s, cfg: s.Config, dir: opts.JournalDir, rd: s.Redactor, em: emitter{out: opts.Output, rd: s.Redactor}, opts: opts, op: op, progressEvery: every, js: &JournalState{Steps: map[string]*StepState{}}}
}

func (x *execution) emit(e Event) { x.em.emit(e) }

// lock takes the journal lock (creating the journal dir), reporting a stale
// lock it took over; release gives it back.
func (x *execution) lock() (release func(), err error) {
	if err := EnsureJournalDir(x.dir); err != nil {
		return nil, err
	}
	l, err := AcquireLock(x.dir, x.opts.Command)
	if err != nil {
		return nil, err
	}
	x.reportTakeover(l)
	return func() { l.Release() }, nil
}

// openJournal opens the journal (the caller holds the lock), reports a
// discarded torn tail and removes temporary files a crash left, and replays
// the run recorded so far.
func (x *execution) openJournal() error {
	if swept, _ := atomicfile.Sweep(x.dir); len(swept) > 0 {
		x.emit(Event{Type: EventWarning, Message: fmt.Sprintf("removed %d unfinished temporary file(s) in the journal dir: %s", len(swept), strings.Join(swept, ", "))})
	}
	j, records, warnings, err := OpenJournal(x.dir)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		x.emit(Event{Type: EventWarning, Message: w})
	}
	js, err := Replay(records)
	if err != nil {
		j.Close()
		return err
	}
	x.j, x.js = j, js
	return nil
}

// closeJournal closes the journal openJournal opened, if any.
func (x *execution) closeJournal() {
	if x.j != nil {
		x.j.Close()
	}
}

// archiveJournal keeps the journal of a finished run beside the new one
// (runs/TIME-ID.log) and opens a fresh journal.
func (x *execution) archiveJournal() error {
	x.closeJournal()
	runs := filepath.Join(x.dir, "runs")
	if err := atomicfile.MkdirAll(runs, 0o700); err != nil {
		return fmt.Errorf("create runs dir: %w", err)
	}
	name := time.Now().UTC().Format("20060102T150405Z") + "-" + x.js.Run.ID + ".log"
	if err := os.Rename(filepath.Join(x.dir, JournalFile), filepath.Join(runs, name)); err != nil {
		return fmt.Errorf("archive finished journal: %w", err)
	}
	if err := atomicfile.SyncDir(runs); err != nil {
		return fmt.Errorf("sync runs dir: %w", err)
	}
	if err := atomicfile.SyncDir(x.dir); err != nil {
		return fmt.Errorf("sync journal dir: %w", err)
	}
	return x.openJournal()
}

func (x *execution) append(r *Record) error { return x.appendAll([]*Record{r}) }

// appendAll appends records under one fsync (Journal.AppendAll).
func (x *execution) appendAll(rs []*Record) error {
	if x.j == nil {
		return errors.New("no journal during plan: a planner must not record checkpoints")
	}
	for _, r := range rs {
		r.Error = x.rd.String(r.Error)
	}
	if err := x.j.AppendAll(rs); err != nil {
		return fmt.Errorf("write journal: %w", err)
	}
	return nil
}

// setState records a step's new state (with the error that caused it and
// any data) and reports it.
func (x *execution) setState(addr string, state State, err error, data any) error {
	rec := &Record{Kind: RecordState, Step: addr, State: state}
	if err != nil {
		rec.Error = err.Error()
	}
	if data != nil {
		rec.Data, _ = json.Marshal(data)
	}
	if e := x.append(rec); e != nil {
		return e
	}
	e := Event{Type: EventState, Step: addr, State: state}
	if err != nil {
		e.Error, e.Hints = err.Error(), Hints(err)
	}
	x.emit(e)
	return nil
}

// logLine appends a line the step wrote to its log in the journal dir's
// logs/ (not during plan).
func (x *execution) logLine(addr, msg string) {
	if x.dir == "" || x.j == nil {
		return
	}
	x.logMu.Lock()
	defer x.logMu.Unlock()
	dir := filepath.Join(x.dir, "logs")
	if atomicfile.MkdirAll(dir, 0o700) != nil {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, addr+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339), msg)
}

// Package enginetest runs runbooks in-process against a temporary journal,
// as net/http/httptest serves handlers: the fast tier of the tests. A step
// is tested through the engine's own path (decode, validate, apply,
// journal, resume, rollback) with no subprocess, against in-process
// servers such as the Key Manager emulator (package emulator).
//
//	h := enginetest.New(t, src)          // src: the runbook's text
//	h.Var("km_api_key", km.RootAPIKey())
//	if err := h.Apply(); err != nil { … }
//	h.Truncate(n)                        // the journal a kill -9 after record n leaves
//	if err := h.Resume(); err != nil { … }
//	if err := h.Rollback(""); err != nil { … }
package enginetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// Harness is one runbook in a temporary folder with its journal.
type Harness struct {
	t       testing.TB
	Dir     string // the runbook's folder: relative paths in it resolve here
	File    string // the runbook
	Journal string // its journal dir
	// Events records what the commands reported, in order.
	Events *Recorder
	// Force makes Rollback go past a step's refusal (runbook rollback
	// --force).
	Force bool

	vars []string
}

// New writes src as a runbook (rb.hcl) in a temporary folder. The folder
// and everything in it go when the test ends.
func New(t testing.TB, src string) *Harness {
	t.Helper()
	dir := t.TempDir()
	h := &Harness{t: t, Dir: dir, File: filepath.Join(dir, "rb.hcl"), Journal: filepath.Join(dir, ".runbook", "rb"), Events: &Recorder{}}
	if err := os.WriteFile(h.File, []byte(src), 0o644); err != nil {
		t.Fatalf("enginetest: write runbook: %v", err)
	}
	return h
}

// WriteFile writes a file the runbook names, relative to its folder.
func (h *Harness) WriteFile(name, content string) {
	h.t.Helper()
	p := filepath.Join(h.Dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
}

// Var sets a variable for every later command, as -var NAME=VALUE does.
func (h *Harness) Var(name, value string) { h.vars = append(h.vars, name+"="+value) }

func (h *Harness) inputs() engine.VarInputs { return engine.VarInputs{Vars: h.vars} }

func (h *Harness) options(command string) engine.Options {
	return engine.Options{JournalDir: h.Journal, Output: h.Events, Command: "enginetest " + command}
}

// Plan runs `runbook plan` on the runbook: every step observes, read-only.
func (h *Harness) Plan(targets ...string) (*engine.PlanResult, error) {
	h.t.Helper()
	s, err := h.open()
	if err != nil {
		return nil, err
	}
	opts := h.options("plan")
	opts.Targets = targets
	return s.Plan(context.Background(), opts)
}

// Apply runs `runbook apply` on the runbook.
func (h *Harness) Apply(targets ...string) error {
	h.t.Helper()
	s, err := h.open()
	if err != nil {
		return err
	}
	opts := h.options("apply")
	opts.Targets = targets
	return s.Apply(context.Background(), opts)
}

// open loads the runbook as plan and apply do.
func (h *Harness) open() (*engine.Session, error) {
	src, err := os.ReadFile(h.File)
	if err != nil {
		return nil, err
	}
	s, diags := engine.Open(h.File, src, h.inputs(), true)
	return s, diagsErr(diags)
}

// ApplyUntil runs `runbook apply` and stops it once the checkpoint item of
// step is durable, as a kill -9 at that instant would: the run's context
// is cancelled there and the journal is cut back to that checkpoint
// (what the steps did after it stays done in the systems, as after a real
// kill). It fails the test if the run never records that checkpoint.
func (h *Harness) ApplyUntil(step, item string) {
	h.t.Helper()
	s, err := h.open()
	if err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := h.options("apply")
	opts.AfterCheckpoint = func(s, i string) {
		if s == step && i == item {
			cancel()
		}
	}
	err = s.Apply(ctx, opts)
	for _, rec := range h.Records() {
		if rec.Kind == engine.RecordCheckpoint && rec.Step == step && rec.Item == item {
			h.Truncate(int(rec.Seq))
			return
		}
	}
	h.t.Fatalf("enginetest: apply never recorded checkpoint %s %s (it ended with %v)", step, item, err)
}

// Resume runs `runbook resume` from the journal.
func (h *Harness) Resume() error {
	h.t.Helper()
	s, err := h.fromJournal()
	if err != nil {
		return err
	}
	return s.Resume(context.Background(), h.options("resume"))
}

// Rollback runs `runbook rollback [--to to]` from the journal.
func (h *Harness) Rollback(to string) error {
	h.t.Helper()
	s, err := h.fromJournal()
	if err != nil {
		return err
	}
	opts := h.options("rollback")
	opts.Force = h.Force
	return s.Rollback(context.Background(), opts, to)
}

func (h *Harness) fromJournal() (*engine.Session, error) {
	s, diags, err := engine.OpenFromJournal(h.Journal, h.File, h.inputs())
	if err != nil {
		return nil, err
	}
	return s, diagsErr(diags)
}

// State replays the journal as it is now.
func (h *Harness) State() *engine.JournalState {
	h.t.Helper()
	js, _, err := engine.LoadJournal(h.Journal)
	if err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
	return js
}

// Records returns the journal's records.
func (h *Harness) Records() []engine.Record {
	h.t.Helper()
	recs, _, err := engine.ReadJournal(h.Journal)
	if err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
	return recs
}

// Truncate keeps the first n records of the journal: what a kill -9 right
// after record n was durable leaves (a record is durable before the run
// moves on), whatever the systems did after it. (The in-process command
// released the lock, as a dead process's lock is taken over.)
func (h *Harness) Truncate(n int) {
	h.t.Helper()
	path := filepath.Join(h.Journal, engine.JournalFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
	end := 0
	for i := 0; i < n; i++ {
		j := indexByte(raw[end:], '\n')
		if j < 0 {
			h.t.Fatalf("enginetest: the journal holds fewer than %d records", n)
		}
		end += j + 1
	}
	if err := atomicfile.WriteFile(path, raw[:end], 0o600); err != nil {
		h.t.Fatalf("enginetest: %v", err)
	}
}

// Copy returns a harness on a copy of this one's folder and journal, so
// that one journal prefix after another can be resumed from the same
// start. What the runbook's steps changed outside the folder is shared.
func (h *Harness) Copy() *Harness {
	h.t.Helper()
	dir := h.t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(h.Dir)); err != nil {
		h.t.Fatalf("enginetest: copy %s: %v", h.Dir, err)
	}
	// The run records the runbook's absolute path: the copy keeps it, and
	// its relative paths resolve in the original folder.
	c := *h
	c.Dir, c.File, c.Journal = dir, filepath.Join(dir, "rb.hcl"), filepath.Join(dir, ".runbook", "rb")
	c.Events = &Recorder{}
	c.vars = append([]string(nil), h.vars...)
	return &c
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func diagsErr(diags hcl.Diagnostics) error {
	if !diags.HasErrors() {
		return nil
	}
	return fmt.Errorf("runbook: %s", diags.Error())
}

// Recorder is an engine.Output that keeps every event.
type Recorder struct {
	mu     sync.Mutex
	events []engine.Event
}

// Emit records e.
func (o *Recorder) Emit(e engine.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.events = append(o.events, e)
}

// All returns the events recorded so far.
func (o *Recorder) All() []engine.Event {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]engine.Event(nil), o.events...)
}

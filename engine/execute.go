package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/runbook-dev/runbook/internal/atomicfile"
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
}

// ErrInterrupted is returned when a run stopped because it was asked to
// (Ctrl-C): the journal says where, and resume continues.
var ErrInterrupted = errors.New("interrupted")

// ErrFailed is returned when at least one step failed.
var ErrFailed = errors.New("run failed")

// execution is one command's walk over the graph.
type execution struct {
	s             *Session
	cfg           *Config
	dir           string
	j             *Journal
	rd            *Redactor
	em            emitter
	opts          Options
	progressEvery time.Duration
	js            *JournalState
	logMu         sync.Mutex
	inputsMu      sync.Mutex
	inputs        map[string]string // what was read → its digest, for plan fingerprints
}

func (x *execution) recordInput(name, digest string) {
	x.inputsMu.Lock()
	defer x.inputsMu.Unlock()
	if x.inputs == nil {
		x.inputs = map[string]string{}
	}
	x.inputs[name] = digest
}

func (s *Session) newExecution(opts Options) *execution {
	if opts.Parallelism <= 0 {
		opts.Parallelism = 4
	}
	every := opts.ProgressEvery
	if every <= 0 {
		every = 2 * time.Second
	}
	return &execution{s: s, cfg: s.Config, dir: opts.JournalDir, rd: s.Redactor, em: emitter{out: opts.Output, rd: s.Redactor}, opts: opts, progressEvery: every, js: &JournalState{Steps: map[string]*StepState{}}}
}

func (x *execution) emit(e Event) { x.em.emit(e) }

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

func (x *execution) setState(addr, state string, err error, data any) error {
	rec := &Record{Kind: "state", Step: addr, State: state}
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
		e.Error = err.Error()
	}
	x.emit(e)
	return nil
}

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

// selected returns the blocks a command acts on: all, or the targets and
// everything they depend on.
func (s *Session) selected(targets []string) (map[string]bool, error) {
	sel := map[string]bool{}
	if len(targets) == 0 {
		for _, n := range s.Graph.Nodes {
			sel[n] = true
		}
		return sel, nil
	}
	for _, t := range targets {
		if s.Config.Block(t) == nil {
			return nil, fmt.Errorf("target %q: no such block in the runbook (write it as type.name)", t)
		}
		sel[t] = true
		for a := range s.Graph.Ancestors(t) {
			sel[a] = true
		}
	}
	return sel, nil
}

// walk runs fn on every selected node once all its dependencies succeeded,
// up to parallelism at once. Dependents of a failed node are skipped and
// reported once; after ctx is cancelled nothing new starts.
func (x *execution) walk(ctx context.Context, sel map[string]bool, fn func(context.Context, string) error) map[string]error {
	type result struct {
		addr string
		err  error
	}
	g := x.s.Graph
	status := map[string]string{} // "", running, ok, failed, skipped
	errs := map[string]error{}
	results := make(chan result)
	sem := make(chan struct{}, x.opts.Parallelism)
	running := 0
	for {
		if ctx.Err() == nil {
			for _, n := range g.Order() {
				if !sel[n] || status[n] != "" {
					continue
				}
				ready, blocked := true, false
				for _, d := range g.Deps[n] {
					if !sel[d] {
						continue
					}
					switch status[d] {
					case "ok":
					case "failed", "skipped":
						blocked = true
					default:
						ready = false
					}
				}
				if blocked {
					status[n] = "skipped"
					if x.cfg.Block(n).BlockType.Kind == KindStep {
						x.emit(Event{Type: EventState, Step: n, State: "skipped", Message: "a dependency did not complete"})
					}
					continue
				}
				if !ready {
					continue
				}
				status[n] = "running"
				running++
				go func(n string) {
					sem <- struct{}{}
					defer func() { <-sem }()
					var err error
					if ctx.Err() != nil {
						err = ErrInterrupted
					} else {
						err = fn(ctx, n)
					}
					results <- result{n, err}
				}(n)
			}
		}
		if running == 0 {
			break
		}
		res := <-results
		running--
		if res.err != nil {
			status[res.addr] = "failed"
			errs[res.addr] = res.err
		} else {
			status[res.addr] = "ok"
		}
	}
	return errs
}

// Apply executes the runbook: a new run, recorded in the journal.
func (s *Session) Apply(ctx context.Context, opts Options) error {
	if s.Config.Approvals > 0 {
		return Refusef("this runbook requires %d approval(s) of a saved plan: run runbook plan FILE -out DIR, have it approved with runbook approve DIR --by NAME, then runbook apply DIR", s.Config.Approvals)
	}
	return s.execute(ctx, opts, false, func() (*PlanRecord, error) {
		return nil, s.refuseEarly(ctx, opts)
	})
}

// refuseEarly is what a saved plan gives apply DIR, for apply FILE: before a
// new run does anything, every selected step is planned (read-only, quietly),
// and a step that refuses what the runbook asks (a cutover whose default key
// the enclave lacks, an object that already does not read) stops the run
// before the first side effect instead of after the steps before it ran. A
// step that cannot be planned yet is left to the run itself. A run already
// under way (resume, or apply carrying a targeted run further) is not planned
// again: its done steps would observe their own work.
func (s *Session) refuseEarly(ctx context.Context, opts Options) error {
	records, _, err := ReadJournal(opts.JournalDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if js, err := Replay(records); err != nil {
		return err
	} else if js.Run != nil && (js.Unfinished() || s.partlyApplied(js)) {
		return nil
	}
	quiet := opts
	quiet.Output = nil
	res, err := s.Plan(ctx, quiet)
	if err == nil || !errors.Is(err, ErrRefused) || res == nil {
		return nil
	}
	return Refusef("nothing ran: the plan of this runbook refuses what it asks (%s); runbook plan FILE shows the whole plan", stepErrors(res.Steps))
}

// ApplyPlan executes a saved, reviewed plan: under the journal lock it plans
// again, refuses (naming each change) when anything the fingerprint binds is
// different, checks the approvals, and only then applies. The journal records
// which plan ran, its steps and its approvers (a "plan" record), so that a
// later resume runs nothing the approved plans do not contain.
func (s *Session) ApplyPlan(ctx context.Context, opts Options, planDir string, reviewed *PlanDoc) error {
	return s.execute(ctx, opts, false, func() (*PlanRecord, error) {
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
			return nil, Refusef("the plan in %s is stale: %s. Make a new plan and have it reviewed", planDir, strings.Join(DiffPlans(reviewed, art.Doc), "; "))
		}
		check, err := CheckApprovals(planDir, reviewed)
		if err != nil {
			return nil, err
		}
		if err := check.Enough(planDir); err != nil {
			return nil, err
		}
		pr := &PlanRecord{Dir: planDir, Fingerprint: reviewed.Fingerprint, Targets: reviewed.Targets, MadeBy: reviewed.MadeBy, Approvers: check.Approvers}
		for _, st := range reviewed.Steps {
			pr.Steps = append(pr.Steps, st.Address)
		}
		return pr, nil
	})
}

// planKey is the journal's hash key for checking a saved plan's sensitive
// values; a plan made with another journal's key cannot be checked here.
func (s *Session) planKey(journal string, reviewed *PlanDoc) (*HashKey, error) {
	if reviewed.HashKey == "" {
		return EnsureHashKey(journal)
	}
	key, err := LoadHashKey(journal)
	if errors.Is(err, os.ErrNotExist) {
		return nil, Refusef("the plan bound its sensitive variables with the hash key of the journal it was made with, and %s has none: apply the plan with that journal (-journal DIR), or make the plan again here", journal)
	}
	if err != nil {
		return nil, err
	}
	if key.ID() != reviewed.HashKey {
		return nil, Refusef("the plan bound its sensitive variables with another journal's hash key (%s; %s has %s): apply the plan with that journal (-journal DIR), or make the plan again here", reviewed.HashKey, journal, key.ID())
	}
	return key, nil
}

// Resume continues the run recorded in the journal: completed steps are not
// redone; a step that was under way continues from its checkpoints.
func (s *Session) Resume(ctx context.Context, opts Options) error {
	return s.execute(ctx, opts, true, nil)
}

// execute runs the walk; check, when given (apply PLANDIR), runs once the
// lock is held and before anything is written, and names the plan applied.
func (s *Session) execute(ctx context.Context, opts Options, resume bool, check func() (*PlanRecord, error)) error {
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
	var plan *PlanRecord
	if check != nil {
		if plan, err = check(); err != nil {
			return err
		}
	}
	key, err := EnsureHashKey(opts.JournalDir)
	if err != nil {
		return err
	}
	if err := x.openJournal(); err != nil {
		return err
	}
	defer func() { x.j.Close() }()
	js := x.js
	targets := opts.Targets
	switch {
	case resume && js.Run == nil:
		return Refusef("there is no run to resume in %s: start one with runbook apply", opts.JournalDir)
	case resume:
		if err := s.checkAgainst(js.Run, opts.JournalDir); err != nil {
			return err
		}
		if len(targets) == 0 {
			targets = js.resumeTargets()
		}
	case js.Run != nil && js.Unfinished():
		return Refusef("the run started in %s is unfinished (%s): continue it with runbook resume, or undo it with runbook rollback", opts.JournalDir, unfinishedSummary(js))
	case js.Run != nil && s.partlyApplied(js):
		// A targeted run finished and left steps to do: this apply carries
		// the same run further, so what is done is not done again.
		if sha256Hex(s.Config.Src) != js.Run.SourceSHA256 {
			return Refusef("the runbook changed since the run in %s began, and that run is only partly applied: restore the runbook, or roll the run back first", opts.JournalDir)
		}
		if err := s.checkAgainst(js.Run, opts.JournalDir); err != nil {
			return err
		}
		resume = true
		// Recorded before anything runs, so that a resume after this apply
		// fails continues what this apply set out to do, not only the
		// targets of the run's first command.
		if !slices.Equal(targets, js.Run.Targets) {
			data, _ := json.Marshal(targets)
			if err := x.append(&Record{Kind: "targets", Data: data}); err != nil {
				return err
			}
			js.Run.Targets = widenTargets(js.Run.Targets, targets)
		}
	case js.Run != nil:
		// The previous run finished: keep its journal beside the new one.
		x.j.Close()
		if err := archiveJournal(opts.JournalDir, js.Run.ID); err != nil {
			return err
		}
		if err := x.openJournal(); err != nil {
			return err
		}
		js = x.js
	}
	sel, err := s.selected(targets)
	if err != nil {
		return err
	}
	if err := s.checkApproved(js, plan, sel); err != nil {
		return err
	}
	if !resume {
		ri, err := s.runInfo(opts.Command, targets, key)
		if err != nil {
			return err
		}
		data, _ := json.Marshal(ri)
		if err := x.append(&Record{Kind: "run", Data: data}); err != nil {
			return err
		}
		js.Run = ri
	}
	if plan != nil {
		data, _ := json.Marshal(plan)
		if err := x.append(&Record{Kind: "plan", Data: data}); err != nil {
			return err
		}
		js.Plans = append(js.Plans, *plan)
	}
	verb := "apply"
	if resume {
		verb = "resume"
	}
	x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: %s %s (journal %s)", verb, s.Config.Name, opts.JournalDir)})
	start := time.Now()
	errs := x.walk(ctx, sel, x.applyNode)
	return x.finish(ctx, errs, start)
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
	return Refusef("this runbook requires %d approval(s), and no approved plan of this run contains %s: nothing ran. Make a plan that does (runbook plan FILE -target %s -out DIR), have it approved, and apply it with runbook apply DIR", s.Config.Approvals, strings.Join(outside, ", "), outside[len(outside)-1])
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

func unfinishedSummary(js *JournalState) string {
	var parts []string
	for _, a := range js.Order {
		if st := js.Steps[a]; midway(st.State) {
			parts = append(parts, a+" "+st.State)
		}
	}
	return strings.Join(parts, ", ")
}

func archiveJournal(dir, id string) error {
	runs := filepath.Join(dir, "runs")
	if err := atomicfile.MkdirAll(runs, 0o700); err != nil {
		return fmt.Errorf("create runs dir: %w", err)
	}
	name := time.Now().UTC().Format("20060102T150405Z") + "-" + id + ".log"
	if err := os.Rename(filepath.Join(dir, JournalFile), filepath.Join(runs, name)); err != nil {
		return fmt.Errorf("archive finished journal: %w", err)
	}
	if err := atomicfile.SyncDir(runs); err != nil {
		return fmt.Errorf("sync runs dir: %w", err)
	}
	return atomicfile.SyncDir(dir)
}

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
		return fmt.Errorf("%w: %s: %v", ErrFailed, failed[0], errs[failed[0]])
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

// applyNode decodes a connection, or applies a step unless the journal says it is done.
func (x *execution) applyNode(ctx context.Context, addr string) error {
	b := x.cfg.Block(addr)
	inst := b.BlockType.New()
	if b.BlockType.Kind == KindConnection {
		d, diags := x.s.Scope.Decode(b, inst.Config())
		if v, ok := inst.(Validator); ok && !diags.HasErrors() {
			diags = append(diags, v.Validate(d)...)
		}
		if diags.HasErrors() {
			err := diagsError(diags)
			x.emit(Event{Type: EventState, Step: addr, State: StateFailed, Error: err.Error()})
			return err
		}
		x.s.Scope.SetConnection(addr, inst)
		return nil
	}
	st := x.js.Step(addr)
	if st.State == StateDone {
		outs, err := x.restoreOutputs(addr, st.Outputs)
		if err != nil {
			return err
		}
		x.s.Scope.SetOutputs(addr, outs)
		x.emit(Event{Type: EventState, Step: addr, State: StateDone, Message: "already done (journal)"})
		return nil
	}
	return x.applyStep(ctx, b, inst, st)
}

func (x *execution) applyStep(ctx context.Context, b *BlockConfig, inst Block, st *StepState) error {
	addr := b.Addr()
	fail := func(err error) error {
		if e := x.setState(addr, StateFailed, err, nil); e != nil {
			return e
		}
		return err
	}
	d, diags := x.s.Scope.Decode(b, inst.Config())
	if v, ok := inst.(Validator); ok && !diags.HasErrors() {
		diags = append(diags, v.Validate(d)...)
	}
	timeout, backoff, attempts, moreDiags := x.s.meta(b)
	diags = append(diags, moreDiags...)
	if diags.HasErrors() {
		return fail(diagsError(diags))
	}
	if len(d.unknown) > 0 {
		return fail(fmt.Errorf("values not known when the step ran: %s", strings.Join(sortedKeys(d.unknown), ", ")))
	}
	step, ok := inst.(Step)
	if !ok {
		return fail(fmt.Errorf("block type %s has no apply", b.Type))
	}
	r := &Run{Addr: addr, Decoded: d, x: x, checkpoints: map[string]json.RawMessage{}, outputs: map[string]cty.Value{}, resumed: st.Attempts > 0}
	for k, v := range st.Checkpoints {
		r.checkpoints[k] = v
	}
	r.order = append(r.order, st.Order...)
	if backoff == 0 {
		backoff = time.Second
	}
	started := time.Now()
	for attempt := 1; ; attempt++ {
		r.attempt = attempt
		if err := x.setState(addr, StateRunning, nil, map[string]int{"attempt": st.Attempts + attempt}); err != nil {
			return err
		}
		sctx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			sctx, cancel = context.WithTimeout(ctx, timeout)
		}
		err := step.Apply(sctx, r)
		timedOut := sctx.Err() == context.DeadlineExceeded && ctx.Err() == nil
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			if e := x.setState(addr, StateInterrupted, err, nil); e != nil {
				return e
			}
			return ErrInterrupted
		}
		if errors.Is(err, ErrWaiting) {
			if e := x.setState(addr, StateWaiting, err, nil); e != nil {
				return e
			}
			return err
		}
		if timedOut {
			err = fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		if attempt >= attempts || errors.Is(err, ErrRefused) {
			return fail(err)
		}
		wait := backoff << (attempt - 1)
		x.emit(Event{Type: EventState, Step: addr, State: "retrying", Error: err.Error(), Message: fmt.Sprintf("attempt %d of %d failed; trying again in %s", attempt, attempts, wait)})
		select {
		case <-ctx.Done():
			if e := x.setState(addr, StateInterrupted, ctx.Err(), nil); e != nil {
				return e
			}
			return ErrInterrupted
		case <-time.After(wait):
		}
	}
	outs := r.Outputs()
	data, err := x.encodeOutputs(r, outs)
	if err != nil {
		return fail(err)
	}
	if err := x.append(&Record{Kind: "output", Step: addr, Data: data}); err != nil {
		return err
	}
	x.s.Scope.SetOutputs(addr, outs)
	rec := &Record{Kind: "state", Step: addr, State: StateDone}
	if err := x.append(rec); err != nil {
		return err
	}
	x.emit(Event{Type: EventState, Step: addr, State: StateDone, Duration: time.Since(started).Round(time.Millisecond).String()})
	return nil
}

// outputRecord is how one output is kept in the journal: a value, a
// reference to a connection, or the name of a file in secrets/.
type outputRecord struct {
	Type       json.RawMessage `json:"type,omitempty"`
	Value      json.RawMessage `json:"value,omitempty"`
	Connection string          `json:"connection,omitempty"`
	Secret     bool            `json:"secret,omitempty"`
}

func (x *execution) encodeOutputs(r *Run, outs map[string]cty.Value) (json.RawMessage, error) {
	bt := x.cfg.Block(r.Addr).BlockType
	recs := map[string]outputRecord{}
	for _, name := range sortedKeys(outs) {
		v, _ := outs[name].UnmarkDeep()
		if _, declared := bt.Outputs[name]; !declared {
			return nil, fmt.Errorf("step set undeclared output %q", name)
		}
		switch {
		case v.Type().Equals(ConnectionType):
			recs[name] = outputRecord{Connection: v.EncapsulatedValue().(*connectionRef).Address}
		case bt.isSensitive(name):
			if v.Type() != cty.String {
				return nil, fmt.Errorf("sensitive output %q must be a string", name)
			}
			if err := r.WriteSecret(name, []byte(v.AsString())); err != nil {
				return nil, err
			}
			recs[name] = outputRecord{Secret: true}
		default:
			ty, err := ctyjson.MarshalType(v.Type())
			if err != nil {
				return nil, fmt.Errorf("encode output %q: %w", name, err)
			}
			val, err := ctyjson.Marshal(v, v.Type())
			if err != nil {
				return nil, fmt.Errorf("encode output %q: %w", name, err)
			}
			recs[name] = outputRecord{Type: ty, Value: val}
		}
	}
	data, err := json.Marshal(recs)
	if err != nil {
		return nil, err
	}
	return json.RawMessage(x.rd.String(string(data))), nil
}

func (x *execution) restoreOutputs(addr string, data json.RawMessage) (map[string]cty.Value, error) {
	outs := map[string]cty.Value{}
	if len(data) == 0 {
		return outs, nil
	}
	var recs map[string]outputRecord
	if err := json.Unmarshal(data, &recs); err != nil {
		return nil, fmt.Errorf("decode outputs of %s: %w", addr, err)
	}
	r := &Run{Addr: addr, x: x}
	for name, rec := range recs {
		switch {
		case rec.Connection != "":
			x.s.Scope.mu.Lock()
			v, ok := x.s.Scope.values[rec.Connection]
			x.s.Scope.mu.Unlock()
			if !ok {
				return nil, fmt.Errorf("restore output %s.%s: connection %s is not available", addr, name, rec.Connection)
			}
			outs[name] = v
		case rec.Secret:
			b, err := r.ReadSecret(name)
			if err != nil {
				return nil, fmt.Errorf("restore sensitive output %s.%s from the journal dir's secrets: %w", addr, name, err)
			}
			outs[name] = cty.StringVal(string(b))
		default:
			ty, err := ctyjson.UnmarshalType(rec.Type)
			if err != nil {
				return nil, fmt.Errorf("decode output %s.%s: %w", addr, name, err)
			}
			v, err := ctyjson.Unmarshal(rec.Value, ty)
			if err != nil {
				return nil, fmt.Errorf("decode output %s.%s: %w", addr, name, err)
			}
			outs[name] = v
		}
	}
	return outs, nil
}

// diagsError turns diagnostics met at run time into one error.
func diagsError(diags hcl.Diagnostics) error {
	var parts []string
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject != nil {
			msg = d.Subject.String() + ": " + msg
		}
		parts = append(parts, msg)
	}
	return errors.New(strings.Join(parts, "; "))
}

package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
)

// PlannedStep is one block of a plan.
type PlannedStep struct {
	Addr      string    `json:"address"`
	Type      string    `json:"type"`
	DependsOn []string  `json:"depends_on,omitempty"`
	Plan      *StepPlan `json:"plan,omitempty"`
	Error     string    `json:"error,omitempty"`
	Hints     []string  `json:"hints,omitempty"` // what to do about Error

	refused bool // Error is a refusal (ErrRefused)
}

// PlanResult is what planning observed and intends.
type PlanResult struct {
	Steps []PlannedStep
	// Inputs are the files and observations the plan read, with digests.
	Inputs map[string]string
}

// Plan observes the real systems read-only and says what each selected step
// would do, in execution order. It writes nothing.
func (s *Session) Plan(ctx context.Context, opts Options) (*PlanResult, error) {
	x := s.newExecution(opts, opPlan)
	sel, err := s.selected(opts.Targets)
	if err != nil {
		return nil, err
	}
	x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: plan %s", s.Config.Name)})
	carried, err := s.carriedRun(opts.JournalDir, opts.beforeApply)
	if err != nil {
		return nil, err
	}
	if carried != nil {
		x.js = carried
		x.emit(Event{Type: EventRun, Message: fmt.Sprintf("runbook: the run in %s is partly applied: apply carries it further, so the steps it did are not planned again", opts.JournalDir)})
	}
	if err := x.bindAllowedSigners(); err != nil {
		return nil, err
	}
	early := x.startEarly(ctx, sel)
	results, err := x.planSteps(ctx, sel)
	early.Wait()
	if err != nil {
		return nil, err
	}
	return x.planResult(results)
}

// startEarly calls StartEarly (EarlyStarter) of every selected step that
// has not run when this is the quiet plan before an apply, each in its own
// goroutine; the connections are decoded here first (the walk decodes them
// again, and reports what fails). Wait for the group before the plan ends:
// a step's StartEarly reads files through its Run, which the plan binds.
func (x *execution) startEarly(ctx context.Context, sel map[string]bool) *sync.WaitGroup {
	var wg sync.WaitGroup
	if !x.opts.beforeApply {
		return &wg
	}
	for _, addr := range x.s.Graph.Order() {
		if b := x.cfg.Block(addr); b.BlockType.Kind == KindConnection && x.s.decodeConnection(b) != nil {
			return &wg
		}
	}
	for _, addr := range x.s.Graph.Order() {
		b := x.cfg.Block(addr)
		if !sel[addr] || b.BlockType.Kind == KindConnection || x.js.Step(addr).State == StateDone {
			continue
		}
		if _, ok := b.BlockType.New().(EarlyStarter); !ok {
			continue // decode only the steps that start early
		}
		inst, d, diags := x.s.decode(b)
		es, ok := inst.(EarlyStarter)
		if diags.HasErrors() || !ok {
			continue
		}
		wg.Go(func() { es.StartEarly(ctx, x.newRun(addr, d, x.js.Step(addr), nil)) })
	}
	return &wg
}

// carriedRun returns the run recorded in dir when `apply FILE` would carry
// it further (execution.carryFurther): a targeted run that finished and
// left steps pending, begun from this runbook text with these variables.
// The plan then shows what that apply would do, the steps done being done
// (a targeted apply of a migration, then the plan of the cutover that
// follows it). Otherwise, or without a journal, nil: the plan is a new
// run's.
//
// An unfinished run refuses the plan, as it refuses apply FILE
// (continueOrBegin): a new run's plan would observe that run's work as the
// systems' own (its enclave "already holds keys", its cutover's object
// store down after a failed restart) and mislead a reviewer about what
// comes next, which is resume or rollback. The quiet plan before an apply
// (beforeApply) leaves that refusal to the apply.
func (s *Session) carriedRun(dir string, beforeApply bool) (*JournalState, error) {
	if dir == "" {
		return nil, nil
	}
	js, _, err := LoadJournal(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the journal in %s: %w", dir, err)
	}
	if js.Run != nil && js.Unfinished() && !beforeApply {
		// A live owner of the lock is that run, still going: nothing but
		// waiting for it helps.
		if owner, alive, err := InspectLock(dir); err == nil && alive && owner != nil {
			return nil, RefuseWithHint("plan once it has ended (runbook status shows it)", "no plan made: a run is under way in %s (%s), and a new run's plan would observe its work as if it were the systems' own", dir, owner)
		}
		return nil, RefuseWithHint(unfinishedWayOn(js)+"; plan again once it has ended", "no plan made: the run started in %s is unfinished (%s), apply refuses to begin anew while it is, and a new run's plan would observe that run's work as if it were the systems' own", dir, unfinishedSummary(js))
	}
	if js.Run == nil || js.Unfinished() || !s.partlyApplied(js) || sha256Hex(s.Config.Src) != js.Run.SourceSHA256 {
		return nil, nil
	}
	// Other variables: apply refuses to carry the run further (it says
	// why); the plan stays a new run's.
	if s.checkAgainst(js.Run, dir) != nil {
		return nil, nil
	}
	return js, nil
}

// bindAllowedSigners binds the plan to the allowed-signers file like any
// file the plan read: approvals are checked against this list, so a plan
// is stale once it changes.
func (x *execution) bindAllowedSigners() error {
	p := x.cfg.AllowedSignersPath()
	if p == "" {
		return nil
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read allowed signers: %w", err)
	}
	x.recordInput("file "+p, sha256Hex(raw))
	return nil
}

// planSteps plans the selected steps concurrently, each once the steps it
// depends on are planned (a plan's outputs feed its dependents'
// configuration); plans only observe. A connection that does not decode
// stops the plan; a step that cannot be planned does not stop its
// dependents' plans.
func (x *execution) planSteps(ctx context.Context, sel map[string]bool) (map[string]PlannedStep, error) {
	var (
		mu      sync.Mutex
		results = map[string]PlannedStep{}
		connErr error
	)
	x.walk(ctx, sel, func(ctx context.Context, addr string) error {
		b := x.cfg.Block(addr)
		if b.BlockType.Kind == KindConnection {
			// Files a connection names (CA files, configs) are read lazily by
			// the steps that use it; the runbook text binds their names.
			err := x.s.decodeConnection(b)
			if err != nil {
				mu.Lock()
				connErr = cmp.Or(connErr, err)
				mu.Unlock()
			}
			return err
		}
		var ps PlannedStep
		if st := x.js.Step(addr); st.State == StateDone {
			ps = x.planDone(b, st)
		} else {
			ps = x.planStep(ctx, b)
		}
		mu.Lock()
		results[addr] = ps
		mu.Unlock()
		x.setPlanned(addr, ps.Plan)
		return nil
	})
	if connErr != nil {
		return nil, connErr
	}
	return results, ctx.Err()
}

// unplannedSources lists, sorted, the steps whose plan this command made
// and failed among those refs name (the references of a step's attributes
// whose values are not known: Decoded.unknownRefs), and for one not
// planned for this same reason, what it took its values from (the cause is
// theirs). A step only followed (depends_on), or referred to only in
// attributes whose values are known all the same (a condition not taken),
// is not one; within one attribute whose value is unknown every reference
// counts.
func (x *execution) unplannedSources(refs []hcl.Traversal) []string {
	x.plannedMu.Lock()
	defer x.plannedMu.Unlock()
	set := map[string]bool{}
	for _, tr := range refs {
		if _, ok := LookupType(tr.RootName()); !ok {
			continue // var, local: known at plan
		}
		a, d := x.cfg.refAddr(tr)
		if d != nil {
			continue
		}
		if causes, ok := x.followsUnplanned[a]; ok {
			for _, c := range causes {
				set[c] = true
			}
		} else if p, ok := x.planned[a]; ok && p == nil {
			set[a] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// setPlanned keeps a step's plan (nil: it failed) for its dependents.
func (x *execution) setPlanned(addr string, p *StepPlan) {
	x.plannedMu.Lock()
	defer x.plannedMu.Unlock()
	if x.planned == nil {
		x.planned = map[string]*StepPlan{}
	}
	x.planned[addr] = p
}

// planDone shows a step the carried run did (Session.carriedRun): not
// planned again, its recorded outputs given to its dependents as apply
// gives them.
func (x *execution) planDone(b *BlockConfig, st *StepState) PlannedStep {
	addr := b.Addr()
	ps := PlannedStep{Addr: addr, Type: b.Type, DependsOn: x.s.Graph.Deps[addr]}
	outs, err := x.restoreOutputs(addr, st.Outputs)
	if err != nil {
		ps.Error = x.rd.String(err.Error())
		return ps
	}
	x.s.Scope.SetOutputs(addr, outs)
	ps.Plan = &StepPlan{Observed: []string{fmt.Sprintf("done in the run in %s (finished %s): apply carries that run further and does not redo it", x.dir, st.Finished.UTC().Format(time.RFC3339))}}
	return ps
}

// planStep asks one step what it would do; what went wrong is its Error.
func (x *execution) planStep(ctx context.Context, b *BlockConfig) PlannedStep {
	addr := b.Addr()
	ps := PlannedStep{Addr: addr, Type: b.Type, DependsOn: x.s.Graph.Deps[addr]}
	inst, d, diags := x.s.decode(b)
	if diags.HasErrors() {
		ps.Error = x.rd.String(diagsError(diags).Error())
		return ps
	}
	if failed := x.unplannedSources(d.unknownRefs); len(failed) > 0 {
		// Its attributes hold zero values in place of what those steps
		// would give: its own plan would fail on them, naming the wrong
		// cause (a reference that "is not a key_manager block").
		ps.Error = fmt.Sprintf("it takes values from %s, which could not be planned", strings.Join(failed, ", "))
		x.plannedMu.Lock()
		if x.followsUnplanned == nil {
			x.followsUnplanned = map[string][]string{}
		}
		x.followsUnplanned[addr] = failed
		x.plannedMu.Unlock()
		return ps
	}
	p, ok := inst.(Planner)
	if !ok {
		ps.Plan = &StepPlan{Actions: []string{"run " + addr}}
		return ps
	}
	sp, err := p.Plan(ctx, x.newRun(addr, d, x.js.Step(addr), nil))
	if err != nil {
		ps.Error = x.rd.String(err.Error())
		ps.Hints = redactAll(x.rd, Hints(err))
		ps.refused = errors.Is(err, ErrRefused)
		return ps
	}
	if err := itemsHoldNoSecret(x.rd, sp.Items); err != nil {
		ps.Error, ps.refused = err.Error(), true
		return ps
	}
	ps.Plan = sp
	if sp.Outputs != nil {
		x.s.Scope.SetOutputs(addr, sp.Outputs)
	}
	return ps
}

// itemsHoldNoSecret refuses item names that hold a sensitive value. Item
// names are identifiers, written verbatim in the plan, its items/ files and
// the journal: one cannot be redacted without making it name something
// else, so it must hold no secret in the first place.
func itemsHoldNoSecret(rd *Redactor, items []string) error {
	for i, it := range items {
		if rd.Contains(it) {
			return Refusef("item %d of %d holds a sensitive value (a secret is part of its name; the name is not shown): item names are written verbatim in plans and the journal. Rename it, or change the secret so that no item name contains it", i+1, len(items))
		}
	}
	return nil
}

// planResult shows the steps' plans in execution order; a step that
// refuses makes the plan a refusal, one that could not be planned a
// failure.
func (x *execution) planResult(results map[string]PlannedStep) (*PlanResult, error) {
	var planned []PlannedStep
	failed, refused := 0, 0
	for _, addr := range x.s.Graph.Order() {
		ps, ok := results[addr]
		if !ok {
			continue
		}
		if ps.Error != "" {
			failed++
		}
		if ps.refused {
			refused++
		}
		planned = append(planned, ps)
		x.emit(planEvent(ps))
	}
	// Files that the runbook's functions read (file(), filebase64()) are
	// bound like the files the steps read.
	for k, v := range x.s.Scope.Reads() {
		x.recordInput(k, v)
	}
	res := &PlanResult{Steps: planned, Inputs: x.inputs}
	if res.Inputs == nil {
		res.Inputs = map[string]string{}
	}
	if refused > 0 {
		return res, Refusef("%d step(s) refuse what the runbook asks; see their plan above", refused)
	}
	if failed > 0 {
		// Named here too: apply DIR plans quietly, so nothing is "above".
		return res, fmt.Errorf("%w: %d step(s) could not be planned (%s)", ErrFailed, failed, stepErrors(planned))
	}
	return res, nil
}

// stepErrors lists the steps that could not be planned, each with why:
// "addr: error; addr: error".
func stepErrors(steps []PlannedStep) string {
	var why []string
	for _, ps := range steps {
		if ps.Error != "" {
			why = append(why, ps.Addr+": "+ps.Error)
		}
	}
	return strings.Join(why, "; ")
}

func planEvent(ps PlannedStep) Event {
	e := Event{Type: EventPlan, Step: ps.Addr}
	if len(ps.DependsOn) > 0 {
		e.Message = "(after " + strings.Join(ps.DependsOn, ", ") + ")"
	}
	if ps.Error != "" {
		e.Error = ps.Error
		e.Details = []string{"cannot plan: " + ps.Error}
		for _, h := range ps.Hints {
			e.Details = append(e.Details, "hint: "+h)
		}
		return e
	}
	p := ps.Plan
	for _, o := range p.Observed {
		e.Details = append(e.Details, "observed: "+o)
	}
	for _, a := range p.Actions {
		e.Details = append(e.Details, "will: "+a)
	}
	for _, c := range p.Changes {
		e.Details = append(e.Details, "changes: "+c.String())
	}
	if n := len(p.Items); n > 0 {
		shown := p.Items
		if n > 10 {
			shown = shown[:10]
		}
		e.Details = append(e.Details, fmt.Sprintf("items (%d): %s%s", n, strings.Join(shown, ", "), map[bool]string{true: ", …", false: ""}[n > 10]))
	}
	if p.Rollback != "" {
		e.Details = append(e.Details, "rollback: "+p.Rollback)
	}
	for _, r := range p.Risks {
		e.Details = append(e.Details, "risk: "+r)
	}
	return e
}

// StepStatus is one row of `runbook status`.
type StepStatus struct {
	Addr     string
	Type     string
	State    State
	Attempts int
	Started  string
	Duration string
	Items    int
	Error    string
}

// Status is the table `runbook status` shows of a loaded journal
// (LoadJournal): every step of the runbook in execution order, or, without
// its graph, every step the journal names.
func Status(js *JournalState, cfg *Config, g *Graph) []StepStatus {
	var addrs []string
	if g != nil {
		for _, a := range g.Order() {
			if cfg.Block(a).BlockType.Kind == KindStep {
				addrs = append(addrs, a)
			}
		}
	} else {
		addrs = append(addrs, js.Order...)
		sort.Strings(addrs)
	}
	var rows []StepStatus
	for _, a := range addrs {
		st := js.Step(a)
		row := StepStatus{Addr: a, State: st.State, Attempts: st.Attempts, Items: len(st.Checkpoints), Error: st.Error}
		if b := cfg.Block(a); b != nil {
			row.Type = b.Type
		}
		if !st.Started.IsZero() {
			row.Started = st.Started.Format("2006-01-02 15:04:05Z")
			if !st.Finished.IsZero() {
				row.Duration = st.Elapsed.Round(1e6).String()
			}
		}
		rows = append(rows, row)
	}
	return rows
}

package engine_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// probe is a step type for engine tests: what it does is set per test through
// probeBehaviour, and every call is recorded.
type probe struct {
	cfg struct {
		Label string `hcl:"label,optional"`
	}
}

var (
	probeMu        sync.Mutex
	probeBehaviour = map[string]error{} // "apply:NAME" / "rollback:NAME" → error to return
	probeCalls     []string
)

func init() {
	engine.Register(engine.BlockType{Name: "probe", Kind: engine.KindStep, New: func() engine.Block { return &probe{} }, Outputs: map[string]cty.Type{"label": cty.String}})
}

func (p *probe) Config() any { return &p.cfg }

func (p *probe) call(kind string, r *engine.Run) error {
	probeMu.Lock()
	defer probeMu.Unlock()
	probeCalls = append(probeCalls, kind+":"+r.Addr)
	err := probeBehaviour[kind+":"+r.Addr]
	if kind == "rollback" && errors.Is(err, engine.ErrRefused) && r.Forced() {
		return nil
	}
	return err
}

func (p *probe) Apply(_ context.Context, r *engine.Run) error {
	r.SetOutput("label", cty.StringVal(p.cfg.Label))
	return p.call("apply", r)
}

func (p *probe) Rollback(_ context.Context, r *engine.Run) error { return p.call("rollback", r) }

// probeMeeting, when set, makes the plans of every step it names wait until
// all of them are under way (or fail after a while): only plans that run
// concurrently can meet.
var probeMeeting struct {
	sync.Mutex
	names   map[string]bool
	arrived int
	all     chan struct{}
}

// Plan fails as the test sets "plan:NAME"; only such calls are recorded.
func (p *probe) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	probeMeeting.Lock()
	if probeMeeting.names[r.Addr] {
		probeMeeting.arrived++
		if probeMeeting.arrived == len(probeMeeting.names) {
			close(probeMeeting.all)
		}
		all := probeMeeting.all
		probeMeeting.Unlock()
		select {
		case <-all:
		case <-time.After(5 * time.Second):
			return nil, errors.New("the other plans never started: steps were planned one at a time")
		}
	} else {
		probeMeeting.Unlock()
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if err := probeBehaviour["plan:"+r.Addr]; err != nil {
		probeCalls = append(probeCalls, "plan:"+r.Addr)
		return nil, err
	}
	// What the plan saw of the probes it follows (TestUpstreamPlans).
	var seen []string
	for a, up := range r.UpstreamPlans("probe") {
		if up == nil {
			seen = append(seen, a+" failed")
		} else {
			seen = append(seen, a+" "+strings.Join(up.Actions, ","))
		}
	}
	sort.Strings(seen)
	return &engine.StepPlan{Actions: []string{"probe"}, Observed: seen}, nil
}

func setProbe(t *testing.T, behaviour map[string]error) {
	probeMu.Lock()
	defer probeMu.Unlock()
	probeBehaviour, probeCalls = behaviour, nil
}

func calls() []string {
	probeMu.Lock()
	defer probeMu.Unlock()
	return append([]string(nil), probeCalls...)
}

const probeRunbook = `
runbook {
  name = "probes"
}
probe "a" {
  label = "first"
}
probe "b" {
  label = probe.a.label
}
`

func openProbe(t *testing.T) (*engine.Session, engine.Options) {
	t.Helper()
	return openRunbook(t, "probes", probeRunbook)
}

// openRunbook opens src as NAME.hcl in a new directory, with the journal
// of run NAME beside it.
func openRunbook(t *testing.T, name, src string) (*engine.Session, engine.Options) {
	t.Helper()
	dir := t.TempDir()
	s, diags := engine.Open(filepath.Join(dir, name+".hcl"), []byte(src), engine.VarInputs{}, true)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return s, engine.Options{JournalDir: filepath.Join(dir, ".runbook", name), Command: "test"}
}

// A step that hands work to the operator leaves the run waiting; a new apply
// is refused, and resume continues with that step.
func TestWaitingForOperator(t *testing.T) {
	s, opts := openProbe(t)
	setProbe(t, map[string]error{"apply:probe.b": engine.WaitForOperator("apply the patch in patch.yaml")})
	err := s.Apply(context.Background(), opts)
	if !errors.Is(err, engine.ErrWaiting) {
		t.Fatalf("apply: got %v, want a waiting error", err)
	}
	records, _, err := engine.ReadJournal(opts.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := engine.Replay(records)
	if got := js.Step("probe.b").State; got != engine.StateWaiting {
		t.Fatalf("probe.b is %s, want waiting", got)
	}
	s2, opts2 := s, opts
	if err := s2.Apply(context.Background(), opts2); !errors.Is(err, engine.ErrRefused) {
		t.Fatalf("a new apply while waiting: got %v, want a refusal", err)
	}
	setProbe(t, map[string]error{})
	s3, diags, err := engine.OpenFromJournal(opts.JournalDir, "", engine.VarInputs{})
	if err != nil || diags.HasErrors() {
		t.Fatal(err, diags)
	}
	if err := s3.Resume(context.Background(), opts); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := calls(); len(got) != 1 || got[0] != "apply:probe.b" {
		t.Fatalf("resume called %v, want only probe.b's apply", got)
	}
}

// A step's refusal stops a rollback with ErrRefused and leaves the steps
// before it done; --force lets it through, and the order stays reversed.
func TestRollbackRefusalAndForce(t *testing.T) {
	s, opts := openProbe(t)
	setProbe(t, map[string]error{})
	if err := s.Apply(context.Background(), opts); err != nil {
		t.Fatal(err)
	}
	setProbe(t, map[string]error{"rollback:probe.b": engine.Refusef("objects were written since")})
	rb, _, err := engine.OpenFromJournal(opts.JournalDir, "", engine.VarInputs{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rb.Rollback(context.Background(), opts, ""); !errors.Is(err, engine.ErrRefused) {
		t.Fatalf("rollback: got %v, want a refusal", err)
	}
	if got := calls(); len(got) != 1 || got[0] != "rollback:probe.b" {
		t.Fatalf("calls %v: probe.a must not be undone after probe.b refused", got)
	}
	records, _, err := engine.ReadJournal(opts.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := engine.Replay(records)
	if got := js.Step("probe.b").State; got != engine.StateDone {
		t.Fatalf("probe.b is %s after its rollback was refused, want done: a refusal changes nothing", got)
	}
	setProbe(t, map[string]error{"rollback:probe.b": engine.Refusef("objects were written since")})
	forced := opts
	forced.Force = true
	rb2, _, _ := engine.OpenFromJournal(opts.JournalDir, "", engine.VarInputs{})
	if err := rb2.Rollback(context.Background(), forced, ""); err != nil {
		t.Fatalf("forced rollback: %v", err)
	}
	if got := calls(); len(got) != 2 || got[0] != "rollback:probe.b" || got[1] != "rollback:probe.a" {
		t.Fatalf("forced rollback called %v, want probe.b then probe.a", got)
	}
}

// An apply that carries a targeted run further widens the run's targets in
// the journal: a resume after it fails continues what that apply set out to
// do, not only the first command's targets.
func TestResumeAfterWideningApply(t *testing.T) {
	s, opts := openProbe(t)
	setProbe(t, map[string]error{})
	targeted := opts
	targeted.Targets = []string{"probe.a"}
	if err := s.Apply(context.Background(), targeted); err != nil {
		t.Fatalf("apply -target probe.a: %v", err)
	}
	setProbe(t, map[string]error{"apply:probe.b": errors.New("probe b fails")})
	if err := s.Apply(context.Background(), opts); err == nil {
		t.Fatal("apply: probe.b's failure was not reported")
	}
	setProbe(t, map[string]error{})
	s2, diags, err := engine.OpenFromJournal(opts.JournalDir, "", engine.VarInputs{})
	if err != nil || diags.HasErrors() {
		t.Fatal(err, diags)
	}
	if err := s2.Resume(context.Background(), opts); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := calls(); len(got) != 1 || got[0] != "apply:probe.b" {
		t.Fatalf("resume called %v, want probe.b's apply", got)
	}
	records, _, err := engine.ReadJournal(opts.JournalDir)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := engine.Replay(records)
	if got := js.Step("probe.b").State; got != engine.StateDone {
		t.Fatalf("probe.b is %s after the resume, want done", got)
	}
}

// apply FILE plans every step first: a step that refuses what the runbook
// asks stops the run before the steps before it run (refuse early, change
// nothing), while a step that merely cannot be planned yet is left to the run.
func TestApplyRefusesEarly(t *testing.T) {
	s, opts := openProbe(t)
	setProbe(t, map[string]error{"plan:probe.b": engine.Refusef("the enclave lacks key k")})
	err := s.Apply(context.Background(), opts)
	if !errors.Is(err, engine.ErrRefused) || !strings.Contains(err.Error(), "probe.b") || !strings.Contains(err.Error(), "the enclave lacks key k") {
		t.Fatalf("apply: got %v, want a refusal naming probe.b and its reason", err)
	}
	if got := calls(); len(got) != 1 || got[0] != "plan:probe.b" {
		t.Fatalf("calls %v: nothing may run when a step refuses at plan", got)
	}
	if records, _, err := engine.ReadJournal(opts.JournalDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the journal after a refusal: %d record(s), %v; want none written", len(records), err)
	}

	setProbe(t, map[string]error{"plan:probe.b": errors.New("cannot observe yet")})
	if err := s.Apply(context.Background(), opts); err != nil {
		t.Fatalf("apply with a step that cannot be planned yet: %v", err)
	}
	if got := calls(); len(got) != 3 || got[1] != "apply:probe.a" || got[2] != "apply:probe.b" {
		t.Fatalf("calls %v, want the plan, then both applies", got)
	}
}

// Independent steps are planned concurrently (a plan waits on the network),
// and the plan still lists them in execution order.
func TestPlanRunsIndependentStepsConcurrently(t *testing.T) {
	dir := t.TempDir()
	src := `
runbook {
  name = "wide"
}
probe "a" {}
probe "b" {}
probe "c" {}
probe "d" {
  label = probe.c.label
}
`
	s, diags := engine.Open(filepath.Join(dir, "wide.hcl"), []byte(src), engine.VarInputs{}, true)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	setProbe(t, map[string]error{})
	probeMeeting.Lock()
	probeMeeting.names, probeMeeting.arrived, probeMeeting.all = map[string]bool{"probe.a": true, "probe.b": true, "probe.c": true}, 0, make(chan struct{})
	probeMeeting.Unlock()
	t.Cleanup(func() { probeMeeting.Lock(); probeMeeting.names = nil; probeMeeting.Unlock() })
	res, err := s.Plan(context.Background(), engine.Options{JournalDir: filepath.Join(dir, ".runbook", "wide"), Command: "test"})
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	var order []string
	for _, ps := range res.Steps {
		order = append(order, ps.Addr)
	}
	if got, want := strings.Join(order, " "), strings.Join(s.Graph.Order(), " "); got != want {
		t.Errorf("planned steps in order %q, want the execution order %q", got, want)
	}
}

// A step's plan sees the plans made before it of the steps it follows,
// directly or through others, and only those: a failed one as nil.
func TestUpstreamPlans(t *testing.T) {
	dir := t.TempDir()
	src := `
runbook {
  name = "chain"
}
probe "a" {}
probe "b" {
  depends_on = [probe.a]
}
probe "c" {}
probe "d" {
  depends_on = [probe.b]
}
probe "e" {
  label = probe.a.label
}
probe "f" {
  label = probe.e.label
}
`
	s, diags := engine.Open(filepath.Join(dir, "chain.hcl"), []byte(src), engine.VarInputs{}, true)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	setProbe(t, map[string]error{"plan:probe.a": errors.New("cannot observe yet")})
	res, err := s.Plan(context.Background(), engine.Options{JournalDir: filepath.Join(dir, ".runbook", "chain"), Command: "test"})
	if err == nil || !strings.Contains(err.Error(), "probe.a: cannot observe yet") || res == nil {
		t.Fatalf("plan: %v, want the plans and the error of probe.a", err)
	}
	got := map[string]string{}
	for _, ps := range res.Steps {
		if ps.Plan != nil {
			got[ps.Addr] = strings.Join(ps.Plan.Observed, "; ")
		}
	}
	want := map[string]string{"probe.b": "probe.a failed", "probe.c": "", "probe.d": "probe.a failed; probe.b probe"}
	for a, w := range want {
		if got[a] != w {
			t.Errorf("%s saw upstream plans %q, want %q", a, got[a], w)
		}
	}
	// A step that takes a value from the failed one is not planned: its
	// attribute would hold a zero value in place of what it would give,
	// and its plan fail on that with the wrong cause. The one after it
	// names the cause, not it.
	errs := map[string]string{}
	for _, ps := range res.Steps {
		errs[ps.Addr] = ps.Error
	}
	for a, w := range map[string]string{"probe.e": "it takes values from probe.a, which could not be planned", "probe.f": "it takes values from probe.a, which could not be planned"} {
		if errs[a] != w || got[a] != "" {
			t.Errorf("%s: error %q, plan %q; want the error %q and no plan", a, errs[a], got[a], w)
		}
	}
}

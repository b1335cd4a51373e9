package engine_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// early is a step type for the EarlyStarter tests: its StartEarly and Plan
// are recorded; the plan of "early.first" waits until StartEarly of every
// other early step has been called (or fails after a while), which only a
// StartEarly beside the walk, not in dependency order, lets it see.
type early struct {
	cfg struct {
		After string `hcl:"after,optional"`
	}
}

var earlyLog struct {
	sync.Mutex
	calls   []string
	started chan struct{} // closed by early.second's StartEarly
}

func init() {
	engine.Register(engine.BlockType{Name: "early", Kind: engine.KindStep, New: func() engine.Block { return &early{} }, Outputs: map[string]cty.Type{"done": cty.String}})
}

func (e *early) Config() any { return &e.cfg }

func (e *early) record(s string) {
	earlyLog.Lock()
	defer earlyLog.Unlock()
	earlyLog.calls = append(earlyLog.calls, s)
}

func (e *early) StartEarly(_ context.Context, r *engine.Run) {
	e.record("early:" + r.Addr)
	if r.Addr == "early.second" {
		close(earlyLog.started)
	}
}

func (e *early) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	e.record("plan:" + r.Addr)
	if r.Addr == "early.first" && r.BeforeApply() {
		select {
		case <-earlyLog.started:
		case <-time.After(5 * time.Second):
			// The quiet plan's failure alone would not fail the apply.
			e.record("planfailed:" + r.Addr)
			return nil, errors.New("early.second's StartEarly was not called while the plan walked the steps before it")
		}
	}
	return &engine.StepPlan{Actions: []string{"early"}}, nil
}

func (e *early) Apply(_ context.Context, r *engine.Run) error {
	e.record("apply:" + r.Addr)
	r.SetOutput("done", cty.StringVal("yes"))
	return nil
}

const earlyRunbook = `
runbook {
  name = "early"
}
early "first" {}
early "second" {
  after = early.first.done
}
`

func openEarly(t *testing.T) (*engine.Session, engine.Options) {
	t.Helper()
	earlyLog.Lock()
	earlyLog.calls, earlyLog.started = nil, make(chan struct{})
	earlyLog.Unlock()
	return openRunbook(t, "early", earlyRunbook)
}

func earlyCalls() []string {
	earlyLog.Lock()
	defer earlyLog.Unlock()
	return append([]string(nil), earlyLog.calls...)
}

func count(calls []string, s string) int {
	n := 0
	for _, c := range calls {
		if c == s {
			n++
		}
	}
	return n
}

// The quiet plan that apply makes first calls StartEarly of a step that
// depends on another before the plan of the one it depends on has ended
// (early.first's plan waits for it), once per step; the apply then runs
// both in order.
func TestStartEarlyBesideThePlan(t *testing.T) {
	s, opts := openEarly(t)
	if err := s.Apply(context.Background(), opts); err != nil {
		t.Fatalf("apply: %v (calls %v)", err, earlyCalls())
	}
	got := earlyCalls()
	if count(got, "planfailed:early.first") > 0 {
		t.Fatalf("calls %v: early.second's StartEarly came only after the plan of the step it depends on", got)
	}
	for _, want := range []string{"early:early.first", "early:early.second", "apply:early.first", "apply:early.second"} {
		if count(got, want) != 1 {
			t.Fatalf("calls %v: want %s once", got, want)
		}
	}
}

// A plan that no apply follows starts nothing early.
func TestStartEarlyOnlyBeforeAnApply(t *testing.T) {
	s, opts := openEarly(t)
	if _, err := s.Plan(context.Background(), opts); err != nil {
		t.Fatalf("plan: %v", err)
	}
	for _, c := range earlyCalls() {
		if strings.HasPrefix(c, "early:") {
			t.Fatalf("plan called %v: StartEarly is for the quiet plan before an apply only", earlyCalls())
		}
	}
}

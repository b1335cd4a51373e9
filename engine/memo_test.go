package engine_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/runbook-dev/runbook/engine"
)

// holder is a step type for the Releaser tests: the quiet plan before an
// apply keeps a held value in Memo, which its Apply finds still held; the
// plan refuses when the runbook says so.
type holder struct {
	cfg struct {
		Refuse bool `hcl:"refuse,optional"`
	}
}

// held is what a holder's quiet plan keeps for its apply.
type held struct {
	released    atomic.Bool
	seenByApply atomic.Bool
}

func (h *held) Release() { h.released.Store(true) }

type heldKey struct{}

// lastHeld is the held value the last session's holder made.
var lastHeld atomic.Pointer[held]

func init() {
	engine.Register(engine.BlockType{Name: "holder", Kind: engine.KindStep, New: func() engine.Block { return &holder{} }})
}

func (h *holder) Config() any { return &h.cfg }

func (h *holder) memo(r *engine.Run) *held {
	return r.Memo(heldKey{}, func() any {
		m := new(held)
		lastHeld.Store(m)
		return m
	}).(*held)
}

func (h *holder) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	h.memo(r)
	if h.cfg.Refuse {
		return nil, engine.Refusef("refused")
	}
	return &engine.StepPlan{Actions: []string{"hold"}}, nil
}

func (h *holder) Apply(_ context.Context, r *engine.Run) error {
	m := h.memo(r)
	if m.released.Load() {
		return errors.New("released before the apply used it")
	}
	m.seenByApply.Store(true)
	return nil
}

// What the quiet plan keeps in Memo for its apply is released when the
// apply ends, whether it ran or its plan refused it, and not before: not by
// a plan alone, not before the apply's step used it.
func TestApplyReleasesMemo(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		s, opts := openRunbook(t, "holder", fmt.Sprintf("runbook {\n  name = \"holder\"\n}\nholder \"h\" {\n  refuse = %v\n}\n", refuse))
		s.Plan(context.Background(), opts)
		m := lastHeld.Load()
		if m == nil || m.released.Load() {
			t.Fatalf("refuse=%v: after a plan alone, held %+v", refuse, m)
		}
		err := s.Apply(context.Background(), opts)
		if refuse != errors.Is(err, engine.ErrRefused) || (!refuse && err != nil) {
			t.Fatalf("refuse=%v: apply: %v", refuse, err)
		}
		if lastHeld.Load() != m {
			t.Fatalf("refuse=%v: the apply made a new memo value instead of the plan's", refuse)
		}
		if !m.released.Load() {
			t.Errorf("refuse=%v: not released when the apply ended", refuse)
		}
		if !refuse && !m.seenByApply.Load() {
			t.Errorf("the apply did not use the held value")
		}
	}
}

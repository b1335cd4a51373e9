package steps

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	kesserver "github.com/minio/kes"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/engine/enginetest"
)

// listProbe lists its kes block's store through planList in Plan and in
// Apply, counting the store's listings (listCount), and checks that the
// copy it got is its own (it empties its Keys: the next copy is whole).
type listProbe struct {
	cfg struct {
		KES cty.Value `hcl:"kes"`
	}
}

var listCount struct {
	sync.Mutex
	byPhase map[string]int
	lens    []int
}

// countingStore counts the listings of a key store.
type countingStore struct {
	kesserver.KeyStore
	n *atomic.Int64
}

func (s countingStore) List(ctx context.Context, prefix string, n int) ([]string, string, error) {
	s.n.Add(1)
	return s.KeyStore.List(ctx, prefix, n)
}

func init() {
	engine.Register(engine.BlockType{Name: "list_probe", Kind: engine.KindStep, New: func() engine.Block { return &listProbe{} }})
}

func (p *listProbe) Config() any { return &p.cfg }

func (p *listProbe) list(ctx context.Context, r *engine.Run, phase string) error {
	k, _, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	if err != nil {
		return err
	}
	ks, conf, err := k.OpenKeyStore(ctx, r)
	if err != nil {
		return err
	}
	defer ks.Close()
	var n atomic.Int64
	l, err := planList(ctx, r, k, countingStore{ks, &n}, conf)
	if err != nil {
		return err
	}
	listCount.Lock()
	defer listCount.Unlock()
	listCount.byPhase[phase] += int(n.Load())
	listCount.lens = append(listCount.lens, len(l.Keys))
	clear(l.Keys)
	l.Keys = l.Keys[:0]
	return nil
}

func (p *listProbe) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	return &engine.StepPlan{}, p.list(ctx, r, "plan")
}

func (p *listProbe) Apply(ctx context.Context, r *engine.Run) error { return p.list(ctx, r, "apply") }

func (p *listProbe) Rollback(context.Context, *engine.Run) error { return nil }

// TestPlanListsTheStoreOnce: the steps of a plan share one listing of a key
// store (one listing per plan), each with a copy of its own; an apply
// lists it each time it asks.
func TestPlanListsTheStoreOnce(t *testing.T) {
	h := enginetest.New(t, `
runbook {
  name = "lists"
}

kes "legacy" {
  config = "kes/kes-config.yaml"
}

list_probe "a" {
  kes = kes.legacy
}

list_probe "b" {
  kes = kes.legacy
}

list_probe "c" {
  kes = kes.legacy
}
`)
	h.WriteFile("kes/kes-config.yaml", "version: v1\naddress: 0.0.0.0:7373\nadmin:\n  identity: 3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22\ntls:\n  key: ./server.key\n  cert: ./server.cert\nkeystore:\n  fs:\n    path: ./keys\n")
	store := filepath.Join(h.Dir, "kes", "keys")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	writeKESKeys(t, store, 5)

	for _, tc := range []struct {
		command     string
		run         func() error
		plan, apply int
	}{
		{"plan", func() error { _, err := h.Plan(); return err }, 1, 0},
		{"apply", func() error { return h.Apply() }, 1, 3}, // its quiet plan first
	} {
		listCount.byPhase, listCount.lens = map[string]int{}, nil
		if err := tc.run(); err != nil {
			t.Fatalf("%s: %v", tc.command, err)
		}
		if got := listCount.byPhase["plan"]; got != tc.plan {
			t.Errorf("%s: the plan's three steps listed the store %d time(s), want %d", tc.command, got, tc.plan)
		}
		if got := listCount.byPhase["apply"]; got != tc.apply {
			t.Errorf("%s: the apply's three steps listed the store %d time(s), want %d", tc.command, got, tc.apply)
		}
		if want := slices.Repeat([]int{5}, 3+tc.apply); !slices.Equal(listCount.lens, want) {
			t.Errorf("%s: the steps got listings of %v keys, want %v (each its own copy)", tc.command, listCount.lens, want)
		}
	}
}

// TestKeptResult: the first result that succeeded is kept; a failure is
// asked again; concurrent callers wait for the one under way.
func TestKeptResult(t *testing.T) {
	var k keptResult[int]
	calls := 0
	fail := errors.New("unreachable")
	if _, err := k.get(func() (int, error) { calls++; return 0, fail }); !errors.Is(err, fail) {
		t.Fatalf("first call: %v, want its error", err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			v, err := k.get(func() (int, error) { calls++; return 42, nil })
			if v != 42 || err != nil {
				t.Errorf("got %d, %v; want 42", v, err)
			}
		})
	}
	wg.Wait()
	if calls != 2 {
		t.Errorf("observed %d times, want 2 (the failure, then one success kept)", calls)
	}
}

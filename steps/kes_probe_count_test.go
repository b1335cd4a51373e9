package steps

import (
	"context"
	"fmt"
	"testing"
	"time"

	kes "github.com/minio/kes-go"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/engine/enginetest"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// serverProbe asks its kes block's server (kesConnection.Server) in Plan
// and in Apply, as the prerequisites and the verification do.
type serverProbe struct {
	cfg struct {
		KES cty.Value `hcl:"kes"`
	}
	access bool // access_probe: the server and the identity's access (accessAt)
}

func init() {
	engine.Register(engine.BlockType{Name: "server_probe", Kind: engine.KindStep, New: func() engine.Block { return &serverProbe{} }})
	engine.Register(engine.BlockType{Name: "access_probe", Kind: engine.KindStep, New: func() engine.Block { return &serverProbe{access: true} }})
}

func (p *serverProbe) Config() any { return &p.cfg }

func (p *serverProbe) probe(ctx context.Context, r *engine.Run) error {
	k, addr, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	if err != nil {
		return err
	}
	if p.access {
		_, _, err = k.accessAt(ctx, r, addr)
		return err
	}
	_, err = k.Server(ctx, r, addr)
	return err
}

func (p *serverProbe) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	return &engine.StepPlan{}, p.probe(ctx, r)
}

func (p *serverProbe) Apply(ctx context.Context, r *engine.Run) error { return p.probe(ctx, r) }

func (p *serverProbe) Rollback(context.Context, *engine.Run) error { return nil }

// TestPlanProbesKESOnce: the steps of a plan share one probe of a KES
// server (its version and a listing of every name), as the real server's
// request counter (its metrics) counts them; an apply's steps each probe
// again, as each checks what it acts on. Steps that learn what their
// identity may do share one description of it as well.
func TestPlanProbesKESOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testenv.StartKES(t, testenv.KESOptions{Keys: 3})
	c := k.Client()
	requests := kesRequests(ctx, t, c)
	probe := requests(func() error { _, err := probeKESServer(ctx, c, false); return err })
	quietProbe := requests(func() error { _, err := probeKESServer(ctx, c, true); return err }) // the quiet plan's before an apply
	if probe == 0 || quietProbe == 0 {
		t.Fatalf("a probe counted %d and %d requests at the server", probe, quietProbe)
	}
	h := kesStepsHarness(t, k, "server_probe", "a", "b", "c")
	if got := requests(func() error { _, err := h.Plan(); return err }); got != probe {
		t.Errorf("a plan of three steps that ask the KES server: %d requests at the server, want %d (one probe)", got, probe)
	}
	if got, want := requests(func() error { return h.Apply() }), quietProbe+3*probe; got != want {
		t.Errorf("an apply (its quiet plan, then three steps): %d requests at the server, want %d (one probe, then one per step)", got, want)
	}

	// Steps that learn what their identity may do (the prerequisites and
	// the verification, with accessAt) share one description of it too
	// (GET /v1/identity/self/describe, asked beside the probe).
	describe := requests(func() error {
		if d := kesDescribeSelf(ctx, c); !d.admin {
			return fmt.Errorf("the test's KES server does not describe its admin as the admin: %+v", d)
		}
		return nil
	})
	if describe != 1 {
		t.Fatalf("a description counted %d requests at the server", describe)
	}
	h = kesStepsHarness(t, k, "access_probe", "d", "e")
	if got, want := requests(func() error { _, err := h.Plan(); return err }), probe+describe; got != want {
		t.Errorf("a plan of two steps that learn their identity's access: %d requests at the server, want %d (one probe, one description)", got, want)
	}
}

// kesStepsHarness is a runbook of steps of blockType, one per name, each
// with the kes block of server k.
func kesStepsHarness(t *testing.T, k *testenv.KES, blockType string, names ...string) *enginetest.Harness {
	src := `
runbook {
  name = "probes"
}

variable "kes_api_key" {
  sensitive = true
}

kes "legacy" {
  server  = "` + k.URL + `"
  api_key = var.kes_api_key
  ca_file = "` + k.CAFile + `"
}
`
	for _, n := range names {
		src += fmt.Sprintf("\n%s %q {\n  kes = kes.legacy\n}\n", blockType, n)
	}
	h := enginetest.New(t, src)
	h.Var("kes_api_key", k.APIKey)
	return h
}

// kesRequests returns a counter of the requests the KES server of c
// answered while do ran (its metrics), less what reading the counter
// itself costs.
func kesRequests(ctx context.Context, t *testing.T, c *kes.Client) func(do func() error) uint64 {
	return func(do func() error) uint64 {
		t.Helper()
		count := func() uint64 {
			m, err := c.Metrics(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return m.RequestOK + m.RequestErr + m.RequestFail
		}
		idle := count()
		before := count()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		return count() - before - (before - idle)
	}
}

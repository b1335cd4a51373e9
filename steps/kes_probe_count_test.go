package steps

import (
	"context"
	"testing"
	"time"

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
}

func init() {
	engine.Register(engine.BlockType{Name: "server_probe", Kind: engine.KindStep, New: func() engine.Block { return &serverProbe{} }})
}

func (p *serverProbe) Config() any { return &p.cfg }

func (p *serverProbe) probe(ctx context.Context, r *engine.Run) error {
	k, addr, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	if err != nil {
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
// again, as each checks what it acts on.
func TestPlanProbesKESOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := testenv.StartKES(t, testenv.KESOptions{Keys: 3})
	c := k.Client()
	// requests counts the requests the server answered while do ran,
	// less what reading the counter itself costs.
	requests := func(do func() error) uint64 {
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
	probe := requests(func() error { _, err := probeKESServer(ctx, c, false); return err })
	quietProbe := requests(func() error { _, err := probeKESServer(ctx, c, true); return err }) // the quiet plan's before an apply
	if probe == 0 || quietProbe == 0 {
		t.Fatalf("a probe counted %d and %d requests at the server", probe, quietProbe)
	}
	h := enginetest.New(t, `
runbook {
  name = "probes"
}

variable "kes_api_key" {
  sensitive = true
}

kes "legacy" {
  server  = "`+k.URL+`"
  api_key = var.kes_api_key
  ca_file = "`+k.CAFile+`"
}

server_probe "a" {
  kes = kes.legacy
}

server_probe "b" {
  kes = kes.legacy
}

server_probe "c" {
  kes = kes.legacy
}
`)
	h.Var("kes_api_key", k.APIKey)
	if got := requests(func() error { _, err := h.Plan(); return err }); got != probe {
		t.Errorf("a plan of three steps that ask the KES server: %d requests at the server, want %d (one probe)", got, probe)
	}
	if got, want := requests(func() error { return h.Apply() }), quietProbe+3*probe; got != want {
		t.Errorf("an apply (its quiet plan, then three steps): %d requests at the server, want %d (one probe, then one per step)", got, want)
	}
}

package engine

import (
	"context"
	"errors"
	"fmt"
	"reflect"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// Block is what every registered block type implements: a pointer to an
// hcl-tagged struct (gohcl tags) into which the engine decodes the block's body
// after evaluating it. Meta-arguments (depends_on, timeout, retry) are the
// engine's and never reach the block.
type Block interface {
	Config() any
}

// Step is a block with side effects. Apply must be idempotent: on resume it is
// called again with the checkpoints its earlier attempt wrote (r.Checkpoints),
// and must finish the work without redoing what those record.
type Step interface {
	Block
	Apply(ctx context.Context, r *Run) error
}

// Planner observes the real systems read-only and says what Apply would do.
type Planner interface {
	Plan(ctx context.Context, r *Run) (*StepPlan, error)
}

// EarlyStarter is a step with read-only work its apply will need that
// depends on nothing the steps before it do (a long listing of a server):
// in the quiet plan an apply makes first (Run.BeforeApply), the engine
// calls StartEarly for every selected step that has not run, beside the
// plan's walk rather than in dependency order, so that the work can start
// at the plan's first moment. The step's config is decoded as the plan
// starts: outputs of the steps before it are unknown. StartEarly must
// return once the work is started (the engine waits for it before the plan
// ends) and hand the work on through Run.Memo; the work must not use r
// after StartEarly returns. It is best-effort: on any failure it starts
// nothing, and the step's Plan and Apply meet the failure in their order.
// It reads no file the step's Plan does not read too: the files a plan
// reads bind it, and a saved plan (apply DIR, planned without StartEarly)
// must bind the same ones.
type EarlyStarter interface {
	StartEarly(ctx context.Context, r *Run)
}

// Rollbacker undoes a step from its journal records alone (r.Checkpoints,
// r.Outputs). It is called for steps that completed and for steps that were
// interrupted or failed half-way, so it must not assume Apply finished. It must
// be idempotent: a rollback can itself be interrupted and run again.
// Returning an error that wraps ErrRefused stops the rollback for safety; a
// refusal must come before the rollback changes anything, since the engine
// then records the step's state as it was before the rollback began.
type Rollbacker interface {
	Rollback(ctx context.Context, r *Run) error
}

// Validator checks a decoded configuration beyond its types. Values that are
// not known yet (outputs of other steps, unset variables) are reported by
// d.Unknown and hold their zero value.
type Validator interface {
	Validate(d *Decoded) hcl.Diagnostics
}

// StepPlan is what a Planner observed and intends.
type StepPlan struct {
	Observed []string `json:"observed,omitempty"`
	Actions  []string `json:"actions,omitempty"`
	// Items names what the step will act on one by one (for example key
	// names); ItemsLabel says what they are ("keys to import").
	Items      []string `json:"items,omitempty"`
	ItemsLabel string   `json:"items_label,omitempty"`
	// Verification says how success will be proven, for the reviewer.
	Verification []string `json:"verification,omitempty"`
	// Sections are titled blocks for the change request, such as the
	// environment diff of each node (secrets already redacted).
	Sections []PlanSection `json:"sections,omitempty"`
	// EstimateSeconds is how long Apply is expected to take, if the step can say.
	EstimateSeconds float64  `json:"estimate_seconds,omitempty"`
	Rollback        string   `json:"rollback,omitempty"`
	Risks           []string `json:"risks,omitempty"`
	// Changes are the systems the step changes, by the identity each
	// reports of itself, so that plans made apart (a fleet's deployments)
	// can be checked for two that would change one system.
	Changes []Resource `json:"changes,omitempty"`
	// State is the observed state that the plan's fingerprint binds.
	State any `json:"state,omitempty"`
	// Outputs are the outputs already known at plan time (for example an
	// enclave's name), so that dependents can be planned.
	Outputs map[string]cty.Value `json:"-"`
}

// Resource is a system a step changes, named by the identity the system
// reports of itself where it has one (a MinIO deployment's ID, not the URL
// it was reached by, which another var file may spell another way: a host
// name, an address, a load balancer). Two resources of the same Kind and ID
// are one system, however each was reached.
type Resource struct {
	Kind string `json:"kind"` // what it is, e.g. "MinIO deployment"
	ID   string `json:"id"`   // its identity, unique within Kind
	Via  string `json:"via"`  // how the plan reached it (an endpoint), for messages
}

func (r Resource) String() string { return fmt.Sprintf("%s %s (reached as %s)", r.Kind, r.ID, r.Via) }

// PlanSection is a titled block of preformatted text in a change request.
type PlanSection struct {
	Title string `json:"title"`
	Body  string `json:"body"`
}

// ErrRefused marks an action refused for safety (exit code 3).
var ErrRefused = errors.New("refused for safety")

// ErrWaiting marks a step that handed work to the operator: the run stops
// with the step waiting, and resume continues once the operator is done.
var ErrWaiting = errors.New("waiting for the operator")

// WaitForOperator returns an error wrapping ErrWaiting that says what the
// operator must do.
func WaitForOperator(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrWaiting, fmt.Sprintf(format, args...))
}

// Refusef returns an error wrapping ErrRefused.
func Refusef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// RefuseWithHint returns an error wrapping ErrRefused, with hint attached
// (WithHint): the refusal says why, the hint what to do.
func RefuseWithHint(hint, format string, args ...any) error {
	return WithHint(Refusef(format, args...), hint)
}

// Connection values are capsules holding the decoded block, so that a step can
// take `from = kes.legacy` and reach the connection's Go value.
type connectionRef struct {
	Address string
	Block   Block
}

// ConnectionType is the cty type of a connection reference.
var ConnectionType = cty.Capsule("connection", reflect.TypeOf(connectionRef{}))

func connectionVal(addr string, b Block) cty.Value {
	return cty.CapsuleVal(ConnectionType, &connectionRef{Address: addr, Block: b})
}

// ConnectionFrom returns the connection block that v refers to, as type T.
// It fails when v is not a connection or not of the expected kind.
func ConnectionFrom[T Block](v cty.Value, want string) (T, string, error) {
	var zero T
	if v.IsNull() || !v.IsKnown() || !v.Type().Equals(ConnectionType) {
		return zero, "", fmt.Errorf("expected a reference to a %s block, such as %s.NAME", want, want)
	}
	ref := v.EncapsulatedValue().(*connectionRef)
	b, ok := ref.Block.(T)
	if !ok {
		return zero, ref.Address, fmt.Errorf("%s is not a %s block", ref.Address, want)
	}
	return b, ref.Address, nil
}

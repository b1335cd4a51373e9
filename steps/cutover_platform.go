package steps

import (
	"context"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// cutoverPlatform is where the object store's environment lives and how
// its nodes restart. The cutover's state machine (attempts, checkpoints,
// health, validation, the write check before a rollback: cutover_apply.go,
// cutover_health.go, cutover_rollback.go) is one for every platform and
// reaches the nodes only through these methods:
//
//	linuxPlatform (cutover_linux.go)      env files on this host or over ssh,
//	                                      restarted by systemd or a command
//	k8sPlatform (cutover_kubernetes.go)   a Tenant, ObjectStore or StatefulSet
//	                                      changed through the Kubernetes API,
//	                                      every pod deleted at once
//
// Methods that change something are called with the attempt g (0 for the
// first; g > 0 after g automatic rollbacks), whose checkpoint items they may
// add (cutover_items.go); they must be safe to call again after an
// interruption at any instant (kill -9), judging what is left to do by the
// journal and the live system.
type cutoverPlatform interface {
	// Observe reads every node and the environment it runs with, read-only,
	// and refuses (engine.ErrRefused), before anything changes, what this
	// platform cannot cut over (a restart mode that cannot work, files that
	// differ between nodes, KMS variables set where the change cannot reach
	// them). Plan calls it, and apply before an attempt's first change.
	Observe(ctx context.Context, r *engine.Run) (*platformView, error)

	// PlanChange adds to p, after Observe, the exact change that set makes
	// to each node's environment (secrets redacted: set holds the API key),
	// how every node is then restarted, and how a rollback undoes it. It
	// returns what the plan binds of the nodes (no secret), keys of the
	// step's plan state: a change to it makes a saved plan stale.
	PlanChange(r *engine.Run, set map[string]string, p *engine.StepPlan) (state map[string]any, err error)

	// Write gives every node the environment set, in attempt g. It backs up
	// what it replaces (journal dir backups/, 0600) and checkpoints its
	// intent before each side effect, so that called again it recognises
	// what it already wrote and writes nothing twice; it returns once every
	// node will start with the same environment. A node's environment
	// changed by someone else since is an error naming it.
	Write(ctx context.Context, r *engine.Run, g int, set map[string]string) error

	// Restart restarts every node at once (back: onto KES again, for the
	// rollback) and returns once every node's restart returned; ctx bounds
	// it. A platform whose operator restarts the nodes returns an error
	// wrapping engine.ErrWaiting until the operator has done so.
	Restart(ctx context.Context, r *engine.Run, back bool) error

	// Restore gives every node the environment attempt g replaced,
	// checkpointed per node; it refuses (engine.ErrRefused), before writing
	// anything, when a node's environment was changed since Write by someone
	// else. Idempotent.
	Restore(ctx context.Context, r *engine.Run, g int) error

	// Logs is every node's recent log, for an error message ("" when the
	// platform has none to show).
	Logs(ctx context.Context, r *engine.Run) string

	// Servers is how many servers the object store must report online (0:
	// not known to the platform); Hosts how many distinct hosts run them
	// (the clocks the write check before a rollback allows for).
	Servers() int
	Hosts() int

	// Close releases what the platform holds open (ssh connections).
	Close()
}

// platformView is what Observe saw.
type platformView struct {
	// Env is the environment every node starts with today (the env files'
	// MINIO_* variables); nil where the platform does not show it.
	Env map[string]string
	// Sources says, by variable of Env, where the nodes get it when that is
	// not the env files (Kubernetes: "StatefulSet minio container minio
	// env", "spec.env", …), for messages naming what to fix.
	Sources map[string]string
	// Observed are the plan's lines about the nodes; Risks what the plan
	// must say could not be checked.
	Observed []string
	Risks    []string
	// Table is the nodes as runbook status shows them (nil: none).
	Table *engine.Table
}

// kmTarget is the Key Manager the nodes are cut over to, as the checks
// from each node need it.
type kmTarget struct {
	Endpoints []string // https://host:port, as MINIO_KMS_SERVER will list them
	CAFile    string   // the key_manager block's ca_file ("" = the system roots verify it)
	InstallCA bool     // cutover install_ca: put CAFile into the certs/CAs of each node that lacks it
}

// newCutoverPlatform is the platform the aistor block names; target is
// the Key Manager, wait bounds how long a platform watches a rollout it
// does not drive.
func newCutoverPlatform(a *aistorConnection, target kmTarget, wait time.Duration) (cutoverPlatform, error) {
	if a.Platform() == "kubernetes" {
		return &k8sPlatform{a: a, wait: wait}, nil
	}
	return newLinuxPlatform(a, target)
}

// envSource is where the nodes get the variable name: v.Sources, else the
// env files.
func (v *platformView) envSource(name string) (where string, files bool) {
	if src := v.Sources[name]; src != "" {
		return src, false
	}
	return "the env files", true
}

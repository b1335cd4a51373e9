// Package rollout carries a fleet rollout out on Temporal: the fleet
// workflow (canary, waves, the concurrency limit, the error budget, approval
// gates, pause), one child workflow per deployment pinned to the task queue
// of the host that holds its journal, and the activities that run the
// single-deployment runbook as a subprocess and judge approvals.
//
// Everything in workflow inputs, memos, signals and heartbeats is a name, a
// path, a count or text the runbook already redacted: no secret reaches
// Temporal's history. Sensitive variables reach the runbook through the
// deployment's var files on the worker's host.
package rollout

import (
	"fmt"
	"time"
)

// Names in Temporal.
const (
	// CoordinatorQueue is the task queue of fleet workflows and approval
	// checks: any worker serves it.
	CoordinatorQueue = "runbook-fleet"
	SignalApprove    = "approve"
	SignalPause      = "pause"
	SignalResume     = "resume"
	// MemoStatus is the memo field holding the fleet's Status, so that
	// status reads it with DescribeWorkflowExecution, with no worker alive
	// (a query needs a worker alive; the memo does not).
	MemoStatus = "status"
)

// HostQueue is the task queue of the deployments whose journals host holds.
func HostQueue(host string) string { return CoordinatorQueue + "@" + host }

// FleetWorkflowID is the ID of a fleet's rollout: one open rollout per fleet.
func FleetWorkflowID(fleet string) string { return "fleet/" + fleet }

// DeploymentWorkflowID is the ID of a deployment's run: one open run per
// deployment of a runbook, whichever fleet starts it (Temporal keeps one
// open execution per workflow ID).
func DeploymentWorkflowID(runbook, deployment string) string {
	return "runbook/" + runbook + "/" + deployment
}

// FleetInput is the fleet workflow's input, from the fleet plan.
type FleetInput struct {
	Fleet       string
	Fingerprint string // the fleet plan's
	Runbook     string // the runbook's name (runbook { name })
	Waves       [][]DeploymentInput
	// MaxConcurrency bounds the deployments running at once, across waves.
	MaxConcurrency int
	// MaxErrors is the error budget: the failure that exceeds it stops new
	// starts; running deployments finish.
	MaxErrors int
	Gate      *GateInput // nil: no wave needs approval
}

// GateInput is which waves need approval and what an approval must prove.
type GateInput struct {
	Waves     []int
	Approvers int
	// AllowedSigners is the OpenSSH allowed-signers file's content (public
	// keys); empty: approvals are names.
	AllowedSigners string
	Author         string // who made the fleet plan: never an approver
	AuthorSig      string // the author's signature over the fleet fingerprint
}

// Gated reports whether wave w needs approval.
func (g *GateInput) Gated(w int) bool {
	if g == nil {
		return false
	}
	for _, x := range g.Waves {
		if x == w {
			return true
		}
	}
	return false
}

// WaveMessage is what an approver of wave w signs (and names): the fleet
// plan's fingerprint and the wave, so that an approval of one wave or one
// fleet plan never counts for another.
func WaveMessage(fingerprint string, wave int) string {
	return fmt.Sprintf("%s wave %d", fingerprint, wave)
}

// DeploymentInput is one deployment's run: where its approved plan and its
// journal are on its host.
type DeploymentInput struct {
	Name        string
	Host        string
	PlanDir     string   // the deployment's saved plan (runbook plan -out)
	Fingerprint string   // the plan's fingerprint
	RunbookFile string   // the runbook file the plan names
	VarFiles    []string // given again to apply and resume (sensitive values)
	Journal     string   // the deployment's journal on its host
	// HeartbeatTimeout is how long a silent run is taken for a dead worker
	// and retried elsewhere on its host.
	HeartbeatTimeout time.Duration
}

// ApprovalSignal is an approval of one wave, as sent by fleet approve.
type ApprovalSignal struct {
	ID        string // unique, so that approve can find its verdict in the status
	Wave      int
	By        string
	Comment   string
	Message   string // what was signed: WaveMessage(fingerprint, wave)
	Signature string // armored SSH signature, or empty
	Time      time.Time
}

// Outcome is how a deployment's run ended, as its activity reports it.
type Outcome struct {
	Mode    string // "apply", "resume" or "done already" (a finished journal)
	Message string
}

// Progress is a running deployment's heartbeat: the latest -json events of
// its runbook.
type Progress struct {
	Mode  string    `json:"mode"`
	PID   int       `json:"pid"`
	Step  string    `json:"step,omitempty"`
	State string    `json:"state,omitempty"`
	Done  int64     `json:"done,omitempty"`
	Total int64     `json:"total,omitempty"`
	Time  time.Time `json:"time"`
}

// Error types of a deployment's failure (Temporal ApplicationError types),
// by the runbook's exit code (docs/fleet.md, "How a rollout runs").
const (
	ErrFailed  = "failed"  // exit 1: counts against the error budget
	ErrUsage   = "usage"   // exit 2: the fleet is misconfigured; stops the rollout
	ErrRefused = "refused" // exit 3, not busy (a stale plan, an unfinished run): counts
	ErrBusy    = "busy"    // exit 3, the journal's lock is held: retried later
	ErrCrashed = "crashed" // killed or died otherwise: retried (resumes from the journal)
)

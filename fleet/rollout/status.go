package rollout

import "time"

// Deployment states in a Status.
const (
	StatePending    = "pending"
	StateWaiting    = "waiting"     // its wave waits for approval
	StateRunning    = "running"     // its child workflow is open
	StateDone       = "done"        //
	StateFailed     = "failed"      // counts against the error budget
	StateNotStarted = "not started" // the rollout stopped before it
)

// Status is a rollout as the fleet workflow sees it, kept in its memo after
// every decision: what fleet status shows with no worker alive.
type Status struct {
	Fleet       string        `json:"fleet"`
	Fingerprint string        `json:"fingerprint"`
	Phase       string        `json:"phase"` // what the rollout does now, in words
	Paused      bool          `json:"paused,omitempty"`
	Stopped     string        `json:"stopped,omitempty"` // why no new deployment starts, once it is so
	Errors      int           `json:"errors"`
	MaxErrors   int           `json:"max_errors"`
	Running     int           `json:"running"`
	MaxRunning  int           `json:"max_running"` // the most that ran at once
	Waves       []*WaveStatus `json:"waves"`
	Decisions   []Decision    `json:"decisions"`
}

// WaveStatus is one wave.
type WaveStatus struct {
	Wave        int                 `json:"wave"`
	State       string              `json:"state"` // pending, waiting for approval, running, done, not started
	Gated       bool                `json:"gated,omitempty"`
	Approvals   []ApprovalEntry     `json:"approvals,omitempty"`
	Deployments []*DeploymentStatus `json:"deployments"`
}

// DeploymentStatus is one deployment.
type DeploymentStatus struct {
	Name       string    `json:"name"`
	Host       string    `json:"host"`
	Journal    string    `json:"journal"`
	State      string    `json:"state"`
	WorkflowID string    `json:"workflow_id"`
	Started    time.Time `json:"started,omitempty"`
	Finished   time.Time `json:"finished,omitempty"`
	Mode       string    `json:"mode,omitempty"`
	Message    string    `json:"message,omitempty"`
}

// ApprovalEntry is an approval received for a wave, counted or not, and why.
type ApprovalEntry struct {
	ID     string    `json:"id"`
	By     string    `json:"by"`
	Time   time.Time `json:"time"`
	Counts bool      `json:"counts"`
	Why    string    `json:"why"`
}

// Decision is one thing the rollout decided, in order: what status lists
// and Temporal's history proves.
type Decision struct {
	Time time.Time `json:"time"`
	What string    `json:"what"`
}

// Deployment returns the status of the deployment named name, or nil.
func (s *Status) Deployment(name string) *DeploymentStatus {
	for _, w := range s.Waves {
		for _, d := range w.Deployments {
			if d.Name == name {
				return d
			}
		}
	}
	return nil
}

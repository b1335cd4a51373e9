package rollout

import (
	"errors"
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// busyRetry is how long the rollout waits before it starts a deployment
// again whose run another workflow holds open.
const busyRetry = 30 * time.Second

// rollout is the fleet workflow's state. Workflow code: deterministic, no
// I/O; time from workflow.Now.
type rollout struct {
	ctx       workflow.Context
	in        FleetInput
	st        *Status
	approvals map[int][]ApprovalSignal // every approval received, per wave
	halted    bool                     // no new starts (the error budget, a usage error, a failed canary)
}

// FleetWorkflow rolls the deployments out: wave 0 (the canary) first, then
// each wave once the one before it finished, every gated wave only once its
// approvals count, at most MaxConcurrency deployments at once; a failure
// beyond MaxErrors, a usage error or a failed canary stops new starts while
// running deployments finish. Pause stops new starts until resume.
func FleetWorkflow(ctx workflow.Context, in FleetInput) (*Status, error) {
	r := &rollout{ctx: ctx, in: in, approvals: map[int][]ApprovalSignal{}}
	r.st = &Status{Fleet: in.Fleet, Fingerprint: in.Fingerprint, MaxErrors: in.MaxErrors}
	for w, wave := range in.Waves {
		ws := &WaveStatus{Wave: w, State: StatePending, Gated: in.Gate.Gated(w)}
		for _, d := range wave {
			ws.Deployments = append(ws.Deployments, &DeploymentStatus{Name: d.Name, Host: d.Host, Journal: d.Journal, State: StatePending,
				WorkflowID: DeploymentWorkflowID(in.Runbook, d.Name)})
		}
		r.st.Waves = append(r.st.Waves, ws)
	}
	r.decide("rollout of %d deployment(s) in %d wave(s) started: fleet plan %s, at most %d at once, error budget %d", r.count(), len(in.Waves), in.Fingerprint, in.MaxConcurrency, in.MaxErrors)
	workflow.Go(ctx, r.signals)
	for w, wave := range in.Waves {
		if len(wave) == 0 {
			r.st.Waves[w].State = StateDone
			continue
		}
		if r.halted {
			break
		}
		r.runWave(w, wave)
	}
	if err := workflow.Await(ctx, func() bool { return r.st.Running == 0 }); err != nil {
		return r.st, err
	}
	for _, ws := range r.st.Waves {
		for _, d := range ws.Deployments {
			if d.State == StatePending || d.State == StateWaiting {
				d.State = StateNotStarted
				if ws.State != StateDone {
					ws.State = StateNotStarted
				}
			}
		}
	}
	r.st.Phase = "finished"
	if r.st.Stopped != "" {
		r.st.Phase = "stopped: " + r.st.Stopped
	}
	r.decide("rollout %s: %s", r.st.Phase, r.tally())
	return r.st, nil
}

// runWave starts wave w's deployments within the concurrency limit and
// returns once all that started have finished.
func (r *rollout) runWave(w int, wave []DeploymentInput) {
	ctx, ws := r.ctx, r.st.Waves[w]
	if ws.Gated {
		ws.State = "waiting for approval"
		for _, d := range ws.Deployments {
			d.State = StateWaiting
		}
		r.st.Phase = fmt.Sprintf("wave %d waits for %d approval(s): runbook fleet approve --wave %d", w, r.in.Gate.Approvers, w)
		r.decide("wave %d needs %d approval(s) before it starts", w, r.in.Gate.Approvers)
		workflow.Await(ctx, func() bool { return r.halted || r.approved(w) })
		if r.halted {
			return
		}
		r.decide("wave %d approved by %s", w, strings.Join(r.approvers(w), ", "))
	}
	ws.State = StateRunning
	r.st.Phase = fmt.Sprintf("wave %d running", w)
	r.save()
	inWave := 0
	for i, d := range wave {
		workflow.Await(ctx, func() bool {
			return r.halted || (!r.st.Paused && r.st.Running < r.in.MaxConcurrency)
		})
		if r.halted {
			break
		}
		inWave++
		r.st.Running++
		r.st.MaxRunning = max(r.st.MaxRunning, r.st.Running)
		workflow.Go(ctx, func(ctx workflow.Context) {
			r.runDeployment(ctx, w, ws.Deployments[i], d)
			r.st.Running--
			inWave--
			r.save()
		})
	}
	workflow.Await(ctx, func() bool { return inWave == 0 })
	if ws.State == StateRunning {
		ws.State = StateDone
	}
	r.save()
}

// runDeployment runs one deployment as a child workflow on its host's task
// queue and records the outcome.
func (r *rollout) runDeployment(ctx workflow.Context, w int, ds *DeploymentStatus, d DeploymentInput) {
	opts := workflow.ChildWorkflowOptions{
		WorkflowID:            ds.WorkflowID,
		TaskQueue:             HostQueue(d.Host),
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
	}
	for {
		ds.State, ds.Started = StateRunning, workflow.Now(ctx)
		r.decide("%s started on host %s (wave %d; journal %s)", d.Name, d.Host, w, d.Journal)
		fut := workflow.ExecuteChildWorkflow(workflow.WithChildOptions(ctx, opts), DeploymentWorkflow, d)
		var out Outcome
		err := fut.GetChildWorkflowExecution().Get(ctx, nil)
		if err == nil {
			err = fut.Get(ctx, &out)
		}
		ds.Finished = workflow.Now(ctx)
		if temporal.IsWorkflowExecutionAlreadyStartedError(err) {
			ds.State, ds.Message = StatePending, "busy: another workflow runs "+ds.WorkflowID+"; retried in "+busyRetry.String()
			r.decide("%s not started: %s", d.Name, ds.Message)
			workflow.Sleep(ctx, busyRetry)
			if r.halted {
				ds.State = StateNotStarted
				return
			}
			continue
		}
		if err == nil {
			ds.State, ds.Mode, ds.Message = StateDone, out.Mode, out.Message
			r.decide("%s done (%s)", d.Name, out.Mode)
			return
		}
		ds.State, ds.Message = StateFailed, failureMessage(err)
		kind := failureType(err)
		r.st.Errors++
		r.decide("%s failed (%s): %s; %d failure(s) of a budget of %d", d.Name, kind, ds.Message, r.st.Errors, r.in.MaxErrors)
		switch {
		case kind == ErrUsage:
			r.halt(fmt.Sprintf("%s was refused as a usage error (the fleet or its var files are wrong)", d.Name))
		case w == 0 && len(r.in.Waves[0]) > 0:
			r.halt(fmt.Sprintf("the canary %s failed", d.Name))
		case r.st.Errors > r.in.MaxErrors:
			r.halt(fmt.Sprintf("error budget exceeded: %d failure(s), max_errors %d", r.st.Errors, r.in.MaxErrors))
		}
		return
	}
}

// halt stops new starts; running deployments finish.
func (r *rollout) halt(why string) {
	if r.halted {
		return
	}
	r.halted = true
	r.st.Stopped = why
	r.decide("no new deployment starts: %s; %d running finish", why, r.st.Running-1)
}

// signals records approvals (judged by an activity: signatures are checked
// outside workflow code), pause and resume.
func (r *rollout) signals(ctx workflow.Context) {
	approve := workflow.GetSignalChannel(ctx, SignalApprove)
	pause := workflow.GetSignalChannel(ctx, SignalPause)
	resume := workflow.GetSignalChannel(ctx, SignalResume)
	for {
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(approve, func(c workflow.ReceiveChannel, _ bool) {
			var a ApprovalSignal
			c.Receive(ctx, &a)
			r.judge(ctx, a)
		})
		sel.AddReceive(pause, func(c workflow.ReceiveChannel, _ bool) {
			var by string
			c.Receive(ctx, &by)
			r.st.Paused = true
			r.decide("paused by %s: no new deployment starts; %d running finish", by, r.st.Running)
		})
		sel.AddReceive(resume, func(c workflow.ReceiveChannel, _ bool) {
			var by string
			c.Receive(ctx, &by)
			r.st.Paused = false
			r.decide("resumed by %s", by)
		})
		sel.Select(ctx)
	}
}

// judge checks an approval in an activity and records it, counted or not.
func (r *rollout) judge(ctx workflow.Context, a ApprovalSignal) {
	entry := ApprovalEntry{ID: a.ID, By: a.By, Time: a.Time}
	if a.Wave < 0 || a.Wave >= len(r.st.Waves) {
		entry.Why = fmt.Sprintf("names wave %d, and this rollout has waves 0 to %d: does not count", a.Wave, len(r.st.Waves)-1)
		r.decide("approval by %s for wave %d not counted: %s", a.By, a.Wave, entry.Why)
		return
	}
	ws := r.st.Waves[a.Wave]
	if !ws.Gated {
		entry.Why = fmt.Sprintf("wave %d needs no approval: recorded only", a.Wave)
	} else {
		actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			TaskQueue:           CoordinatorQueue,
			StartToCloseTimeout: time.Minute,
			RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 5},
		})
		var verdict ApprovalEntry
		prior := append([]ApprovalSignal(nil), r.approvals[a.Wave]...)
		err := workflow.ExecuteActivity(actx, (*Activities).JudgeApproval, JudgeInput{Fingerprint: r.in.Fingerprint, Gate: *r.in.Gate, Prior: prior, New: a}).Get(ctx, &verdict)
		if err != nil {
			entry.Why = "could not be checked: " + failureMessage(err) + ": does not count"
		} else {
			entry.Counts, entry.Why = verdict.Counts, verdict.Why
		}
	}
	if entry.Counts {
		r.approvals[a.Wave] = append(r.approvals[a.Wave], a)
	}
	ws.Approvals = append(ws.Approvals, entry)
	verb := "counts"
	if !entry.Counts {
		verb = "does not count"
	}
	r.decide("approval of wave %d by %s %s: %s", a.Wave, a.By, verb, entry.Why)
}

func (r *rollout) approved(w int) bool { return len(r.approvers(w)) >= r.in.Gate.Approvers }

func (r *rollout) approvers(w int) []string {
	var names []string
	for _, e := range r.st.Waves[w].Approvals {
		if e.Counts {
			names = append(names, e.By)
		}
	}
	return names
}

// decide records a decision in the status and saves it in the memo.
func (r *rollout) decide(format string, args ...any) {
	r.st.Decisions = append(r.st.Decisions, Decision{Time: workflow.Now(r.ctx), What: fmt.Sprintf(format, args...)})
	r.save()
}

func (r *rollout) save() {
	// An error here means the memo is too large to record; the status in
	// the workflow's result and history stays complete.
	workflow.UpsertMemo(r.ctx, map[string]any{MemoStatus: r.st})
}

func (r *rollout) count() int {
	n := 0
	for _, w := range r.in.Waves {
		n += len(w)
	}
	return n
}

func (r *rollout) tally() string {
	counts := map[string]int{}
	for _, w := range r.st.Waves {
		for _, d := range w.Deployments {
			counts[d.State]++
		}
	}
	return fmt.Sprintf("%d done, %d failed, %d not started", counts[StateDone], counts[StateFailed], counts[StateNotStarted])
}

// DeploymentWorkflow runs one deployment: its activity on the host's task
// queue, retried when the journal's lock is held or the worker died (the
// retry resumes from the journal), not when the run failed.
func DeploymentWorkflow(ctx workflow.Context, d DeploymentInput) (*Outcome, error) {
	hb := d.HeartbeatTimeout
	if hb == 0 {
		hb = 30 * time.Second
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 7 * 24 * time.Hour,
		HeartbeatTimeout:    hb,
		RetryPolicy: &temporal.RetryPolicy{
			InitialInterval:        time.Second,
			BackoffCoefficient:     2,
			MaximumInterval:        30 * time.Second,
			NonRetryableErrorTypes: []string{ErrFailed, ErrUsage, ErrRefused},
		},
	})
	var out Outcome
	err := workflow.ExecuteActivity(ctx, (*Activities).RunDeployment, d).Get(ctx, &out)
	return &out, err
}

// failureType is the ApplicationError type at the root of a child's failure.
func failureType(err error) string {
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return app.Type()
	}
	return ErrFailed
}

func failureMessage(err error) string {
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return app.Message()
	}
	return err.Error()
}

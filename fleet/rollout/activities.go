package rollout

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"

	"github.com/runbook-dev/runbook/engine"
)

// Activities run on a worker: RunDeployment on the host queue of the
// deployments whose journals the worker holds, JudgeApproval on the
// coordinator queue.
type Activities struct {
	// Runbook is the runbook executable that runs each deployment.
	Runbook string
	// Log, when set, receives a line per deployment run started and ended.
	Log io.Writer
}

// WorkerOptions are the options of every worker: heartbeats reach the
// server at least every 2 seconds (the SDK's default throttle waits up to
// 0.8 of the heartbeat timeout, which leaves a busy host little margin and
// shows stale progress; measured with a probe of 20 child workflows).
func WorkerOptions() worker.Options {
	return worker.Options{MaxHeartbeatThrottleInterval: 2 * time.Second, DefaultHeartbeatThrottleInterval: 2 * time.Second}
}

// interruptGrace is how long a runbook interrupted (SIGINT: it stops at a
// checkpoint and records where) has before it is killed.
const interruptGrace = 30 * time.Second

// RunDeployment runs the deployment's approved plan with the runbook, as a
// child process that dies with the worker: `apply PLANDIR` the first time
// (or after a rollback of the plan's steps: the runbook judges the plan
// again), `resume` when the journal holds this plan's unfinished run (a
// retry after a worker died resumes from the journal, never from zero),
// nothing when every step of the plan is done (runMode). Its -json events
// become heartbeats. The
// exit code becomes the outcome (docs/fleet.md, "How a rollout runs"): 0 done; 1 ErrFailed; 2
// ErrUsage; 3 ErrBusy when the journal's lock is held (retried), else
// ErrRefused.
func (a *Activities) RunDeployment(ctx context.Context, d DeploymentInput) (*Outcome, error) {
	// A live owner of the journal's lock (a run by hand, or this
	// deployment's previous attempt still stopping after its heartbeat
	// timed out): busy, without starting a runbook that the lock would
	// refuse anyway, and before the journal is judged (a rollback by hand
	// may not have written its first record yet).
	if owner, alive, err := engine.InspectLock(d.Journal); err == nil && alive && owner != nil {
		return nil, temporal.NewApplicationError(fmt.Sprintf("busy: %s: %s", engine.ErrLocked, owner), ErrBusy)
	}
	mode, err := runMode(d)
	if err != nil {
		return nil, temporal.NewApplicationError(fmt.Sprintf("read the journal %s: %v", d.Journal, err), ErrCrashed)
	}
	if mode == "done already" {
		return &Outcome{Mode: mode, Message: "the journal holds this plan's finished run"}, nil
	}
	args := runbookArgs(d, mode)
	info := activity.GetInfo(ctx)
	a.logf("%s: %s (attempt %d)", d.Name, strings.Join(append([]string{a.Runbook}, args...), " "), info.Attempt)
	res := a.run(ctx, d, mode, args)
	a.logf("%s: %s exited %d", d.Name, mode, res.code)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	msg := res.lastError()
	switch res.code {
	case 0:
		return &Outcome{Mode: mode, Message: res.summary}, nil
	case 1:
		return nil, temporal.NewNonRetryableApplicationError(msg, ErrFailed, nil)
	case 2:
		return nil, temporal.NewNonRetryableApplicationError(msg, ErrUsage, nil)
	case 3:
		if strings.Contains(res.stderr, engine.ErrLocked.Error()) {
			return nil, temporal.NewApplicationError("busy: "+msg, ErrBusy)
		}
		return nil, temporal.NewNonRetryableApplicationError(msg, ErrRefused, nil)
	}
	return nil, temporal.NewApplicationError(fmt.Sprintf("runbook %s ended without an exit code (%s): %s", mode, res.err, msg), ErrCrashed)
}

// runMode reads the deployment's journal and answers what brings this
// plan's change about, judged by the steps of the plan alone (the plan
// record's list: a step the journal never names is pending, not done, as
// a worker killed after the plan record and before a step's first record,
// or between steps, leaves it):
//   - "done already": every step of the plan is done in the journal's run;
//   - "resume": some step of the plan is mid-way or not reached yet;
//   - "apply": the journal's run has no record of this plan, or a step of
//     the plan was rolled back (or is being rolled back) since: the runbook
//     then judges the plan as it judges any saved plan (one consumed by a
//     rollback is refused unless approved again; a rollback under way is
//     refused), where a resume would redo what the operator undid.
//
// Steps of the run outside the plan (a targeted run carried further by
// another plan, a rollback --to) neither make it done nor hold it back.
func runMode(d DeploymentInput) (string, error) {
	records, _, err := engine.ReadJournal(d.Journal)
	if errors.Is(err, os.ErrNotExist) {
		return "apply", nil
	}
	if err != nil {
		return "", err
	}
	js, err := engine.Replay(records)
	if err != nil {
		return "", err
	}
	var planned []string
	ours := false
	for _, p := range js.Plans {
		if p.Fingerprint == d.Fingerprint {
			ours = true
			planned = append(planned, p.Steps...)
		}
	}
	if js.Run == nil || !ours {
		return "apply", nil
	}
	mode := "done already"
	for _, addr := range planned {
		switch js.Step(addr).State {
		case engine.StateDone:
		case engine.StateRolledBack, engine.StateRollingBack:
			return "apply", nil
		default: // pending, running, failed, interrupted, waiting
			mode = "resume"
		}
	}
	return mode, nil
}

// runbookArgs are the runbook's arguments for mode ("apply" or "resume").
func runbookArgs(d DeploymentInput, mode string) []string {
	args := []string{"apply", d.PlanDir}
	if mode == "resume" {
		args = []string{"resume", d.RunbookFile}
	}
	args = append(args, "-journal", d.Journal, "-json")
	for _, vf := range d.VarFiles {
		args = append(args, "-var-file", vf)
	}
	return args
}

type runResult struct {
	code    int // -1: no exit code (killed, or did not start)
	err     error
	stderr  string
	summary string // the last summary or run event
	errs    []string
}

func (r *runResult) lastError() string {
	if len(r.errs) > 0 {
		return r.errs[len(r.errs)-1]
	}
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "runbook: error: ") {
			return strings.TrimPrefix(lines[i], "runbook: error: ")
		}
	}
	if s := strings.TrimSpace(r.stderr); s != "" {
		return lines[len(lines)-1]
	}
	return "no error message"
}

// run runs the runbook and heartbeats its progress until it exits or ctx
// ends (then it is interrupted, and killed after interruptGrace). The child
// is started from a locked OS thread with Pdeathsig, so that it dies when
// the worker does (golang/go#27505: the signal follows the thread).
func (a *Activities) run(ctx context.Context, d DeploymentInput, mode string, args []string) *runResult {
	res := &runResult{code: -1}
	cmd := exec.Command(a.Runbook, args...)
	cmd.Env = os.Environ()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		res.err = err
		return res
	}
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine, after the child
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		res.err = fmt.Errorf("start %s: %w", a.Runbook, err)
		return res
	}
	var mu sync.Mutex
	prog := Progress{Mode: mode, PID: cmd.Process.Pid, Time: time.Now()}
	events := make(chan struct{})
	go func() {
		defer close(events)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var e engine.Event
			if json.Unmarshal(sc.Bytes(), &e) != nil {
				continue
			}
			mu.Lock()
			switch e.Type {
			case engine.EventProgress:
				prog.Step, prog.Done, prog.Total = e.Step, e.Done, e.Total
			case engine.EventState:
				prog.Step, prog.State = e.Step, string(e.State)
				if e.Error != "" {
					res.errs = append(res.errs, e.Step+": "+e.Error)
				}
			case engine.EventSummary, engine.EventRun:
				res.summary = e.Message
			}
			prog.Time = e.Time
			mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	activity.RecordHeartbeat(ctx, prog)
	interrupted := false
	for {
		select {
		case err := <-exited:
			<-events
			res.err = err
			res.code = cmd.ProcessState.ExitCode()
			res.stderr = stderr.String()
			return res
		case <-tick.C:
			mu.Lock()
			p := prog
			mu.Unlock()
			activity.RecordHeartbeat(ctx, p)
		case <-ctx.Done():
			if !interrupted {
				interrupted = true
				syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
				time.AfterFunc(interruptGrace, func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
			}
		}
	}
}

func (a *Activities) logf(format string, args ...any) {
	if a.Log != nil {
		fmt.Fprintf(a.Log, "%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, args...))
	}
}

// JudgeInput is an approval to judge with the approvals of its wave that
// counted before it.
type JudgeInput struct {
	Fingerprint string
	Gate        GateInput
	Prior       []ApprovalSignal
	New         ApprovalSignal
}

// JudgeApproval judges an approval of a wave as runbook approve judges one
// of a plan (engine.JudgeApprovals): it counts when it is for this fleet
// plan's wave, its approver is not the fleet plan's author nor counted
// already, and with allowed signers when its SSH signature verifies for its
// approver with a key neither the author nor a counted approver used.
func (a *Activities) JudgeApproval(ctx context.Context, in JudgeInput) (*ApprovalEntry, error) {
	msg := WaveMessage(in.Fingerprint, in.New.Wave)
	if in.New.Message != msg {
		return &ApprovalEntry{Why: fmt.Sprintf("signed for %q, not for wave %d of this fleet plan: does not count", in.New.Message, in.New.Wave)}, nil
	}
	g := engine.ApprovalGate{Required: in.Gate.Approvers, Author: in.Gate.Author, AuthorSig: in.Gate.AuthorSig, Fingerprint: msg, AuthorSigned: in.Fingerprint}
	if in.Gate.AllowedSigners != "" {
		f, err := os.CreateTemp("", "runbook-fleet-signers-*")
		if err != nil {
			return nil, fmt.Errorf("write allowed signers: %w", err)
		}
		defer os.Remove(f.Name())
		if _, err := f.WriteString(in.Gate.AllowedSigners); err != nil {
			f.Close()
			return nil, fmt.Errorf("write allowed signers: %w", err)
		}
		f.Close()
		g.AllowedSigners = f.Name()
	}
	var list []engine.Approval
	for _, s := range append(in.Prior, in.New) {
		list = append(list, engine.Approval{By: s.By, Fingerprint: s.Message, Signature: s.Signature})
	}
	c := engine.JudgeApprovals(g, list)
	last := c.Entries[len(c.Entries)-1]
	if c.Signed && !c.AuthorOK {
		return &ApprovalEntry{Why: "the fleet plan's author is not proven (" + c.AuthorWhy + "): does not count"}, nil
	}
	return &ApprovalEntry{Counts: last.Counts, Why: last.Why}, nil
}

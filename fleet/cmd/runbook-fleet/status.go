package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/converter"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "status", usage: "FLEET [-json]: waves, each deployment's state, progress, attempt, last heartbeat and journal, approvals and decisions; needs no worker", run: runStatus})
}

// liveRun is what Temporal knows of a running deployment beyond the
// rollout's memo: its activity's attempt and last heartbeat.
type liveRun struct {
	Attempt       int32             `json:"attempt"`
	LastHeartbeat time.Time         `json:"last_heartbeat,omitzero"`
	Progress      *rollout.Progress `json:"progress,omitempty"`
	Worker        string            `json:"worker,omitempty"`
	LastFailure   string            `json:"last_failure,omitempty"`
}

// statusReport is status -json.
type statusReport struct {
	Workflow string              `json:"workflow"`
	State    string              `json:"state"` // Temporal's: running, completed, …
	Status   *rollout.Status     `json:"status"`
	Live     map[string]*liveRun `json:"live,omitempty"`
}

func runStatus(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "status")
	asJSON := fs.Bool("json", false, "print the status as one JSON object")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	return printStatus(ctx, env, c, f, *asJSON)
}

// describe reads the rollout's status from its memo, with
// DescribeWorkflowExecution: no worker needs to be alive (a query would).
func describe(ctx context.Context, c *connection, f *fleet.Fleet) (*rollout.Status, string, error) {
	id := rollout.FleetWorkflowID(f.Name)
	desc, err := c.DescribeWorkflowExecution(ctx, id, "")
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return nil, "", engine.WithHint(engine.Refusef("fleet %s has no rollout on Temporal at %s", f.Name, c.Address), "start one with runbook fleet apply")
	}
	if err != nil {
		return nil, "", fmt.Errorf("describe %s: %w", id, err)
	}
	info := desc.GetWorkflowExecutionInfo()
	state := strings.ToLower(strings.TrimPrefix(info.GetStatus().String(), "WORKFLOW_EXECUTION_STATUS_"))
	payload := info.GetMemo().GetFields()[rollout.MemoStatus]
	if payload == nil {
		return nil, state, fmt.Errorf("the rollout %s has recorded no status yet (no worker has run it): start one with runbook fleet worker", id)
	}
	var st rollout.Status
	if err := converter.GetDefaultDataConverter().FromPayload(payload, &st); err != nil {
		return nil, state, fmt.Errorf("read the rollout's status: %w", err)
	}
	return &st, state, nil
}

// liveRuns describes each running deployment's workflow for its activity's
// attempt and heartbeat.
func liveRuns(ctx context.Context, c *connection, st *rollout.Status) map[string]*liveRun {
	live := map[string]*liveRun{}
	for _, w := range st.Waves {
		for _, d := range w.Deployments {
			if d.State != rollout.StateRunning {
				continue
			}
			desc, err := c.DescribeWorkflowExecution(ctx, d.WorkflowID, "")
			if err != nil || desc.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
				continue
			}
			lr := &liveRun{}
			for _, pa := range desc.GetPendingActivities() {
				lr.Attempt = pa.GetAttempt()
				lr.Worker = pa.GetLastWorkerIdentity()
				if t := pa.GetLastHeartbeatTime(); t != nil {
					lr.LastHeartbeat = t.AsTime().UTC()
				}
				if f := pa.GetLastFailure(); f != nil {
					lr.LastFailure = f.GetMessage()
				}
				if p := pa.GetHeartbeatDetails().GetPayloads(); len(p) > 0 {
					var prog rollout.Progress
					if converter.GetDefaultDataConverter().FromPayload(p[0], &prog) == nil {
						lr.Progress = &prog
					}
				}
			}
			live[d.Name] = lr
		}
	}
	return live
}

func printStatus(ctx context.Context, env *cliEnv, c *connection, f *fleet.Fleet, asJSON bool) error {
	st, state, err := describe(ctx, c, f)
	if err != nil {
		return err
	}
	live := liveRuns(ctx, c, st)
	if asJSON {
		enc := json.NewEncoder(env.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(statusReport{Workflow: rollout.FleetWorkflowID(f.Name), State: state, Status: st, Live: live})
	}
	writeStatus(env.stdout, st, state, live)
	return nil
}

// writeStatus prints the status table.
func writeStatus(w io.Writer, st *rollout.Status, state string, live map[string]*liveRun) {
	fmt.Fprintf(w, "fleet %s (%s): %s\n", st.Fleet, state, st.Phase)
	fmt.Fprintf(w, "fleet plan %s\n", st.Fingerprint)
	paused := ""
	if st.Paused {
		paused = "; paused: no new deployment starts"
	}
	fmt.Fprintf(w, "failures %d of a budget of %d; running %d (at most %d at once so far)%s\n", st.Errors, st.MaxErrors, st.Running, st.MaxRunning, paused)
	if st.Stopped != "" {
		fmt.Fprintf(w, "stopped: %s\n", st.Stopped)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "WAVE\tDEPLOYMENT\tSTATE\tHOST\tATTEMPT\tPROGRESS\tHEARTBEAT\tJOURNAL")
	for _, ws := range st.Waves {
		for _, d := range ws.Deployments {
			attempt, progress, beat := "-", "-", "-"
			if d.Mode != "" {
				progress = d.Mode
			}
			if lr := live[d.Name]; lr != nil {
				attempt = fmt.Sprint(lr.Attempt)
				if p := lr.Progress; p != nil {
					progress = p.Mode
					if p.Step != "" {
						progress += " " + p.Step
					}
					if p.Total > 0 {
						progress += fmt.Sprintf(" %d/%d", p.Done, p.Total)
					}
				}
				if !lr.LastHeartbeat.IsZero() {
					beat = lr.LastHeartbeat.Format(time.RFC3339)
				}
			}
			wave := fmt.Sprint(ws.Wave)
			if ws.Wave == 0 {
				wave = "canary"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wave, d.Name, d.State, d.Host, attempt, progress, beat, d.Journal)
		}
	}
	tw.Flush()
	var notes []string
	for _, ws := range st.Waves {
		for _, d := range ws.Deployments {
			if d.State == rollout.StateFailed || (d.Message != "" && d.State != rollout.StateDone) {
				notes = append(notes, fmt.Sprintf("  %s: %s", d.Name, d.Message))
			}
			if lr := live[d.Name]; lr != nil && lr.LastFailure != "" {
				notes = append(notes, fmt.Sprintf("  %s: last attempt: %s", d.Name, lr.LastFailure))
			}
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(w, "\nfailures and retries:\n%s\n", strings.Join(notes, "\n"))
	}
	var approvals []string
	for _, ws := range st.Waves {
		if ws.Gated {
			approvals = append(approvals, fmt.Sprintf("  wave %d: %s", ws.Wave, ws.State))
		}
		for _, a := range ws.Approvals {
			verdict := "does not count"
			if a.Counts {
				verdict = "counts"
			}
			approvals = append(approvals, fmt.Sprintf("    %s by %s at %s %s: %s", "approval", a.By, a.Time.UTC().Format(time.RFC3339), verdict, a.Why))
		}
	}
	if len(approvals) > 0 {
		fmt.Fprintf(w, "\napprovals:\n%s\n", strings.Join(approvals, "\n"))
	}
	fmt.Fprintf(w, "\ndecisions:\n")
	for _, d := range st.Decisions {
		fmt.Fprintf(w, "  %s  %s\n", d.Time.UTC().Format(time.RFC3339), d.What)
	}
}

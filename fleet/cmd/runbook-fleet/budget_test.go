package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/fleet/rollout"
)

// TestErrorBudget: max_errors = 2 and three injected failures (a site check
// that fails after the keys moved): the third failure stops new starts, the
// deployments running then finish, and the rest never start (SSM
// Automation's MaxErrors). Each failure and the stop are decisions in the
// status and in Temporal's history.
func TestErrorBudget(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "budget", deployments: 10, keys: 30, waveSize: 10, maxConc: 3, maxErrors: 2, kmLatency: 30 * time.Millisecond})
	for _, n := range []string{"budget-02", "budget-03", "budget-04"} {
		write(t, filepath.Join(fe.dir, "fail-"+n), "injected\n")
	}
	fe.must("plan", fe.file)
	fe.must("apply", fe.file)
	fe.startWorker("local")
	final := fe.waitFor("the rollout to end", 10*time.Minute, finished)
	st := final.Status
	if st.Errors != 3 || !strings.Contains(st.Stopped, "error budget exceeded") {
		t.Fatalf("errors %d, stopped %q; want 3 and the error budget", st.Errors, st.Stopped)
	}
	var halt time.Time
	for _, d := range st.Decisions {
		if strings.HasPrefix(d.What, "no new deployment starts: error budget exceeded") {
			halt = d.Time
		}
	}
	if halt.IsZero() {
		t.Fatalf("no decision records the stop: %+v", st.Decisions)
	}
	finishedAfter, notStarted := 0, 0
	for _, d := range st.Waves[1].Deployments {
		switch d.State {
		case rollout.StateFailed:
			stderr, _ := os.ReadFile(filepath.Join(fe.journal(d.Name), "logs", "exec.site_check.stderr"))
			if !strings.Contains(d.Message, "exec.site_check: sh exited with status 1") || !strings.Contains(string(stderr), "site check failed") {
				t.Errorf("%s failed with %q (%s), not the injected failure", d.Name, d.Message, stderr)
			}
			if _, err := os.Stat(filepath.Join(fe.dir, "fail-"+d.Name)); err != nil {
				t.Errorf("%s failed, and no failure was injected there", d.Name)
			}
		case rollout.StateDone:
			if d.Started.Before(halt) && d.Finished.After(halt) {
				finishedAfter++ // running at the stop, and let finish
			}
			if !d.Started.Before(halt) {
				t.Errorf("%s started at %s, after the stop at %s", d.Name, d.Started, halt)
			}
		case rollout.StateNotStarted:
			notStarted++
			if fe.started(d.Name) {
				t.Errorf("%s never started, and its journal has records", d.Name)
			}
		default:
			t.Errorf("%s ended %s", d.Name, d.State)
		}
	}
	if finishedAfter == 0 || notStarted == 0 {
		t.Errorf("%d deployment(s) ran on past the stop and %d never started; want at least one of each", finishedAfter, notStarted)
	}
	text := fe.must("status", fe.file)
	for _, want := range []string{"stopped: error budget exceeded: 3 failure(s), max_errors 2", "budget-04 failed (failed)"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
}

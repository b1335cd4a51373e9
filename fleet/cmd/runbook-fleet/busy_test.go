package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBusyBothWays: the engine's journal lock is the fence between the
// fleet and a run by hand. A runbook apply of a deployment the fleet is
// running is refused with exit 3; a deployment whose journal a runbook run
// by hand holds is reported busy by the fleet and retried, and runs once
// that run has ended.
func TestBusyBothWays(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "busy", deployments: 3, keys: 150, waveSize: 3, maxConc: 1, kmLatency: 40 * time.Millisecond})
	fe.must("plan", fe.file)

	// busy-03's journal held by a runbook run by hand until released.
	hold := filepath.Join(fe.dir, "hold.hcl")
	release := filepath.Join(fe.dir, "release")
	write(t, hold, fmt.Sprintf(`runbook {
  name = "hold"
}

exec "hold" {
  command = ["sh", "-c", "while [ ! -e %s ]; do sleep 0.2; done"]
}
`, release))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	byHand := exec.CommandContext(ctx, runbookBin, "apply", hold, "-journal", fe.journal("busy-03"))
	byHandOut := &strings.Builder{}
	byHand.Stdout, byHand.Stderr = byHandOut, byHandOut
	if err := byHand.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, filepath.Join(fe.journal("busy-03"), "lock"))

	fe.must("apply", fe.file)
	fe.startWorker("local")
	// The fleet's run of busy-01 holds its journal from its first record
	// to its last.
	for deadline := time.Now().Add(5 * time.Minute); !fe.started("busy-01"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the fleet did not start busy-01 within 5 minutes")
		}
	}
	vf := filepath.Join(fe.dir, "emulated", "busy-01.hcl")
	out, err := exec.Command(runbookBin, "apply", fe.planDir("busy-01"), "-journal", fe.journal("busy-01"), "-var-file", vf).CombinedOutput()
	// Refused either way: while the fleet's run holds the journal, by its
	// lock; once that run has ended (a fast deployment on a loaded
	// machine), because its plan was applied already (a saved plan applies
	// once). Never a second run beside or after the fleet's.
	if code := exitCodeOf(err); code != 3 || !(strings.Contains(string(out), "journal is locked by another run") || strings.Contains(string(out), "was applied already")) {
		t.Fatalf("runbook apply of a deployment the fleet runs: exit %d, want 3\n%s", code, out)
	}

	fe.waitFor("busy-03 to be reported busy", 5*time.Minute, func(r *statusReport) bool {
		lr := r.Live["busy-03"]
		return lr != nil && strings.Contains(lr.LastFailure, "busy: ")
	})
	text := fe.must("status", fe.file)
	if !strings.Contains(text, "busy-03: last attempt: busy: ") {
		t.Errorf("status does not show busy-03 busy:\n%s", text)
	}
	write(t, release, "")
	if err := byHand.Wait(); err != nil {
		t.Fatalf("the run by hand: %v\n%s", err, byHandOut)
	}
	final := fe.waitFor("the rollout to end", 10*time.Minute, finished)
	for _, ws := range final.Status.Waves {
		for _, d := range ws.Deployments {
			if d.State != "done" {
				t.Errorf("%s is %s: %s", d.Name, d.State, d.Message)
			}
		}
	}
	fe.checkKeys("busy-03")
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func waitFile(t *testing.T, p string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return
		}
	}
	t.Fatalf("%s did not appear within a minute", p)
}

func exitCodeOf(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

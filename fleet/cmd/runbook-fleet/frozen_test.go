package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

// TestFrozenWorker: a worker that stops answering without dying (SIGSTOP:
// a paused VM, a host deep in swap) while its runbooks run on. Unlike a
// killed worker, its runbooks are alive and hold their journals. Temporal
// times its attempts out and hands them to a second worker, which finds
// each journal's lock held by a live runbook and reports busy, never
// starting a second run beside it. When the frozen worker wakes, the
// attempts are no longer its: it stops its runbooks at a checkpoint, and
// the second worker resumes each from its journal. Every deployment ends
// done with exactly its keys, one run per journal, and no two attempts of
// one deployment overlapped.
func TestFrozenWorker(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "frozen", deployments: 3, keys: 100, waveSize: 3, maxConc: 3})
	names := []string{"frozen-01", "frozen-02", "frozen-03"}
	for _, n := range names {
		write(t, filepath.Join(fe.dir, "hold-"+n), "") // held in exec.site_check until removed
	}
	fe.must("plan", fe.file)
	fe.must("apply", fe.file)
	watch := watchRunbooks(t)
	w1 := fe.startWorker("local")
	t.Cleanup(func() { w1.cmd.Process.Signal(syscall.SIGCONT) }) // before its stop, which a stopped process would not see
	for deadline := time.Now().Add(5 * time.Minute); !fe.allAt(names, "exec.site_check", engine.StateRunning); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the deployments did not all reach their site check within 5 minutes")
		}
	}
	// The runbooks the frozen worker started: it may start others once
	// woken (a retry can go to any worker of the host), so these are the
	// ones waited for below.
	frozenRuns := childrenOf(w1.cmd.Process.Pid)
	if len(frozenRuns) != len(names) {
		t.Fatalf("the first worker runs %d runbooks %v, want %d", len(frozenRuns), frozenRuns, len(names))
	}
	if err := w1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	fe.startWorker("local")
	fe.waitFor("every deployment to be reported busy", 3*time.Minute, func(r *statusReport) bool {
		for _, n := range names {
			if lr := r.Live[n]; lr == nil || !strings.Contains(lr.LastFailure, "busy: ") {
				return false
			}
		}
		return true
	})
	if err := w1.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	// Woken, the first worker stops its runbooks; then the holds go, so
	// that the second worker's resumes finish.
	for deadline := time.Now().Add(3 * time.Minute); anyAlive(frozenRuns); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("of the woken worker's runbooks %v, some still run after 3 minutes", frozenRuns)
		}
	}
	for _, n := range names {
		os.Remove(filepath.Join(fe.dir, "hold-"+n))
	}
	final := fe.waitFor("the rollout to end", 10*time.Minute, finished)
	watch.end()
	for _, n := range names {
		d := final.Status.Deployment(n)
		if d == nil || d.State != rollout.StateDone {
			t.Errorf("%s: %+v, want done", n, d)
			continue
		}
		if d.Mode != "resume" {
			t.Errorf("%s ended by %q, not by resuming the journal the frozen worker's run left", n, d.Mode)
		}
		if got := len(watch.seen[fe.journal(n)]); got < 2 {
			t.Errorf("%s: %d runbook process(es) seen, want the frozen worker's and the resume", n, got)
		}
		fe.checkKeys(n)
		fe.checkOneRun(n)
	}
	if len(watch.overlap) > 0 {
		t.Errorf("attempts of one deployment overlapped: %v", watch.overlap)
		fe.logWorkers()
	}
	fe.noSecrets()
}

// allAt reports whether every deployment's journal has step addr in state.
func (fe *fleetEnv) allAt(names []string, addr string, state engine.State) bool {
	for _, n := range names {
		recs, _, err := engine.ReadJournal(fe.journal(n))
		if err != nil {
			return false
		}
		js, err := engine.Replay(recs)
		if err != nil || js.Step(addr) == nil || js.Step(addr).State != state {
			return false
		}
	}
	return true
}

// childrenOf are the live runbook processes whose parent is pid.
func childrenOf(pid int) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var child int
		if _, err := fmt.Sscanf(e.Name(), "%d", &child); err != nil {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !strings.HasPrefix(string(cmd), runbookBin+"\x00") {
			continue
		}
		if ppid, alive := procParent(child); alive && ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// anyAlive reports whether one of pids is a live process (not a zombie).
func anyAlive(pids []int) bool {
	for _, p := range pids {
		if _, alive := procParent(p); alive {
			return true
		}
	}
	return false
}

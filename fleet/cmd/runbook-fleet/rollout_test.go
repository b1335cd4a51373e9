package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

// TestRollout20 is issue 18's main proof: 20 deployments (19 on a KES
// server each, the 20th a real MinIO on KES that the fleet cuts over),
// canary 1, waves of 5, at most 5 at once, on real worker processes. The
// worker is killed with -9 mid-wave and a new one finishes the rollout:
// every enclave ends with exactly its store's keys, each proven by the
// verification's round trips; never more than 5 deployments ran at once
// (from the journals' timestamps); no two attempts of one deployment
// overlapped (its runbook processes, sampled); none was restarted from
// zero (one run per journal; the interrupted ones resumed) and none
// imported a key twice with different material. A second fleet apply is
// refused with exit 3; status works with no worker alive.
func TestRollout20(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "r20", deployments: 20, keys: 300, canary: 1, waveSize: 5, maxConc: 5, maxErrors: 2, kmLatency: 40 * time.Millisecond, minio: true})
	out := fe.must("plan", fe.file)
	if !strings.Contains(out, "fleet plan written to") {
		t.Fatalf("plan:\n%s", out)
	}
	summary, err := os.ReadFile(filepath.Join(fe.dir, ".runbook-fleet", "r20", "plan", "FLEET.md"))
	if err != nil || !strings.Contains(string(summary), "| 0 (canary) | r20-01 |") {
		t.Fatalf("FLEET.md: %v\n%s", err, summary)
	}
	fe.must("apply", fe.file)
	if out, code := fe.run("apply", fe.file); code != 3 || !strings.Contains(out, "being run already") && !strings.Contains(out, "running already") {
		t.Fatalf("a second fleet apply: exit %d, want 3\n%s", code, out)
	}

	watch := watchRunbooks(t)
	w1 := fe.startWorker("local")
	// Mid-wave: a deployment of wave 1 has checkpointed keys of its
	// migration (read from the journals: heartbeats lag by design).
	wave1 := []string{"r20-02", "r20-03", "r20-04", "r20-05", "r20-06"}
	for deadline := time.Now().Add(5 * time.Minute); !fe.migrating(wave1); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no deployment of wave 1 migrated a key within 5 minutes")
		}
	}
	w1.kill9()
	killedAt := time.Now()
	// The deployments whose run had begun a step must resume it; those
	// killed while their plan was checked again had done nothing yet (at
	// most a run record, which the next apply archives), and start it.
	var midRun []string
	for _, n := range wave1 {
		recs, _, _ := engine.ReadJournal(fe.journal(n))
		for _, r := range recs {
			if r.Kind == "state" {
				midRun = append(midRun, n)
				break
			}
		}
	}

	// With no worker alive, status still answers, from the memo.
	mid := fe.status()
	var interrupted []string
	for _, d := range mid.Status.Waves[1].Deployments {
		if d.State == rollout.StateRunning {
			interrupted = append(interrupted, d.Name)
		}
	}
	if len(interrupted) == 0 || len(midRun) == 0 {
		t.Fatalf("no deployment of wave 1 was running (%v) or mid-run (%v) at the kill", interrupted, midRun)
	}
	t.Logf("killed the worker with %v running, %v of them mid-run", interrupted, midRun)

	fe.startWorker("local")
	final := fe.waitFor("the rollout to end", 15*time.Minute, finished)
	watch.end()

	var names []string
	for _, ws := range final.Status.Waves {
		for _, d := range ws.Deployments {
			names = append(names, d.Name)
			if d.State != rollout.StateDone {
				t.Errorf("%s is %s: %s", d.Name, d.State, d.Message)
			}
		}
	}
	if len(names) != 20 {
		t.Fatalf("%d deployments in the status, want 20", len(names))
	}
	for _, n := range names {
		fe.checkKeys(n)
		fe.checkOneRun(n)
	}
	if got := maxOverlap(fe.spans(names)); got > 5 || got < 2 {
		t.Errorf("at most %d deployments ran at once by their journals, want 2..5", got)
	}
	if final.Status.MaxRunning > 5 {
		t.Errorf("the rollout ran %d at once", final.Status.MaxRunning)
	}
	if len(watch.overlap) > 0 {
		t.Errorf("attempts of one deployment overlapped: %v", watch.overlap)
		fe.logWorkers()
	}
	for _, n := range midRun {
		d := final.Status.Deployment(n)
		if d.Mode != "resume" && d.Mode != "done already" {
			t.Errorf("%s, interrupted by the kill, ended by %q, not by resuming its journal", n, d.Mode)
		}
		if len(watch.seen[fe.journal(n)]) < 2 {
			t.Errorf("%s: %d runbook process(es) seen, want the killed one and its resume", n, len(watch.seen[fe.journal(n)]))
		}
	}
	// The canary finished before wave 1 started.
	canary := final.Status.Waves[0].Deployments[0]
	for _, d := range final.Status.Waves[1].Deployments {
		if d.Started.Before(canary.Finished) {
			t.Errorf("%s started at %s, before the canary finished at %s", d.Name, d.Started, canary.Finished)
		}
	}
	// The real MinIO was cut over by the fleet.
	js := fe.replay("r20-20")
	if st := js.Step("cutover.aistor"); st.State != "done" {
		t.Errorf("r20-20: cutover.aistor is %s: %s", st.State, st.Error)
	}
	t.Logf("worker killed at %s; rollout ended %s", killedAt.Format(time.RFC3339), final.Status.Decisions[len(final.Status.Decisions)-1].Time.Format(time.RFC3339))

	// The same table with no worker alive as with one.
	withWorker := fe.must("status", fe.file)
	fe.stopWorkers()
	without := fe.must("status", fe.file)
	if withWorker != without {
		t.Errorf("status differs without a worker:\n%s\n---\n%s", withWorker, without)
	}
	fe.noSecrets()
}

// checkOneRun proves a deployment was never restarted from zero: its
// journal holds one run, and no key of its migration was checkpointed twice
// with different data.
func (fe *fleetEnv) checkOneRun(name string) {
	fe.t.Helper()
	runs := 0
	items := map[string]string{}
	for _, r := range fe.records(name) {
		switch {
		case r.Kind == "run":
			runs++
		case r.Kind == "checkpoint" && r.Step == "migration.keys":
			if prev, ok := items[r.Item]; ok && prev != string(r.Data) {
				fe.t.Errorf("%s: key %s checkpointed twice with different data: %s, then %s", name, r.Item, prev, r.Data)
			}
			items[r.Item] = string(r.Data)
		}
	}
	if runs != 1 {
		fe.t.Errorf("%s: %d runs in the journal, want 1 (a retry resumes, never starts again)", name, runs)
	}
}

// migrating reports whether one of the deployments has checkpointed a key of
// its migration.
func (fe *fleetEnv) migrating(names []string) bool {
	for _, n := range names {
		recs, _, err := engine.ReadJournal(fe.journal(n))
		if err != nil {
			continue
		}
		for _, r := range recs {
			if r.Kind == "checkpoint" && r.Step == "migration.keys" {
				return true
			}
		}
	}
	return false
}

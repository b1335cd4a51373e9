package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/fleet/devserver"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

// TestServerKill: the fleet's embedded Temporal server runs in its own
// process (fleet server) on the fleet's SQLite file; kill -9 of it
// mid-rollout, then a restart on the same file: the worker reconnects and
// the rollout completes, every deployment's keys in its enclave.
func TestServerKill(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "srvkill", deployments: 6, keys: 60, canary: 1, waveSize: 5, maxConc: 3, kmLatency: 40 * time.Millisecond, address: "embedded"})
	server := func() *exec.Cmd {
		cmd := fe.command("server", fe.file)
		out := &strings.Builder{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		dir := filepath.Join(fe.dir, ".runbook-fleet", fe.name, "temporal")
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
			if addr, _ := devserver.Running(dir); addr != "" {
				return cmd
			}
			if time.Now().After(deadline) {
				t.Fatalf("fleet server did not start:\n%s", out)
			}
		}
	}
	srv := server()
	fe.must("plan", fe.file)
	fe.must("apply", fe.file)
	fe.startWorker("local")
	fe.waitFor("wave 1 to run", 5*time.Minute, func(r *statusReport) bool {
		return r.Status.Waves[1].State == rollout.StateRunning && r.Status.Running > 0
	})
	srv.Process.Kill()
	srv.Wait()
	time.Sleep(3 * time.Second) // the worker runs on while nothing is recorded
	server()
	final := fe.waitFor("the rollout to end", 10*time.Minute, finished)
	for _, ws := range final.Status.Waves {
		for _, d := range ws.Deployments {
			if d.State != rollout.StateDone {
				t.Errorf("%s is %s: %s", d.Name, d.State, d.Message)
			}
			fe.checkKeys(d.Name)
		}
	}
}

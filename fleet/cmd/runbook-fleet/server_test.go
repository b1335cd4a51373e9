package main

import (
	"net"
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
// mid-rollout, then a restart on the same file while another process holds
// its port, so that it listens on another: the worker finds it there and
// the rollout completes, every deployment's keys in its enclave.
func TestServerKill(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "srvkill", deployments: 6, keys: 60, canary: 1, waveSize: 5, maxConc: 3, kmLatency: 40 * time.Millisecond, address: "embedded"})
	srv := fe.startServer()
	before, err := devserver.Running(fe.serverDir())
	if err != nil {
		t.Fatal(err)
	}
	fe.must("plan", fe.file)
	fe.must("apply", fe.file)
	fe.startWorker("local")
	fe.waitFor("wave 1 to run", 5*time.Minute, func(r *statusReport) bool {
		return r.Status.Waves[1].State == rollout.StateRunning && r.Status.Running > 0
	})
	srv.Process.Kill()
	srv.Wait()
	time.Sleep(3 * time.Second) // the worker runs on while nothing is recorded
	held, err := net.Listen("tcp", before)
	if err != nil {
		t.Fatalf("hold the server's port %s: %v", before, err)
	}
	fe.startServer()
	held.Close()
	after, err := devserver.Running(fe.serverDir())
	if err != nil || after == before {
		t.Fatalf("the restarted server is at %q (%v), the port it had was held", after, err)
	}
	fe.allDone(fe.waitFor("the rollout to end", 10*time.Minute, finished))
}

// TestWorkerOutlivesFatalPollErrors: the SDK stops a worker for good when
// its polls meet an error it takes for fatal for two minutes; here a
// Temporal server on the fleet's address that lacks the fleet's namespace
// (a server restarted on another file) answers NamespaceNotFound. The
// fleet worker says so and makes its workers again, and once the fleet's
// own server is back the rollout completes, which a stopped worker would
// leave waiting for ever.
func TestWorkerOutlivesFatalPollErrors(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "fatal", deployments: 2, keys: 30, canary: 1, waveSize: 1, maxConc: 1, kmLatency: 40 * time.Millisecond, address: "embedded"})
	srv := fe.startServer()
	addr, err := devserver.Running(fe.serverDir())
	if err != nil || addr == "" {
		t.Fatalf("the fleet server's address: %q, %v", addr, err)
	}
	fe.must("plan", fe.file)
	fe.must("apply", fe.file)
	w := fe.startWorker("local")
	fe.waitFor("the canary to run", 5*time.Minute, func(r *statusReport) bool { return r.Status.Running > 0 })
	srv.Process.Kill()
	srv.Wait()

	// The impostor takes the fleet server's port: devserver starts on the
	// port its folder's address file names when that port is free.
	other := t.TempDir()
	write(t, filepath.Join(other, "server.json"), `{"address": "`+addr+`"}`)
	imp, err := devserver.Start(other, "another-namespace")
	if err != nil {
		t.Fatal(err)
	}
	if imp.Address != addr {
		imp.Stop()
		t.Fatalf("the other server is at %s, not at the fleet server's %s (port taken)", imp.Address, addr)
	}
	stopped := "Temporal stopped the worker of task queue"
	for deadline := time.Now().Add(5 * time.Minute); !strings.Contains(readFile(t, w.log), stopped); time.Sleep(time.Second) {
		if time.Now().After(deadline) {
			imp.Stop()
			fe.logWorkers()
			t.Fatalf("the worker did not say %q in 5 minutes of polls answered NamespaceNotFound", stopped)
		}
	}
	if err := imp.Stop(); err != nil {
		t.Fatal(err)
	}
	fe.startServer()
	fe.allDone(fe.waitFor("the rollout to end", 5*time.Minute, finished))
	if log := readFile(t, w.log); !strings.Contains(log, "started again") {
		t.Errorf("the worker's log does not say its worker started again:\n%s", log)
	}
	select {
	case <-w.exited:
		t.Errorf("the worker exited")
	default:
	}
}

// startServer runs `fleet server` on the fleet's folder in a process of
// its own, and returns once its address is written; it is killed when the
// test ends, and its output logged if the test failed.
func (fe *fleetEnv) startServer() *exec.Cmd {
	t := fe.t
	t.Helper()
	cmd := fe.command("server", fe.file)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("fleet server (pid %d):\n%s", cmd.Process.Pid, out)
		}
	})
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		if addr, _ := devserver.Running(fe.serverDir()); addr != "" {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet server did not start:\n%s", out)
		}
	}
}

// serverDir is the embedded server's folder.
func (fe *fleetEnv) serverDir() string {
	return filepath.Join(fe.dir, ".runbook-fleet", fe.name, "temporal")
}

// allDone checks that the rollout ran every deployment to done, with its
// keys in its enclave.
func (fe *fleetEnv) allDone(final *statusReport) {
	fe.t.Helper()
	for _, ws := range final.Status.Waves {
		for _, d := range ws.Deployments {
			if d.State != rollout.StateDone {
				fe.t.Errorf("%s is %s: %s", d.Name, d.State, d.Message)
			}
			fe.checkKeys(d.Name)
		}
	}
}

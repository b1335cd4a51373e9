package engine

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func lockErr(t *testing.T, err error, want error) *LockError {
	t.Helper()
	var le *LockError
	if !errors.Is(err, want) || !errors.As(err, &le) {
		t.Fatalf("error = %v, want *LockError wrapping %v", err, want)
	}
	t.Log(err)
	return le
}

func TestLockOwnerString(t *testing.T) {
	t.Parallel()
	o := LockOwner{PID: 4242, Host: "build-7", Command: "runbook apply", Started: time.Date(2026, 11, 26, 17, 3, 0, 0, time.UTC)}
	if got, want := o.String(), "pid 4242 on host build-7 (runbook apply), since 2026-11-26T17:03:00Z"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestLockTwiceInProcess(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "j")
	l, err := AcquireLock(dir, "runbook apply")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, lockFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	// A second AcquireLock opens its own file description, so flock refuses.
	_, err = AcquireLock(dir, "runbook resume")
	le := lockErr(t, err, ErrLocked)
	if le.Owner.PID != os.Getpid() || le.Owner.Command != "runbook apply" || le.Path != filepath.Join(dir, lockFileName) {
		t.Errorf("LockError = %+v", le)
	}
	owner, alive, err := InspectLock(dir)
	if err != nil || !alive || owner == nil || owner.PID != os.Getpid() {
		t.Errorf("InspectLock = %v, %v, %v", owner, alive, err)
	}
	_, err = BreakLock(dir)
	lockErr(t, err, ErrLocked)

	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, lockFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after Release: %v", err)
	}
	if owner, alive, err := InspectLock(dir); owner != nil || alive || err != nil {
		t.Errorf("InspectLock after Release = %v, %v, %v", owner, alive, err)
	}
	l, err = AcquireLock(dir, "runbook resume")
	if err != nil {
		t.Fatalf("AcquireLock after Release: %v", err)
	}
	l.Release()
}

func TestLockStale(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	dead := LockOwner{PID: 99999, Host: "build-7", Command: "runbook apply", Started: time.Now().UTC().Truncate(time.Second)}
	js, _ := json.Marshal(dead)
	if err := os.WriteFile(filepath.Join(dir, lockFileName), js, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := AcquireLock(dir, "runbook resume")
	le := lockErr(t, err, ErrStaleLock)
	if le.Owner != dead {
		t.Errorf("stale owner = %+v, want %+v", le.Owner, dead)
	}
	// Reporting a stale lock leaves it in place.
	if b, err := os.ReadFile(filepath.Join(dir, lockFileName)); err != nil || string(b) != string(js) {
		t.Fatalf("lock file after stale report = %q, %v", b, err)
	}
	owner, alive, err := InspectLock(dir)
	if err != nil || alive || owner == nil || *owner != dead {
		t.Errorf("InspectLock = %v, %v, %v", owner, alive, err)
	}
	owner, err = BreakLock(dir)
	if err != nil || owner == nil || *owner != dead {
		t.Fatalf("BreakLock = %v, %v", owner, err)
	}
	if owner, err := BreakLock(dir); owner != nil || err != nil {
		t.Errorf("BreakLock with no lock = %v, %v", owner, err)
	}
	l, err := AcquireLock(dir, "runbook resume")
	if err != nil {
		t.Fatalf("AcquireLock after BreakLock: %v", err)
	}
	l.Release()
}

func TestLockGarbledAndEmpty(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, lockFileName)
	// A crash while writing the owner record: stale, owner unknown.
	os.WriteFile(path, []byte(`{"pid":12`), 0o600)
	_, err := AcquireLock(dir, "runbook apply")
	if le := lockErr(t, err, ErrStaleLock); le.Owner != (LockOwner{}) {
		t.Errorf("owner = %+v, want zero", le.Owner)
	}
	// A crash inside Release after emptying the file: free to take.
	os.WriteFile(path, nil, 0o600)
	l, err := AcquireLock(dir, "runbook apply")
	if err != nil {
		t.Fatalf("AcquireLock over empty lock file: %v", err)
	}
	l.Release()
}

const lockHelperEnv = "RUNBOOK_TEST_LOCK_HELPER_DIR"

// TestMain runs the test binary as the child process of TestLockChildProcess
// when asked to: it takes the lock, says so, and holds it until stdin closes
// or it is killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv(lockHelperEnv); dir != "" {
		l, err := AcquireLock(dir, "runbook apply")
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		io.Copy(io.Discard, os.Stdin)
		l.Release()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestLockChildProcess(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), lockHelperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	for sc.Scan() && sc.Text() != "locked" {
		t.Logf("helper: %s", sc.Text())
	}
	if sc.Text() != "locked" {
		t.Fatalf("helper exited without taking the lock: %v", sc.Err())
	}
	pid := cmd.Process.Pid

	_, err = AcquireLock(dir, "runbook resume")
	if le := lockErr(t, err, ErrLocked); le.Owner.PID != pid {
		t.Errorf("owner PID = %d, want child %d", le.Owner.PID, pid)
	}
	if owner, alive, err := InspectLock(dir); err != nil || !alive || owner == nil || owner.PID != pid {
		t.Errorf("InspectLock = %v, %v, %v", owner, alive, err)
	}
	_, err = BreakLock(dir)
	lockErr(t, err, ErrLocked)

	if err := cmd.Process.Kill(); err != nil { // SIGKILL: no cleanup runs
		t.Fatal(err)
	}
	cmd.Wait()

	if owner, alive, err := InspectLock(dir); err != nil || alive || owner == nil || owner.PID != pid {
		t.Errorf("InspectLock = %v, %v, %v", owner, alive, err)
	}
	// The owner ran on this host and is gone: the next run takes over.
	l, err := AcquireLock(dir, "runbook resume")
	if err != nil {
		t.Fatalf("AcquireLock after the owner was killed: %v", err)
	}
	if o := l.TookOver(); o == nil || o.PID != pid || o.Command != "runbook apply" {
		t.Errorf("TookOver = %v, want the child pid %d", o, pid)
	}
	owner, alive, err := InspectLock(dir)
	if err != nil || !alive || owner == nil || owner.PID != os.Getpid() || owner.Command != "runbook resume" {
		t.Errorf("InspectLock after takeover = %v, %v, %v; want this process", owner, alive, err)
	}
	l.Release()
}

// writeOwner writes a lock file as a process that is gone left it.
func writeOwner(t *testing.T, dir string, o LockOwner) {
	t.Helper()
	js, _ := json.Marshal(o)
	if err := os.WriteFile(filepath.Join(dir, lockFileName), js, 0o600); err != nil {
		t.Fatal(err)
	}
}

// deadPID returns the pid of a process that has exited and been reaped.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestLockStaleTakeover(t *testing.T) {
	t.Parallel()
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now().UTC().Add(-time.Minute)
	for _, c := range []struct {
		name  string
		owner LockOwner
		take  bool
	}{
		{"this host, process gone", LockOwner{PID: deadPID(t), Host: host, Started: started, Command: "runbook apply"}, true},
		{"another host", LockOwner{PID: deadPID(t), Host: host + "-other", Started: started, Command: "runbook apply"}, false},
		// A process with that pid lives and started before the record: it
		// may be the owner (its flock lost, e.g. on a network file system).
		{"this host, pid alive", LockOwner{PID: os.Getppid(), Host: host, Started: time.Now().UTC(), Command: "runbook apply"}, false},
		// The pid was reused by a process that started after the record.
		{"this host, pid reused", LockOwner{PID: os.Getppid(), Host: host, Started: started.Add(-24 * time.Hour), Command: "runbook apply"}, true},
		{"no host", LockOwner{PID: deadPID(t), Started: started, Command: "runbook apply"}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeOwner(t, dir, c.owner)
			l, err := AcquireLock(dir, "runbook resume")
			if !c.take {
				if le := lockErr(t, err, ErrStaleLock); le.Owner != c.owner {
					t.Errorf("stale owner = %+v, want %+v", le.Owner, c.owner)
				}
				return
			}
			if err != nil {
				t.Fatalf("AcquireLock = %v, want a takeover", err)
			}
			defer l.Release()
			if o := l.TookOver(); o == nil || *o != c.owner {
				t.Errorf("TookOver = %v, want %+v", o, c.owner)
			}
			b, _ := os.ReadFile(filepath.Join(dir, lockFileName))
			var now LockOwner
			if err := json.Unmarshal(b, &now); err != nil || now.PID != os.Getpid() || now.Command != "runbook resume" {
				t.Errorf("lock file after takeover = %q (%v), want this process's record", b, err)
			}
		})
	}
}

package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// proc is a server process the demo started. Its output is appended to a
// log file. It runs in a process group of its own, so that a Ctrl-C in the
// terminal reaches the demo, which stops it in order, and the kernel kills
// it when the demo dies without stopping it (kill -9).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited
	err  error         // its exit status, once done is closed
}

// errPortInUse reports that a server could not bind its port.
var errPortInUse = errors.New("port in use")

// startProc starts argv in dir with env, output appended to log.
func startProc(name, dir, log string, env, argv []string) (*proc, error) {
	lf, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", name, err)
	}
	fmt.Fprintf(lf, "=== runbook demo: %s %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir, cmd.Env = dir, env
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// waitReady polls ready until it returns nil, the process exits (the error
// then carries the log's last lines and wraps errPortInUse when the port
// was taken), ctx ends or timeout passes.
func (p *proc) waitReady(ctx context.Context, timeout time.Duration, ready func(context.Context) error) error {
	deadline := time.Now().Add(timeout)
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ready(rctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			tail := logTail(p.log, 30)
			err := fmt.Errorf("%s exited before it served (%v); the last lines of %s:\n%s", p.name, p.err, p.log, tail)
			if strings.Contains(tail, "already in use") { // KES: "bind: address already in use"; MinIO: "Specified port is already in use"
				err = fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not serve after %s (%v); the last lines of %s:\n%s", p.name, timeout, err, p.log, logTail(p.log, 30))
		}
	}
}

// stop sends SIGTERM and, after grace, SIGKILL; it returns once the
// process has exited. Safe to call more than once.
func (p *proc) stop(grace time.Duration) {
	if p == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// running reports whether the process has not exited.
func (p *proc) running() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// logTail is the last n lines of a log file, indented.
func logTail(file string, n int) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("\t(cannot read it: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// serverEnv is this process's environment for a server, without the
// variables that configure MinIO or KES (a developer's shell must not leak
// into the demo's servers) and without those that make MinIO believe it runs
// in Kubernetes (isContainer), then extra.
func serverEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "MINIO_") || strings.HasPrefix(name, "KES_") || name == "KUBERNETES_SERVICE_HOST" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

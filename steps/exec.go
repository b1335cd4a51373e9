// Package steps holds the block types of runbooks: one file per type, each
// registering itself with the engine.
package steps

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:    "exec",
		Kind:    engine.KindStep,
		New:     func() engine.Block { return &execStep{} },
		Outputs: map[string]cty.Type{"exit_code": cty.Number, "stdout": cty.String},
		Doc:     "runs a command; rollback_command undoes it",
	})
}

var (
	_ engine.Step       = (*execStep)(nil)
	_ engine.Planner    = (*execStep)(nil)
	_ engine.Rollbacker = (*execStep)(nil)
	_ engine.Validator  = (*execStep)(nil)
)

// maxCapture bounds the stdout kept as an output; the log file has it all.
const maxCapture = 1 << 20

type execConfig struct {
	Command         []string          `hcl:"command"`
	Env             map[string]string `hcl:"env,optional"`
	Dir             string            `hcl:"dir,optional"`
	RollbackCommand []string          `hcl:"rollback_command,optional"`
}

// execStep runs a site-specific command. It is as idempotent as the command:
// on resume the command runs again, with RUNBOOK_RESUMED=1 in its environment.
type execStep struct {
	cfg execConfig
}

func (e *execStep) Config() any { return &e.cfg }

func (e *execStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if len(e.cfg.Command) == 0 && !d.Unknown("command") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Empty command", Detail: "command is the program and its arguments, for example [\"systemctl\", \"restart\", \"minio\"]; it cannot be empty.", Subject: d.AttrRange("command")})
	}
	if _, ok := e.cfg.Env[""]; ok {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid environment variable", Detail: "An env entry needs a name.", Subject: d.AttrRange("env")})
	}
	return diags
}

func (e *execStep) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	p := &engine.StepPlan{Actions: []string{"run " + e.describe(r, e.cfg.Command)}}
	if len(e.cfg.RollbackCommand) > 0 {
		p.Rollback = "run " + e.describe(r, e.cfg.RollbackCommand)
	} else {
		p.Rollback = "nothing to undo (no rollback_command)"
	}
	return p, nil
}

// describe renders argv for a plan, with sensitive values hidden.
func (e *execStep) describe(r *engine.Run, argv []string) string {
	if r.Decoded.Unknown("command") {
		return "(command known after apply)"
	}
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	s := "[" + strings.Join(q, " ") + "]"
	if e.cfg.Dir != "" {
		s += " in " + e.cfg.Dir
	}
	return r.Redact(s)
}

func (e *execStep) Apply(ctx context.Context, r *engine.Run) error {
	code, stdout, err := e.run(ctx, r, e.cfg.Command, "")
	r.SetOutput("exit_code", cty.NumberIntVal(int64(code)))
	r.SetOutput("stdout", cty.StringVal(stdout))
	return err
}

func (e *execStep) Rollback(ctx context.Context, r *engine.Run) error {
	if len(e.cfg.RollbackCommand) == 0 {
		r.Logf("nothing to undo: no rollback_command")
		return nil
	}
	_, _, err := e.run(ctx, r, e.cfg.RollbackCommand, "rollback.")
	return err
}

// run executes argv with output captured, redacted, to the journal dir's logs
// and shown line by line. It kills the whole process group when ctx ends.
func (e *execStep) run(ctx context.Context, r *engine.Run, argv []string, logPrefix string) (int, string, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = r.Path(e.cfg.Dir)
	if cmd.Dir == "" {
		cmd.Dir = r.Path(".")
	}
	cmd.Env = engine.ChildEnv(e.cfg.Env)
	cmd.Env = append(cmd.Env, "RUNBOOK_STEP="+r.Addr, "RUNBOOK_JOURNAL_DIR="+r.JournalDir())
	if r.Resumed() {
		cmd.Env = append(cmd.Env, "RUNBOOK_RESUMED=1")
	}
	// Its own process group, so a cancel stops its children too; and killed
	// with us, so a crashed run never leaves a step half-running behind it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}

	outPath, err := r.LogPath(logPrefix + "stdout")
	if err != nil {
		return -1, "", err
	}
	errPath, err := r.LogPath(logPrefix + "stderr")
	if err != nil {
		return -1, "", err
	}
	outFile, err := os.OpenFile(outPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return -1, "", fmt.Errorf("create stdout log: %w", err)
	}
	defer outFile.Close()
	errFile, err := os.OpenFile(errPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return -1, "", fmt.Errorf("create stderr log: %w", err)
	}
	defer errFile.Close()

	stdoutPipe, err := cmd.StdoutPipe()
	if err != nil {
		return -1, "", err
	}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		return -1, "", err
	}
	if err := cmd.Start(); err != nil {
		return -1, "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case <-done:
		}
	}()
	var captured strings.Builder
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.pump(r, stdoutPipe, outFile, &captured) }()
	go func() { defer wg.Done(); e.pump(r, stderrPipe, errFile, nil) }()
	wg.Wait()
	err = cmd.Wait()
	close(done)
	code := cmd.ProcessState.ExitCode()
	stdout := captured.String()
	if ctx.Err() != nil {
		return code, stdout, fmt.Errorf("run %s: %w", argv[0], ctx.Err())
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return code, stdout, fmt.Errorf("%s exited with status %d (output in %s)", argv[0], code, errPath)
	}
	if err != nil {
		return code, stdout, fmt.Errorf("run %s: %w", argv[0], err)
	}
	return code, stdout, nil
}

// pump copies a child's stream line by line, redacting each line before it
// reaches the log file, the output or the captured stdout.
func (e *execStep) pump(r *engine.Run, src io.Reader, log io.Writer, capture *strings.Builder) {
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := r.Redact(sc.Text())
		fmt.Fprintln(log, line)
		r.Logf("%s", line)
		if capture != nil && capture.Len() < maxCapture {
			capture.WriteString(line)
			capture.WriteByte('\n')
		}
	}
	io.Copy(io.Discard, src) // a line longer than the buffer: drain so the child never blocks
}

func sortedMapKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

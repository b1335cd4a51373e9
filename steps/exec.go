// Package steps holds the block types of runbooks: one file per type, each
// registering itself with the engine.
package steps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
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
	if !r.Decoded.Unknown("command") {
		// The program and the scripts it is handed are bound by the plan's
		// fingerprint: apply DIR refuses them changed, and so does the step
		// itself when it comes to run them (Run.BindFile).
		// A program not there yet (an earlier step makes it) is not bound,
		// and the plan says so.
		for _, argv := range [][]string{e.cfg.Command, e.cfg.RollbackCommand} {
			if len(argv) == 0 {
				continue
			}
			if _, err := e.bindFiles(r, argv); errors.Is(err, engine.ErrRefused) {
				return nil, err
			} else if err != nil {
				p.Risks = append(p.Risks, fmt.Sprintf("%s, so this plan does not bind what runs: it is found when the step runs", oneLine(err)))
			}
		}
	}
	return p, nil
}

// describe renders argv for a plan: each argument, the directory and the
// environment it adds, with every sensitive value hidden before it is quoted.
func (e *execStep) describe(r *engine.Run, argv []string) string {
	if r.Decoded.Unknown("command") {
		return "(command known after apply)"
	}
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strconv.Quote(r.Redact(a))
	}
	s := "[" + strings.Join(q, " ") + "]"
	if e.cfg.Dir != "" {
		s += " in " + strconv.Quote(r.Redact(e.cfg.Dir))
	}
	switch {
	case r.Decoded.Unknown("env"):
		s += " with environment variables known after apply"
	case len(e.cfg.Env) > 0:
		var env []string
		for _, k := range sortedMapKeys(e.cfg.Env) {
			env = append(env, k+"="+strconv.Quote(r.Redact(e.cfg.Env[k])))
		}
		s += " with " + strings.Join(env, " ")
	}
	return s
}

// bindFiles resolves argv's program as the child will run it and binds it
// to the plan (Run.BindFile), and so does it for the script an interpreter
// is handed (sh deploy.sh, python3 migrate.py: the first argument that is not
// an option, unless the code is given inline with -c or -e, or is a module,
// -m). A script that is not there is an error, as the interpreter would
// fail on it. It returns the
// program's path. Other arguments are data, not bound (a rollback command's
// argument may be a file the command itself writes); programs that the
// command starts in turn are not seen.
func (e *execStep) bindFiles(r *engine.Run, argv []string) (string, error) {
	dir := e.dir(r)
	prog, err := lookProgram(argv[0], dir, engine.ChildEnv(e.cfg.Env))
	if err != nil {
		return "", err
	}
	if err := r.BindFile(prog); err != nil {
		return "", err
	}
	if script := scriptArg(prog, argv[1:]); script != "" {
		if !filepath.IsAbs(script) {
			script = filepath.Join(dir, script)
		}
		info, err := os.Stat(script)
		if err != nil {
			return "", fmt.Errorf("script %s: %w", script, err)
		}
		if info.Mode().IsRegular() {
			if err := r.BindFile(script); err != nil {
				return "", err
			}
		}
	}
	return prog, nil
}

// interpreters run the script named by their first argument that is not an
// option.
var interpreters = map[string]bool{
	"sh": true, "bash": true, "dash": true, "ksh": true, "zsh": true, "python": true, "python3": true,
	"perl": true, "ruby": true, "node": true, "php": true, "pwsh": true, "lua": true, "Rscript": true,
}

// scriptArg is the script an interpreter prog is handed in args, or "".
func scriptArg(prog string, args []string) string {
	if !interpreters[filepath.Base(prog)] {
		return ""
	}
	for _, a := range args {
		switch {
		case a == "-c" || a == "-e" || a == "--command" || a == "--eval" || a == "-s":
			return "" // inline code (the runbook text holds it), or read from stdin
		case a == "-m":
			return "" // a module, found by the interpreter
		case a == "--":
			continue
		case strings.HasPrefix(a, "-"):
			continue
		}
		return a
	}
	return ""
}

// lookProgram finds name as exec would for a child in dir with env: a name
// with a slash from dir, any other on env's PATH.
func lookProgram(name, dir string, env []string) (string, error) {
	if strings.Contains(name, "/") {
		p := name
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := isExecutable(p); err != nil {
			return "", fmt.Errorf("program %s: %w", name, err)
		}
		return p, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, name)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("program %s: not found on PATH (%s)", name, path)
}

func isExecutable(p string) error {
	info, err := os.Stat(p)
	switch {
	case err != nil:
		return err
	case !info.Mode().IsRegular():
		return errors.New("not a regular file")
	case info.Mode().Perm()&0o111 == 0:
		return errors.New("not executable")
	}
	return nil
}

func (e *execStep) dir(r *engine.Run) string {
	if e.cfg.Dir == "" {
		return r.Path(".")
	}
	return r.Path(e.cfg.Dir)
}

func (e *execStep) Apply(ctx context.Context, r *engine.Run) error {
	// The rollback command may still run, started by a rollback that was
	// killed (the step left rolling_back): it ends before the command runs
	// again, as Rollback ends a leftover command.
	if err := endLeftover(r, processItem("rollback."), "the rollback command"); err != nil {
		return err
	}
	code, stdout, err := e.run(ctx, r, e.cfg.Command, "")
	r.SetOutput("exit_code", cty.NumberIntVal(int64(code)))
	r.SetOutput("stdout", cty.StringVal(stdout))
	return err
}

func (e *execStep) Rollback(ctx context.Context, r *engine.Run) error {
	// The command may still run, started by an apply that was killed: it
	// ends before its undo starts.
	if err := endLeftover(r, processItem(""), "the command"); err != nil {
		return err
	}
	if len(e.cfg.RollbackCommand) == 0 {
		r.Logf("nothing to undo: no rollback_command")
		return nil
	}
	_, _, err := e.run(ctx, r, e.cfg.RollbackCommand, "rollback.")
	return err
}

// processItem is the checkpoint naming the process group of the command
// (logPrefix "") or of the rollback command ("rollback.").
func processItem(logPrefix string) string { return logPrefix + "process" }

// shim is what the child runs first: it waits until runbook has recorded
// its process group (a line on fd 3), then becomes the command ($0 "$@"). If
// runbook dies first, fd 3 reads end of file and the command never starts.
const shim = `IFS= read -r go <&3 || exit 125; exec 3<&-; exec "$0" "$@"`

// run executes argv with output captured, redacted, to the journal dir's logs
// and shown line by line. The command runs in a process group of its own,
// recorded in the journal (processItem) before it starts; what an earlier
// attempt left running there is ended first (endLeftover). It kills the whole
// group when ctx ends.
func (e *execStep) run(ctx context.Context, r *engine.Run, argv []string, logPrefix string) (int, string, error) {
	what := "the command"
	if logPrefix != "" {
		what = "the rollback command"
	}
	prog, err := e.bindFiles(r, argv)
	if err != nil {
		return -1, "", err
	}
	if err := endLeftover(r, processItem(logPrefix), what); err != nil {
		return -1, "", err
	}
	logs, err := openExecLogs(r, logPrefix)
	if err != nil {
		return -1, "", err
	}
	defer logs.close()
	mark := newExecMark()
	cmd := e.command(r, prog, argv, mark)
	stdoutPipe, err := cmd.StdoutPipe()
	if err != nil {
		return -1, "", err
	}
	stderrPipe, err := cmd.StderrPipe()
	if err != nil {
		return -1, "", err
	}
	proc, err := startRecorded(r, cmd, processItem(logPrefix), mark)
	if err != nil {
		return -1, "", fmt.Errorf("start %s: %w", argv[0], err)
	}
	done := make(chan struct{})
	go endOnCancel(ctx, cmd.Process.Pid, done)
	var captured strings.Builder
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.pump(r, stdoutPipe, logs.out, &captured) }()
	go func() { defer wg.Done(); e.pump(r, stderrPipe, logs.err, nil) }()
	wg.Wait()
	err = cmd.Wait()
	close(done)
	proc.Ended = true
	if e := r.Checkpoint(processItem(logPrefix), proc); e != nil {
		return -1, "", e
	}
	code := cmd.ProcessState.ExitCode()
	stdout := captured.String()
	if ctx.Err() != nil {
		return code, stdout, fmt.Errorf("run %s: %w", argv[0], ctx.Err())
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return code, stdout, fmt.Errorf("%s exited with status %d (output in %s)", argv[0], code, logs.errPath)
	}
	if err != nil {
		return code, stdout, fmt.Errorf("run %s: %w", argv[0], err)
	}
	return code, stdout, nil
}

// command is the child: the shim, then prog with argv's arguments, in the
// step's directory and environment, in a process group of its own (so a
// cancel stops its children too, and a resume finds them) that dies with
// runbook.
func (e *execStep) command(r *engine.Run, prog string, argv []string, mark string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", append([]string{"-c", shim, prog}, argv[1:]...)...)
	cmd.Dir = e.dir(r)
	cmd.Env = engine.ChildEnv(e.cfg.Env)
	cmd.Env = append(cmd.Env, "RUNBOOK_STEP="+r.Addr, "RUNBOOK_JOURNAL_DIR="+r.JournalDir(), execMarkEnv+"="+mark)
	if r.Resumed() {
		cmd.Env = append(cmd.Env, "RUNBOOK_RESUMED=1")
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd
}

// execLogs are the journal dir's stdout and stderr logs of one run.
type execLogs struct {
	out, err *os.File
	errPath  string
}

// openExecLogs creates (truncating) the step's logPrefix+"stdout" and
// logPrefix+"stderr" logs, 0600.
func openExecLogs(r *engine.Run, logPrefix string) (*execLogs, error) {
	outPath, err := r.LogPath(logPrefix + "stdout")
	if err != nil {
		return nil, err
	}
	errPath, err := r.LogPath(logPrefix + "stderr")
	if err != nil {
		return nil, err
	}
	l := &execLogs{errPath: errPath}
	if l.out, err = os.OpenFile(outPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
		return nil, fmt.Errorf("create stdout log: %w", err)
	}
	if l.err, err = os.OpenFile(errPath, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600); err != nil {
		l.out.Close()
		return nil, fmt.Errorf("create stderr log: %w", err)
	}
	return l, nil
}

func (l *execLogs) close() {
	l.out.Close()
	l.err.Close()
}

// startRecorded starts cmd held at its shim, records its process group in
// item, and only then lets it go (a line on the shim's fd 3): a command
// runs only once the journal knows where to find it. On failure the group
// is killed and waited for.
func startRecorded(r *engine.Run, cmd *exec.Cmd, item, mark string) (execProcess, error) {
	goRead, goWrite, err := os.Pipe()
	if err != nil {
		return execProcess{}, err
	}
	defer goRead.Close()
	defer goWrite.Close()
	cmd.ExtraFiles = []*os.File{goRead}
	err = cmd.Start()
	goRead.Close()
	if err != nil {
		return execProcess{}, err
	}
	proc, err := processOf(cmd.Process.Pid, mark)
	if err == nil {
		err = r.Checkpoint(item, proc)
	}
	if err == nil {
		_, err = goWrite.Write([]byte("go\n"))
	}
	if err != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		return execProcess{}, err
	}
	return proc, nil
}

// endOnCancel ends process group pgid when ctx ends before done closes:
// SIGTERM, then SIGKILL after 5 s.
func endOnCancel(ctx context.Context, pgid int, done <-chan struct{}) {
	select {
	case <-ctx.Done():
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
	case <-done:
	}
}

// pump copies a child's stream, redacted as one text (a multi-line secret
// is found across its lines), to the log file, the output (a line at a time)
// and the captured stdout.
func (e *execStep) pump(r *engine.Run, src io.Reader, log io.Writer, capture *strings.Builder) {
	lines := &lineSink{r: r, log: log, capture: capture}
	rw := r.RedactedWriter(lines)
	io.Copy(rw, src)
	rw.Close()
	lines.flush()
}

// lineSink receives redacted text and passes it on a line at a time.
type lineSink struct {
	r       *engine.Run
	log     io.Writer
	capture *strings.Builder
	partial []byte
}

// maxLine bounds a line held back waiting for its newline.
const maxLine = 64 << 10

func (l *lineSink) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 && len(l.partial) < maxLine {
			return len(p), nil
		}
		if i < 0 {
			i = len(l.partial) - 1 // a very long line: pass it on rather than grow without bound
		}
		l.line(string(bytes.TrimSuffix(l.partial[:i+1], []byte("\n"))))
		l.partial = l.partial[i+1:]
	}
}

func (l *lineSink) flush() {
	if len(l.partial) > 0 {
		l.line(string(l.partial))
		l.partial = nil
	}
}

func (l *lineSink) line(s string) {
	fmt.Fprintln(l.log, s)
	l.r.Logf("%s", s)
	if l.capture != nil && l.capture.Len() < maxCapture {
		l.capture.WriteString(s)
		l.capture.WriteByte('\n')
	}
}

func sortedMapKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

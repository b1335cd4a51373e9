package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"golang.org/x/term"

	"github.com/runbook-dev/runbook/engine"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

// commonFlags are the flags every command that loads a runbook takes.
type commonFlags struct {
	vars        listFlag
	varFiles    listFlag
	targets     listFlag
	parallelism int
	json        bool
	journal     string
}

func newFlagSet(name string, cf *commonFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cf != nil {
		fs.Var(&cf.vars, "var", "set a variable: NAME=VALUE (repeatable)")
		fs.Var(&cf.varFiles, "var-file", "read variables from an HCL file (repeatable)")
		fs.Var(&cf.targets, "target", "only this step and what it depends on: TYPE.NAME (repeatable)")
		fs.IntVar(&cf.parallelism, "parallelism", 4, "how many independent steps run at once")
		fs.BoolVar(&cf.json, "json", false, "print one JSON event per line")
		fs.StringVar(&cf.journal, "journal", "", "the journal directory (default .runbook/NAME beside the runbook)")
	}
	return fs
}

// helpRequest is -h or --help on a subcommand: its usage and flags go to
// stdout, and the exit code is 0.
type helpRequest struct{ fs *flag.FlagSet }

func (h *helpRequest) Error() string { return "help requested" }

func (h *helpRequest) print(w io.Writer) {
	for _, c := range commands {
		if c.name == h.fs.Name() {
			fmt.Fprintf(w, "usage: runbook %s %s\n", c.name, c.usage)
		}
	}
	fmt.Fprintln(w, "\nflags (one dash or two):")
	h.fs.SetOutput(w)
	h.fs.PrintDefaults()
	h.fs.SetOutput(io.Discard)
}

// parseArgs parses flags wherever they stand among the positional arguments,
// so that both `apply FILE -var x=1` and `apply -var x=1 FILE` work.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return nil, &helpRequest{fs: fs}
		} else if err != nil {
			return nil, &usageError{msg: err.Error(), hint: "run runbook help " + fs.Name()}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (cf *commonFlags) inputs(env *cliEnv) engine.VarInputs {
	return engine.VarInputs{Vars: cf.vars, VarFiles: cf.varFiles, Environ: env.environ}
}

func (cf *commonFlags) output(env *cliEnv) engine.Output {
	if cf.json {
		return &engine.JSONOutput{W: env.stdout}
	}
	return &engine.HumanOutput{W: env.stdout, Terminal: isTerminal(env.stdout)}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (cf *commonFlags) options(env *cliEnv, command, journal string) engine.Options {
	opts := engine.Options{JournalDir: journal, Parallelism: cf.parallelism, Targets: cf.targets, Output: cf.output(env), Command: command}
	if !cf.json && isTerminal(env.stdout) {
		opts.ProgressEvery = 100 * time.Millisecond // a bar redraws often; lines in a log do not
	}
	return opts
}

// defaultJournal is .runbook/NAME/ beside the runbook, NAME being the file's
// name without .hcl, so runbooks in one folder never share a journal.
func defaultJournal(file string) string {
	name := strings.TrimSuffix(filepath.Base(file), filepath.Ext(file))
	return filepath.Join(filepath.Dir(file), ".runbook", name)
}

// journalFor picks the journal of a command that may be given no FILE: the
// -journal flag, FILE's default, or the only journal under ./.runbook.
func (cf *commonFlags) journalFor(file string) (string, error) {
	if cf.journal != "" {
		return cf.journal, nil
	}
	if file != "" {
		return defaultJournal(file), nil
	}
	entries, _ := os.ReadDir(".runbook")
	var dirs []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(".runbook", e.Name()))
		}
	}
	switch len(dirs) {
	case 1:
		return dirs[0], nil
	case 0:
		return "", &usageError{msg: "no runbook file given and no journal in ./.runbook", hint: "name the runbook file, or the journal with -journal DIR"}
	}
	return "", &usageError{msg: fmt.Sprintf("several journals in ./.runbook (%s)", strings.Join(dirs, ", ")), hint: "name the runbook file, or the journal with -journal DIR"}
}

func onePositional(pos []string, cmd string, required bool) (string, error) {
	switch {
	case len(pos) > 1:
		return "", &usageError{msg: fmt.Sprintf("%s takes one runbook file, got %d arguments", cmd, len(pos)), hint: "runbook help"}
	case len(pos) == 1:
		return pos[0], nil
	case required:
		return "", &usageError{msg: cmd + " needs a runbook file", hint: "runbook " + cmd + " FILE.hcl"}
	}
	return "", nil
}

// printDiags writes diagnostics with source snippets and returns an error if
// any is an error.
func printDiags(env *cliEnv, files map[string]*hcl.File, diags hcl.Diagnostics, rd *engine.Redactor) error {
	if len(diags) == 0 {
		return nil
	}
	writeDiags(env.stderr, files, diags, rd)
	if diags.HasErrors() {
		n := 0
		for _, d := range diags {
			if d.Severity == hcl.DiagError {
				n++
			}
		}
		return &reportedError{err: fmt.Errorf("%d error(s) in the runbook", n)}
	}
	return nil
}

// openSession loads a runbook for validate, graph, plan and apply, checks
// every block, and prints all diagnostics at once.
func openSession(env *cliEnv, file string, cf *commonFlags, requireAll bool) (*engine.Session, error) {
	return openSessionIn(env, file, cf.inputs(env), requireAll)
}

// openSessionWith opens a runbook with the variable values a saved plan recorded.
func openSessionWith(env *cliEnv, file string, cf *commonFlags, recorded map[string][]byte) (*engine.Session, error) {
	in := cf.inputs(env)
	in.Recorded = map[string]json.RawMessage{}
	for k, v := range recorded {
		in.Recorded[k] = v
	}
	return openSessionIn(env, file, in, true)
}

func openSessionIn(env *cliEnv, file string, in engine.VarInputs, requireAll bool) (*engine.Session, error) {
	src, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read runbook: %w", err)
	}
	s, diags := engine.Open(file, src, in, requireAll)
	if s == nil {
		return nil, printDiags(env, nil, diags, nil)
	}
	env.redactor = s.Redactor
	diags = append(diags, s.Validate()...)
	if err := printDiags(env, s.Config.Files, diags, s.Redactor); err != nil {
		return nil, err
	}
	return s, nil
}

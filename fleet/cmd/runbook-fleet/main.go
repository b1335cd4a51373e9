// Command runbook-fleet rolls one runbook over many deployments on Temporal
// (runbook fleet runs it): plan, apply, worker, approve, pause, resume,
// status, server and demo. main only maps errors to exit codes; each
// subcommand is a file.
//
// Output rules, as runbook's: errors go to stderr as "runbook: error: …"
// with "runbook: hint: …" lines, lowercase, no final period.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
)

// Exit codes, as runbook's (SPEC section 1).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitRefused = 3
)

type command struct {
	name, usage string
	run         func(ctx context.Context, env *cliEnv, args []string) error
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

type cliEnv struct {
	stdout, stderr io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &cliEnv{stdout: os.Stdout, stderr: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w := env.stdout
		if len(args) == 0 {
			w = env.stderr
		}
		fmt.Fprintln(w, "usage: runbook fleet COMMAND FLEET.hcl [FLAGS]\n\ncommands:")
		for _, c := range commands {
			fmt.Fprintf(w, "  %-9s %s\n", c.name, c.usage)
		}
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return exitCode(env, c.run(ctx, env, args[1:]))
		}
	}
	fmt.Fprintf(env.stderr, "runbook: error: unknown fleet command %q\nrunbook: hint: runbook fleet help lists them\n", args[0])
	return exitUsage
}

// usageError is a mistake in the command line (exit 2).
type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }

// reportedError: the details were printed already (diagnostics).
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

func exitCode(env *cliEnv, err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "runbook: error: %s\n", ue.msg)
		if ue.hint != "" {
			fmt.Fprintf(env.stderr, "runbook: hint: %s\n", ue.hint)
		}
		return exitUsage
	}
	var re *reportedError
	if !errors.As(err, &re) {
		fmt.Fprintf(env.stderr, "runbook: error: %s\n", err)
		for _, h := range engine.Hints(err) {
			fmt.Fprintf(env.stderr, "runbook: hint: %s\n", h)
		}
	}
	if errors.Is(err, engine.ErrRefused) {
		return exitRefused
	}
	return exitFailure
}

// newFlagSet makes a subcommand's flags; -h prints them to stdout.
func newFlagSet(env *cliEnv, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("runbook fleet "+name, flag.ContinueOnError)
	fs.SetOutput(env.stdout)
	return fs
}

// parseArgs parses flags wherever they stand among the positional
// arguments and returns the one positional argument, the fleet file.
func parseArgs(fs *flag.FlagSet, args []string) (string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return "", err
		} else if err != nil {
			return "", &usageError{msg: err.Error(), hint: "runbook fleet " + fs.Name()[len("runbook fleet "):] + " -h lists its flags"}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(pos) != 1 {
		return "", &usageError{msg: fmt.Sprintf("%s takes one fleet file, got %d arguments", fs.Name(), len(pos)), hint: fs.Name() + " FLEET.hcl"}
	}
	return pos[0], nil
}

// loadFleet loads and checks the fleet file, printing its diagnostics.
func loadFleet(env *cliEnv, path string) (*fleet.Fleet, error) {
	f, diags := fleet.Load(path)
	if len(diags) > 0 {
		wr := hcl.NewDiagnosticTextWriter(env.stderr, f.Files, 100, false)
		wr.WriteDiagnostics(diags)
	}
	if diags.HasErrors() {
		return nil, &reportedError{err: fmt.Errorf("%s is not a valid fleet file", path)}
	}
	return f, nil
}

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// parseDuration parses s, or def when s is empty.
func parseDuration(s, def string) (time.Duration, error) {
	if s == "" {
		s = def
	}
	return time.ParseDuration(s)
}

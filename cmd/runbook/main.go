// Command runbook runs declarative runbooks: validate, plan, apply, resume,
// roll back. main only maps errors to exit codes; each subcommand is a file.
//
// Output rules: errors go to stderr as "runbook: error: …" with "runbook:
// hint: …" lines, lowercase, no final period.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/initgc" // no collection while packages initialise
	_ "github.com/runbook-dev/runbook/steps"
)

// Exit codes (SPEC section 1).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitRefused = 3
)

// command is one subcommand.
type command struct {
	name  string
	usage string
	run   func(ctx context.Context, env *cliEnv, args []string) error
}

var commands []*command

func register(c *command) { commands = append(commands, c) }

// cliEnv is what a command writes to.
type cliEnv struct {
	stdout, stderr io.Writer
	environ        []string
	// redactor is the loaded runbook's, once there is one: the final error
	// line passes through it like every other output.
	redactor *engine.Redactor
}

func main() {
	initgc.Restore()
	os.Exit(Main())
}

// Main runs the command line and returns the exit code; tests call it in-process.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := &cliEnv{stdout: os.Stdout, stderr: os.Stderr, environ: os.Environ()}
	return run(ctx, env, os.Args[1:])
}

func run(ctx context.Context, env *cliEnv, args []string) int {
	if len(args) == 2 && args[0] == "help" {
		args = []string{args[1], "-h"} // runbook help COMMAND: its usage and flags
	}
	if len(args) == 0 {
		printUsage(env.stderr) // a usage error: no command
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.stdout) // asked for: to stdout, so that runbook help | less works
		return exitOK
	}
	if args[0] == "version" || args[0] == "--version" {
		fmt.Fprintf(env.stdout, "runbook %s\n", engine.Version)
		return exitOK
	}
	for _, c := range commands {
		if c.name == args[0] {
			return exitCode(env, c.name, c.run(ctx, env, args[1:]))
		}
	}
	fmt.Fprintf(env.stderr, "runbook: error: unknown command %q\n", args[0])
	fmt.Fprintf(env.stderr, "runbook: hint: run runbook help for the list of commands\n")
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: runbook COMMAND [ARGS] [FLAGS]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.usage)
	}
	fmt.Fprintln(w, "\ncommon flags (commands that read a runbook): -var NAME=VALUE, -var-file FILE, -target TYPE.NAME, -parallelism N, -json, -journal DIR")
	fmt.Fprintln(w, "runbook help COMMAND (or runbook COMMAND -h) lists a command's flags")
}

// usageError is a mistake in the command line itself (exit 2).
type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }

// reportedError means the details were already printed (diagnostics).
type reportedError struct{ err error }

func (e *reportedError) Error() string { return e.err.Error() }
func (e *reportedError) Unwrap() error { return e.err }

func exitCode(env *cliEnv, command string, err error) int {
	if err == nil {
		return exitOK
	}
	var he *helpRequest
	if errors.As(err, &he) {
		he.print(env.stdout)
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.stderr, "runbook: error: %s\n", engine.Printable(env.redactor.String(ue.msg)))
		if ue.hint != "" {
			fmt.Fprintf(env.stderr, "runbook: hint: %s\n", engine.Printable(env.redactor.String(ue.hint)))
		}
		return exitUsage
	}
	var xs *exitStatus
	if errors.As(err, &xs) {
		return xs.code // runbook fleet: the child printed its errors
	}
	var re *reportedError
	if errors.As(err, &re) {
		if errors.Is(err, engine.ErrRefused) {
			return exitRefused
		}
		return exitFailure
	}
	fmt.Fprintf(env.stderr, "runbook: error: %s\n", engine.PrintableLines(env.redactor.String(err.Error())))
	for _, h := range engine.Hints(err) {
		fmt.Fprintf(env.stderr, "runbook: hint: %s\n", engine.Printable(env.redactor.String(h)))
	}
	var le *engine.LockError
	switch {
	case errors.As(err, &le):
		if errors.Is(err, engine.ErrStaleLock) {
			fmt.Fprintf(env.stderr, "runbook: hint: the owner ran on another host, or cannot be told gone from here; check that it no longer runs, then break the lock with runbook unlock\n")
		} else {
			fmt.Fprintf(env.stderr, "runbook: hint: wait for that run to finish; only one apply, resume or rollback may hold a journal\n")
		}
		return exitRefused
	case errors.Is(err, engine.ErrRefused):
		return exitRefused
	case errors.Is(err, engine.ErrWaiting) && command == "rollback":
		// resume would apply again what the rollback undid
		fmt.Fprintf(env.stderr, "runbook: hint: once done, run runbook rollback again\n")
		return exitFailure
	case errors.Is(err, engine.ErrWaiting):
		fmt.Fprintf(env.stderr, "runbook: hint: once done, continue with runbook resume\n")
		return exitFailure
	case command == "rollback" && (errors.Is(err, engine.ErrInterrupted) || errors.Is(err, context.Canceled)):
		fmt.Fprintf(env.stderr, "runbook: hint: finish undoing with runbook rollback (runbook resume would apply again what it undid)\n")
		return exitFailure
	case errors.Is(err, engine.ErrInterrupted):
		fmt.Fprintf(env.stderr, "runbook: hint: continue with runbook resume, or undo with runbook rollback\n")
		return exitFailure
	}
	return exitFailure
}

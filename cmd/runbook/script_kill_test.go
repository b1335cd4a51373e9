package main

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/engine"
)

// killAfterEnv names the checkpoint at which the runbook command of the test
// binary kills itself with SIGKILL: "STEP ITEM", for example
// "cutover.aistor rollback/healthy". The checkpoint is durable when the
// process dies, and nothing after it has run: exactly the journal a kill -9
// at that instant leaves.
const killAfterEnv = "RUNBOOK_TEST_KILL_AFTER"

// interruptAfterEnv is killAfterEnv's gentle twin: at the checkpoint it
// names, the runbook command sends itself SIGINT, as a Ctrl-C in its
// terminal would, and carries on until it notices.
const interruptAfterEnv = "RUNBOOK_TEST_INTERRUPT_AFTER"

// installKillHook arms the kill of killAfterEnv, or the interrupt of
// interruptAfterEnv, in the runbook command that scripts run (the
// re-executed test binary; the real binary has no hook).
func installKillHook() {
	installRunHook()
	sig, name := syscall.SIGKILL, killAfterEnv
	spec := os.Getenv(killAfterEnv)
	if spec == "" {
		sig, name, spec = syscall.SIGINT, interruptAfterEnv, os.Getenv(interruptAfterEnv)
	}
	if spec == "" {
		return
	}
	step, item, ok := strings.Cut(spec, " ")
	if !ok {
		fmt.Fprintf(os.Stderr, "%s=%q: write it as \"STEP ITEM\"\n", name, spec)
		os.Exit(2)
	}
	var once sync.Once
	run := engine.AfterCheckpoint
	engine.AfterCheckpoint = func(s, i string) {
		if run != nil {
			run(s, i)
		}
		if s != step || i != item {
			return
		}
		if sig == syscall.SIGINT {
			once.Do(func() {
				fmt.Fprintf(os.Stderr, "test hook: interrupt (SIGINT) after checkpoint %s %s\n", s, i)
				_ = syscall.Kill(os.Getpid(), syscall.SIGINT)
			})
			return
		}
		fmt.Fprintf(os.Stderr, "test hook: kill -9 after checkpoint %s %s\n", s, i)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}

// runAfterEnv names a checkpoint ("STEP ITEM") at which the runbook
// command of the test binary runs the shell command in runEnv, once and
// to its end, before it goes on: something that happens to the servers at
// that instant, for example a node's MinIO stopped right after the
// cutover's health checks passed (cutover_write_probe_lone_restart.txtar).
const (
	runAfterEnv = "RUNBOOK_TEST_RUN_AFTER"
	runEnv      = "RUNBOOK_TEST_RUN"
)

func installRunHook() {
	spec, command := os.Getenv(runAfterEnv), os.Getenv(runEnv)
	if spec == "" {
		return
	}
	step, item, ok := strings.Cut(spec, " ")
	if !ok || command == "" {
		fmt.Fprintf(os.Stderr, "%s=%q, %s=%q: write them as \"STEP ITEM\" and a shell command\n", runAfterEnv, spec, runEnv, command)
		os.Exit(2)
	}
	var once sync.Once
	engine.AfterCheckpoint = func(s, i string) {
		if s != step || i != item {
			return
		}
		once.Do(func() {
			cmd := exec.Command("sh", "-c", command)
			cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
			err := cmd.Run()
			fmt.Fprintf(os.Stderr, "test hook: ran %q after checkpoint %s %s: %v\n", command, s, i, err)
		})
	}
}

// Script commands of the kill scripts (testdata/scripts/cutover_kill_*.txtar):
//
//	journal-last JOURNALDIR STEP ITEM
//	    the last checkpoint STEP recorded is ITEM, and the step did not finish
//	    (its last state is running or rolling_back): the journal a kill at
//	    ITEM leaves.
//	journal-clean JOURNALDIR STEP STATE
//	    STEP's last state is STATE (done or rolled_back) and no step of the
//	    run is unfinished.
func init() {
	moreScriptCmds["journal-last"] = cmdJournalLast
	moreScriptCmds["journal-clean"] = cmdJournalClean
}

func cmdJournalLast(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: journal-last JOURNALDIR STEP ITEM")
	}
	records, _, err := engine.ReadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	lastItem, lastState := "", engine.State("")
	for _, r := range records {
		if r.Step != args[1] {
			continue
		}
		switch r.Kind {
		case engine.RecordCheckpoint:
			lastItem = r.Item
		case engine.RecordState:
			lastState = r.State
		}
	}
	if lastItem != args[2] {
		ts.Fatalf("the last checkpoint of %s is %q, not %q", args[1], lastItem, args[2])
	}
	if lastState != engine.StateRunning && lastState != engine.StateRollingBack {
		ts.Fatalf("%s is %s after the kill, not running or rolling_back", args[1], lastState)
	}
}

func cmdJournalClean(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: journal-clean JOURNALDIR STEP STATE")
	}
	js, _, err := engine.LoadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	if got := js.Step(args[1]).State; got != engine.State(args[2]) {
		ts.Fatalf("%s is %s, not %s", args[1], got, args[2])
	}
	if js.Unfinished() {
		ts.Fatalf("the run is unfinished after the recovery")
	}
}

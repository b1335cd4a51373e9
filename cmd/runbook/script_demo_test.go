package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/demo"
)

// Script commands of the demo scripts (testdata/scripts/demo_*.txtar):
//
//	demo-stopped DIR
//	    nothing the demo in DIR started is left: every port its servers
//	    listened on (DIR/servers.json) refuses connections, and no process
//	    runs in DIR or names it on its command line.
//	journal-unfinished JOURNALDIR STEP ITEM
//	    STEP recorded checkpoint ITEM and did not finish (its last state is
//	    running, interrupted or rolling_back): a journal that resume or
//	    rollback continues.
func init() {
	moreScriptCmds["demo-stopped"] = cmdDemoStopped
	moreScriptCmds["journal-unfinished"] = cmdJournalUnfinished
}

func cmdDemoStopped(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: demo-stopped DIR")
	}
	dir := ts.MkAbs(args[0])
	addrs, err := demo.Ports(dir)
	ts.Check(err)
	// A demo killed with SIGKILL leaves its servers to the kernel, which
	// kills them at once (Pdeathsig); give them a moment to be gone.
	deadline := time.Now().Add(30 * time.Second)
	for {
		left := demoLeft(dir, addrs)
		if left == "" {
			break
		}
		if time.Now().After(deadline) {
			ts.Fatalf("%s", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ts.Logf("demo-stopped: %d ports free, no process in %s", len(addrs), dir)
}

// demoLeft names something the demo in dir left running, or is "".
func demoLeft(dir string, addrs []string) string {
	for _, a := range addrs {
		if c, err := net.DialTimeout("tcp", a, 5*time.Second); err == nil {
			c.Close()
			return a + " still accepts connections after the demo ended"
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cwd, _ := os.Readlink(filepath.Join(p, "cwd"))
		cmdline, _ := os.ReadFile(filepath.Join(p, "cmdline"))
		if cwd == dir || strings.HasPrefix(cwd, dir+"/") || strings.Contains(string(cmdline), dir) {
			return fmt.Sprintf("process %s (%s) still runs in the demo's folder", filepath.Base(p), strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return ""
}

func cmdJournalUnfinished(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: journal-unfinished JOURNALDIR STEP ITEM")
	}
	records, _, err := engine.ReadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	seen, state := false, engine.State("")
	for _, r := range records {
		if r.Step != args[1] {
			continue
		}
		switch {
		case r.Kind == engine.RecordCheckpoint && r.Item == args[2]:
			seen = true
		case r.Kind == engine.RecordState:
			state = r.State
		}
	}
	if !seen {
		ts.Fatalf("%s recorded no checkpoint %q", args[1], args[2])
	}
	if state != engine.StateRunning && state != engine.StateInterrupted && state != engine.StateRollingBack {
		ts.Fatalf("%s is %s, not running, interrupted or rolling back", args[1], state)
	}
}

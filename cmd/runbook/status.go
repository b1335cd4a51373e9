package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	register(&command{name: "status", usage: "[FILE]: the journal as a table: steps, states, times, items, last error", run: runStatus})
}

func runStatus(_ context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("status", &cf)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	file, err := onePositional(pos, "status", false)
	if err != nil {
		return err
	}
	journal, err := cf.journalFor(file)
	if err != nil {
		return err
	}
	js, warnings, err := engine.LoadJournal(journal)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no journal in %s: nothing has run yet", journal)
	}
	if err != nil {
		return err
	}
	if js.Run == nil {
		return fmt.Errorf("the journal in %s records no run", journal)
	}
	// The journal's own copy of the runbook gives the full list of steps.
	s, _ := engine.Open(js.Run.Runbook, []byte(js.Run.Source), engine.VarInputs{}, false)
	rows := engine.Status(js, s.Config, s.Graph)
	owner, alive, _ := engine.InspectLock(journal)
	if cf.json {
		out := map[string]any{"journal": journal, "runbook": js.Run.Runbook, "run": js.Run.ID, "steps": rows, "warnings": warnings}
		if owner != nil {
			out["lock"] = map[string]any{"owner": owner, "alive": alive}
		}
		b, _ := json.MarshalIndent(out, "", "  ")
		fmt.Fprintln(env.stdout, string(b))
		return nil
	}
	for _, w := range warnings {
		fmt.Fprintf(env.stderr, "runbook: warning: %s\n", w)
	}
	fmt.Fprintf(env.stdout, "runbook %s, run %s (journal %s)\n", js.Run.Runbook, js.Run.ID, journal)
	if owner != nil {
		state := "held by a live process"
		if !alive {
			state = "left by a process that is gone (apply, resume and rollback take it over when that process ran on this host; runbook unlock breaks it)"
		}
		fmt.Fprintf(env.stdout, "lock: %s, %s\n", owner, state)
	}
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tSTATE\tATTEMPTS\tSTARTED\tDURATION\tITEMS\tLAST ERROR")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\n", r.Addr, r.State, r.Attempts, dash(r.Started), dash(r.Duration), r.Items, dash(r.Error))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return printTables(env, js)
}

// printTables prints the tables steps keep in the journal (engine.Table),
// in the order of the steps, the latest of each name.
func printTables(env *cliEnv, js *engine.JournalState) error {
	for _, addr := range js.Order {
		st := js.Step(addr)
		for _, item := range st.Order {
			if !engine.IsTableItem(item) {
				continue
			}
			var t engine.Table
			if json.Unmarshal(st.Checkpoints[item], &t) != nil {
				continue
			}
			fmt.Fprintf(env.stdout, "\n%s: %s\n%s", addr, t.Title, t.Text())
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/engine"
)

// Script commands of the journal compatibility scripts
// (testdata/scripts/journal_compat_*.txtar), which resume and roll back
// journals an earlier tree wrote (testdata/journals):
//
//	journal-move JOURNALDIR
//	    the run in JOURNALDIR was recorded in another folder (the one its
//	    run record names): rewrite that folder as the script's $WORK in
//	    every record, as if the whole folder had been moved here, with each
//	    record's checksum made again. Item names, kinds and sequence
//	    numbers are left exactly as they are (the command fails if one
//	    would change).
func init() {
	moreScriptCmds["journal-move"] = cmdJournalMove
}

func cmdJournalMove(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: journal-move JOURNALDIR")
	}
	path := filepath.Join(ts.MkAbs(args[0]), engine.JournalFile)
	js, _, err := engine.LoadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	if js.Run == nil || js.Run.Dir == "" {
		ts.Fatalf("journal-move: the journal records no run folder")
	}
	from, to := js.Run.Dir, ts.Getenv("WORK")
	before, _, err := engine.ReadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	raw, err := os.ReadFile(path)
	ts.Check(err)
	var out bytes.Buffer
	table := crc32.MakeTable(crc32.Castagnoli)
	for line := range strings.Lines(string(raw)) {
		body := strings.Replace(strings.TrimSuffix(line, "\n")[9:], from, to, -1)
		// Paths inside JSON strings are escaped as JSON escapes them.
		body = strings.Replace(body, jsonString(from), jsonString(to), -1)
		fmt.Fprintf(&out, "%08x %s\n", crc32.Checksum([]byte(body), table), body)
	}
	ts.Check(os.WriteFile(path, out.Bytes(), 0o600))
	after, _, err := engine.ReadJournal(ts.MkAbs(args[0]))
	ts.Check(err)
	if len(after) != len(before) {
		ts.Fatalf("journal-move: %d records became %d", len(before), len(after))
	}
	for i := range before {
		if before[i].Item != after[i].Item || before[i].Kind != after[i].Kind || before[i].Seq != after[i].Seq || before[i].Step != after[i].Step {
			ts.Fatalf("journal-move: record %d changed beyond its folder: %+v became %+v", before[i].Seq, before[i], after[i])
		}
	}
	ts.Logf("journal-move: %s → %s in %d records", from, to, len(after))
}

// jsonString is s as it appears inside a JSON string (without quotes).
func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

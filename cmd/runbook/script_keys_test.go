package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minio/kms-go/kms"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// Script commands for the key migration scripts (migration_*.txtar).
func init() {
	moreScriptCmds["kes-keys"] = cmdKESKeys
	moreScriptCmds["km-enclave"] = cmdKMEnclave
	moreScriptCmds["km-list"] = cmdKMList
	moreScriptCmds["km-put"] = cmdKMPut
	moreScriptCmds["km-delete"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 2 {
			ts.Fatalf("usage: km-delete ENCLAVE NAME")
		}
		ts.Check(kmClient(ts).DeleteKey(context.Background(), args[0], &kms.DeleteKeyRequest{Name: args[1], AllVersions: true}))
	}
	moreScriptCmds["dir-list"] = cmdDirList
	moreScriptCmds["waitcheckpoints"] = cmdWaitCheckpoints
	moreScriptCmds["countcheckpoints"] = cmdCountCheckpoints
	moreScriptCmds["importbound"] = cmdImportBound
	moreScriptCmds["kes-bin"] = func(ts *testscript.TestScript, neg bool, args []string) {
		// $KES_BIN: the real kes v0.24.0 binary, as testenv finds it.
		p := os.Getenv("RUNBOOK_KES_BIN")
		if p == "" {
			cmd := exec.Command("bash", "scripts/build-real-servers.sh")
			cmd.Dir = "../.."
			out, err := cmd.Output()
			ts.Check(err)
			for _, l := range strings.Split(string(out), "\n") {
				if v, ok := strings.CutPrefix(l, "RUNBOOK_KES_BIN="); ok {
					p = strings.Trim(v, "'\"")
				}
			}
		}
		if p == "" {
			ts.Fatalf("kes-bin: RUNBOOK_KES_BIN is not set (eval \"$(scripts/build-real-servers.sh)\")")
		}
		ts.Setenv("KES_BIN", p)
	}
}

// kes-keys [-v0.23] [-n N] [-prefix P] [-chacha-every K] DIR: write N keys
// straight into an fs key store, as KES v0.24 (protobuf) or, with -v0.23,
// as KES v0.22/v0.23 (JSON) stores them; every K-th is ChaCha20.
func cmdKESKeys(ts *testscript.TestScript, neg bool, args []string) {
	fs := flag.NewFlagSet("kes-keys", flag.ContinueOnError)
	v023 := fs.Bool("v0.23", false, "JSON format")
	n := fs.Int("n", 1, "number of keys")
	prefix := fs.String("prefix", "fs-", "name prefix")
	chachaEvery := fs.Int("chacha-every", 3, "every K-th key is ChaCha20 (0: none)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		ts.Fatalf("usage: kes-keys [-v0.23] [-n N] [-prefix P] [-chacha-every K] DIR")
	}
	dir := ts.MkAbs(fs.Arg(0))
	ts.Check(os.MkdirAll(dir, 0o700))
	for i := range *n {
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), CreatedAt: time.Now().UTC(), CreatedBy: "runbook-test"}
		if *chachaEvery > 0 && i%*chachaEvery == 0 {
			k.Algorithm = kescrypto.ChaCha20
		}
		rand.Read(k.Material)
		var b []byte
		var err error
		if *v023 {
			b, err = k.MarshalV023()
		} else {
			k.HMAC = make([]byte, 32)
			rand.Read(k.HMAC)
			b, err = k.MarshalV024()
		}
		ts.Check(err)
		ts.Check(os.WriteFile(filepath.Join(dir, fmt.Sprintf("%s%06d", *prefix, i)), b, 0o600))
	}
}

func kmClient(ts *testscript.TestScript) *kms.Client {
	c, err := testenv.KMSClient(strings.TrimPrefix(ts.Getenv("KM_SERVER"), "https://"), ts.Getenv("KM_CA"), ts.Getenv("KM_API_KEY"))
	ts.Check(err)
	return c
}

// km-enclave NAME: create an enclave at the Key Manager (KM_*).
func cmdKMEnclave(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 1 {
		ts.Fatalf("usage: km-enclave NAME")
	}
	ts.Check(kmClient(ts).CreateEnclave(context.Background(), &kms.CreateEnclaveRequest{Name: args[0]}))
}

// km-list ENCLAVE FILE: write the enclave's key names, sorted, one a line.
func cmdKMList(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: km-list ENCLAVE FILE")
	}
	c := kmClient(ts)
	var names []string
	req := &kms.ListRequest{Enclave: args[0]}
	for {
		// The emulator may be injecting faults (migration_faults): the
		// check itself must see through them, so each page is retried.
		var page *kms.Page[kms.KeyStatusResponse]
		var err error
		for attempt := 0; attempt < 30; attempt++ {
			if page, err = c.ListKeys(context.Background(), req); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		ts.Check(err)
		for _, k := range page.Items {
			names = append(names, k.Name)
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			break
		}
		req = &kms.ListRequest{Enclave: args[0], ContinueAt: page.ContinueAt}
	}
	sort.Strings(names)
	writeLines(ts, args[1], names)
}

// km-put ENCLAVE NAME [STOREFILE]: import a key named NAME into the enclave,
// with the material of the key store file STOREFILE, or random material.
func cmdKMPut(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 && len(args) != 3 {
		ts.Fatalf("usage: km-put ENCLAVE NAME [STOREFILE]")
	}
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	rand.Read(k.Material)
	if len(args) == 3 {
		b, err := os.ReadFile(ts.MkAbs(args[2]))
		ts.Check(err)
		k, err = kescrypto.ParseKey(b)
		ts.Check(err)
	}
	typ := kms.AES256
	if k.Algorithm == kescrypto.ChaCha20 {
		typ = kms.ChaCha20
	}
	ts.Check(kmClient(ts).ImportKey(context.Background(), args[0], &kms.ImportKeyRequest{Name: args[1], Type: typ, Key: k.Material}))
}

// dir-list [-no-dots] DIR FILE: write the names of DIR's files, sorted.
func cmdDirList(ts *testscript.TestScript, neg bool, args []string) {
	noDots := len(args) > 0 && args[0] == "-no-dots"
	if noDots {
		args = args[1:]
	}
	if len(args) != 2 {
		ts.Fatalf("usage: dir-list [-no-dots] DIR FILE")
	}
	entries, err := os.ReadDir(ts.MkAbs(args[0]))
	ts.Check(err)
	var names []string
	for _, e := range entries {
		if noDots && strings.Contains(e.Name(), ".") {
			continue
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	writeLines(ts, args[1], names)
}

func writeLines(ts *testscript.TestScript, file string, lines []string) {
	s := strings.Join(lines, "\n")
	if len(lines) > 0 {
		s += "\n"
	}
	ts.Check(os.WriteFile(ts.MkAbs(file), []byte(s), 0o644))
}

// keyCheckpoints counts the "key/…" checkpoints of step in the journal dir.
func keyCheckpoints(ts *testscript.TestScript, dir, step string) (int, error) {
	js, _, err := engine.LoadJournal(ts.MkAbs(dir))
	if err != nil {
		return 0, err
	}
	n := 0
	for item := range js.Step(step).Checkpoints {
		if strings.HasPrefix(item, "key/") {
			n++
		}
	}
	return n, nil
}

// waitcheckpoints JOURNALDIR STEP N [SECONDS]: wait until STEP has at least N
// key checkpoints in the journal.
func cmdWaitCheckpoints(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 3 {
		ts.Fatalf("usage: waitcheckpoints JOURNALDIR STEP N [SECONDS]")
	}
	want, err := strconv.Atoi(args[2])
	ts.Check(err)
	limit := 60 * time.Second
	if len(args) > 3 {
		s, err := strconv.Atoi(args[3])
		ts.Check(err)
		limit = time.Duration(s) * time.Second
	}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if n, err := keyCheckpoints(ts, args[0], args[1]); err == nil && n >= want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	ts.Fatalf("%s did not reach %d checkpoints within %s", args[1], want, limit)
}

// countcheckpoints JOURNALDIR STEP VAR: set $VAR to the number of STEP's key
// checkpoints in the journal.
func cmdCountCheckpoints(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 3 {
		ts.Fatalf("usage: countcheckpoints JOURNALDIR STEP VAR")
	}
	n, err := keyCheckpoints(ts, args[0], args[1])
	ts.Check(err)
	ts.Logf("%s has %d key checkpoints", args[1], n)
	ts.Setenv(args[2], strconv.Itoa(n))
}

var attemptLine = regexp.MustCompile(`imported (\d+) keys this attempt \((\d+) import requests carrying (\d+) keys, (\d+) found already imported after an interruption or a lost answer, (\d+) done by earlier attempts;`)

// importbound OUTFILE TOTAL BEFORE MAXINFLIGHT: the migration's own account
// in OUTFILE (a resume's output) says that the keys its import requests
// carried plus the keys found already imported (in flight at the kill) are
// exactly TOTAL-BEFORE, that at most MAXINFLIGHT were in flight, and that
// the journal's BEFORE keys were not touched.
func cmdImportBound(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 4 {
		ts.Fatalf("usage: importbound OUTFILE TOTAL BEFORE MAXINFLIGHT")
	}
	out := ts.ReadFile(args[0])
	m := attemptLine.FindStringSubmatch(out)
	if m == nil {
		ts.Fatalf("no 'imported N keys this attempt' line in %s", args[0])
	}
	num := func(s string) int { n, err := strconv.Atoi(s); ts.Check(err); return n }
	total, before, maxInflight := num(args[1]), num(args[2]), num(args[3])
	requests, sent, inflight, earlier := num(m[2]), num(m[3]), num(m[4]), num(m[5])
	ts.Logf("resume: %d import requests carrying %d keys, %d in flight at the kill, %d done earlier; total %d, checkpointed before %d", requests, sent, inflight, earlier, total, before)
	remaining := total - before
	switch {
	case before <= 0 || before >= total:
		ts.Fatalf("the kill did not land mid-way: %d of %d keys were checkpointed", before, total)
	case earlier != before:
		ts.Fatalf("resume counted %d keys done earlier, the journal had %d", earlier, before)
	case sent+inflight != remaining:
		ts.Fatalf("resume: %d keys sent + %d in flight != %d remaining keys", sent, inflight, remaining)
	case inflight > maxInflight:
		ts.Fatalf("resume: %d keys were in flight, more than the parallelism %d", inflight, maxInflight)
	}
}

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// On a machine without the go command (and nothing built yet), runbook demo
// says that the servers cannot be built, why, and the command that builds
// them, then rehearses the key migration alone and succeeds.
func TestDemoWithoutGo(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	t.Setenv("RUNBOOK_TOOLS_CACHE", t.TempDir())
	t.Setenv("RUNBOOK_KES_BIN", "")
	t.Setenv("RUNBOOK_MINIO_BIN", "")
	var stdout, stderr bytes.Buffer
	env := &cliEnv{stdout: &stdout, stderr: &stderr, environ: os.Environ()}
	if code := run(context.Background(), env, []string{"demo", "--dir", filepath.Join(t.TempDir(), "d")}); code != exitOK {
		t.Fatalf("runbook demo exited %d:\n%s\n%s", code, stdout.String(), stderr.String())
	}
	for _, want := range []string{
		"the whole rehearsal needs real KES and MinIO servers, and they cannot be had here: cannot build kes: the go command is not on PATH",
		"install Go, then run scripts/build-real-servers.sh in a clone of runbook",
		"rehearsing the key migration alone instead (runbook demo --keys-only)",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	for _, want := range []string{"round trip: all 48 keys proven", "runbook: demo complete"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout.String())
		}
	}
}

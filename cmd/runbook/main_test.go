package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/internal/initgc"
	"github.com/runbook-dev/runbook/internal/testenv"
	"github.com/runbook-dev/runbook/internal/toolcache"
)

func TestMain(m *testing.M) {
	initgc.Restore()
	testscript.Main(m, map[string]func(){
		"runbook":   func() { installKillHook(); os.Exit(Main()) },
		"minio-ctl": testenv.MinIOCtlMain,
	})
}

// TestScripts runs the end-to-end scripts in testdata/scripts against the
// real binary (re-executed test binary), one fresh directory each.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "../../testdata/scripts",
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		// RUNBOOK_UPDATE_SCRIPTS=1 rewrites golden files inside the scripts
		// (review the diff before committing it).
		UpdateScripts: os.Getenv("RUNBOOK_UPDATE_SCRIPTS") != "",
		Cmds:          scriptCmds(),
		Setup: func(e *testscript.Env) error {
			testenv.ScriptSetup(e)
			// Scripts copy the project's real runbooks from here.
			d, err := filepath.Abs("../../runbooks")
			if err != nil {
				return err
			}
			e.Setenv("RUNBOOKS", d)
			// Journals earlier trees wrote, which this one must resume.
			j, err := filepath.Abs("../../testdata/journals")
			if err != nil {
				return err
			}
			e.Setenv("JOURNALS", j)
			// The servers runbook demo starts, for the runbook command
			// scripts exec: a script's environment is not the test's, and
			// its HOME is no home with a tools cache.
			if cache, err := toolcache.Dir(); err == nil {
				e.Setenv("RUNBOOK_TOOLS_CACHE", cache)
			}
			for _, t := range []toolcache.Tool{toolcache.KES, toolcache.MinIO} {
				if p, err := toolcache.Find(t); err == nil {
					e.Setenv(t.Env, p)
				}
			}
			return nil
		},
	})
}

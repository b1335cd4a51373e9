package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// scriptCmds are the commands testscript scripts use beyond the built-ins.
func scriptCmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	cmds := map[string]func(ts *testscript.TestScript, neg bool, args []string){
		// expectexit N prog args...: run prog and require exit status N.
		"expectexit": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) < 2 {
				ts.Fatalf("usage: expectexit N prog [args...]")
			}
			want, err := strconv.Atoi(args[0])
			ts.Check(err)
			err = ts.Exec(args[1], args[2:]...)
			got := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				got = ee.ExitCode()
			} else if err != nil {
				ts.Fatalf("run %s: %v", args[1], err)
			}
			if (got == want) == neg {
				ts.Fatalf("%s exited with status %d, want %d", args[1], got, want)
			}
		},
		// waitfile FILE [SECONDS]: wait until FILE exists.
		"waitfile": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) < 1 {
				ts.Fatalf("usage: waitfile FILE [SECONDS]")
			}
			limit := 30 * time.Second
			if len(args) > 1 {
				n, err := strconv.Atoi(args[1])
				ts.Check(err)
				limit = time.Duration(n) * time.Second
			}
			deadline := time.Now().Add(limit)
			for time.Now().Before(deadline) {
				if _, err := os.Stat(ts.MkAbs(args[0])); err == nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			ts.Fatalf("%s did not appear within %s", args[0], limit)
		},
		// nosecret VALUE PATH...: VALUE appears in no file under the paths, except
		// in a journal's secrets/ and backups/, the only places allowed to hold one.
		"nosecret": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) < 2 {
				ts.Fatalf("usage: nosecret VALUE PATH...")
			}
			secret := args[0]
			checked := 0
			for _, root := range args[1:] {
				filepath.Walk(ts.MkAbs(root), func(p string, info os.FileInfo, err error) error {
					if err != nil {
						return err
					}
					if info.IsDir() && (info.Name() == "secrets" || info.Name() == "backups") && strings.Contains(p, ".runbook") {
						return filepath.SkipDir
					}
					if info.IsDir() {
						return nil
					}
					b, err := os.ReadFile(p)
					ts.Check(err)
					checked++
					if strings.Contains(string(b), secret) {
						ts.Fatalf("secret found in %s", p)
					}
					return nil
				})
			}
			if checked == 0 {
				ts.Fatalf("nosecret checked no file: the paths hold nothing")
			}
		},
		// truncate FILE N: cut the last N bytes, as a crash mid-write would.
		"truncate": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: truncate FILE N")
			}
			n, err := strconv.Atoi(args[1])
			ts.Check(err)
			p := ts.MkAbs(args[0])
			info, err := os.Stat(p)
			ts.Check(err)
			ts.Check(os.Truncate(p, info.Size()-int64(n)))
		},
		// flipbyte FILE LINE: change one byte in the middle of line LINE (1-based).
		"flipbyte": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: flipbyte FILE LINE")
			}
			line, err := strconv.Atoi(args[1])
			ts.Check(err)
			p := ts.MkAbs(args[0])
			b, err := os.ReadFile(p)
			ts.Check(err)
			lines := strings.SplitAfter(string(b), "\n")
			if line < 1 || line > len(lines) {
				ts.Fatalf("%s has no line %d", p, line)
			}
			l := []byte(lines[line-1])
			mid := len(l) / 2
			l[mid] ^= 0x01
			lines[line-1] = string(l)
			ts.Check(os.WriteFile(p, []byte(strings.Join(lines, "")), 0o600))
		},
		// filemode FILE MODE: FILE's permission bits are MODE (octal).
		"filemode": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: filemode FILE MODE")
			}
			want, err := strconv.ParseUint(args[1], 8, 32)
			ts.Check(err)
			info, err := os.Stat(ts.MkAbs(args[0]))
			ts.Check(err)
			if got := uint64(info.Mode().Perm()); (got == want) == neg {
				ts.Fatalf("%s has mode %o, want %o", args[0], got, want)
			}
		},
	}
	// The real parts: KES, the Key Manager emulator, MinIO.
	for name, fn := range testenv.Cmds() {
		cmds[name] = fn
	}
	// Commands that other _test.go files of this package register.
	for name, fn := range moreScriptCmds {
		cmds[name] = fn
	}
	return cmds
}

// moreScriptCmds holds script commands that other _test.go files add from
// their init functions (for example script_objects_test.go).
var moreScriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){}

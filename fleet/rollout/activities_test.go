package rollout

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/engine"
)

// cutsRunbook has a chain of three steps and one beside it, so that its
// journal holds cuts before any step, between steps and with two steps
// running at once. Each step appends its address to effects.txt in the
// journal dir: what ran, once per run of the step.
const cutsRunbook = `runbook {
  name = "cuts"
}

exec "one" {
  command = ["sh", "-c", "echo exec.one >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
}

exec "two" {
  command    = ["sh", "-c", "echo exec.two >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
  depends_on = [exec.one]
}

exec "three" {
  command    = ["sh", "-c", "echo exec.three >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
  depends_on = [exec.two]
}

exec "beside" {
  command = ["sh", "-c", "echo exec.beside >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
}
`

// TestRunModeAtEveryCut: a worker can die between any two records of a
// deployment's journal (TestRollout20 kills one mid-wave). For the journal
// of a saved plan's complete run cut after each of its records, the
// activity's answer (apply, resume or done already), followed as
// RunDeployment follows it, must bring the deployment to the end with every
// step of the plan run exactly once: a step done before the cut not again,
// a step not done before it now. A cut after the plan record and before the
// first step's (or between one step's done and the next's start) once read
// as done already: the deployment was reported done with its steps not run.
func TestRunModeAtEveryCut(t *testing.T) {
	bin := buildRunbook(t)
	dir := t.TempDir()
	rb := filepath.Join(dir, "rb.hcl")
	if err := os.WriteFile(rb, []byte(cutsRunbook), 0o644); err != nil {
		t.Fatal(err)
	}
	full, planDir := filepath.Join(dir, "journal"), filepath.Join(dir, "plan")
	runbook(t, bin, "plan", rb, "-out", planDir, "-journal", full)
	runbook(t, bin, "apply", planDir, "-journal", full)
	doc, err := engine.ReadPlanDir(planDir)
	if err != nil {
		t.Fatal(err)
	}
	var planned []string
	for _, st := range doc.Steps {
		planned = append(planned, st.Address)
	}
	slices.Sort(planned)
	if want := []string{"exec.beside", "exec.one", "exec.three", "exec.two"}; !slices.Equal(planned, want) {
		t.Fatalf("the plan's steps are %v, want %v", planned, want)
	}
	if got := effects(t, full); !slices.Equal(got, planned) {
		t.Fatalf("the complete run ran %v, want %v", got, planned)
	}
	raw, err := os.ReadFile(filepath.Join(full, engine.JournalFile))
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(raw, []byte("\n"))
	lines = lines[:len(lines)-1] // the empty tail after the last newline
	d := DeploymentInput{Name: "cuts", PlanDir: planDir, Fingerprint: doc.Fingerprint, RunbookFile: rb}
	modes := map[string]int{}
	for n := 0; n <= len(lines); n++ {
		cut := bytes.Join(lines[:n], nil)
		checkCut(t, bin, planned, d, fmt.Sprintf("cut after %d of %d records", n, len(lines)), cutJournal(t, full, filepath.Join(dir, "cuts", fmt.Sprintf("at%03d", n)), cut), modes)
		if n < len(lines) { // the kill tore the next record's write
			torn := append(slices.Clone(cut), lines[n][:len(lines[n])/2]...)
			checkCut(t, bin, planned, d, fmt.Sprintf("cut after %d of %d records and half the next", n, len(lines)), cutJournal(t, full, filepath.Join(dir, "cuts", fmt.Sprintf("at%03d-torn", n)), torn), modes)
		}
	}
	// The journal has cuts of each kind, or this test proves less than it says.
	if modes["apply"] == 0 || modes["resume"] < 3 || modes["done already"] == 0 {
		t.Errorf("answers over the %d cuts: %v; want apply, resume (several) and done already each", 2*len(lines)+1, modes)
	}
}

// checkCut follows runMode's answer for the journal j as RunDeployment
// would, and checks that every step of the plan then ran once: before the
// cut (a "done" record) or after it (its effect in j).
func checkCut(t *testing.T, bin string, planned []string, d DeploymentInput, cut, j string, modes map[string]int) {
	t.Helper()
	d.Journal = j
	done := doneSteps(t, j)
	mode, err := runMode(d)
	if err != nil {
		t.Fatalf("%s: %v", cut, err)
	}
	modes[mode]++
	if mode != "done already" {
		out, err := exec.Command(bin, runbookArgs(d, mode)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s (done: %v): runbook %s: %v\n%s", cut, done, mode, err, out)
		}
	}
	ran := effects(t, j)
	if all := slices.Sorted(slices.Values(append(slices.Clone(done), ran...))); !slices.Equal(all, planned) {
		t.Errorf("%s: done before the cut %v, the answer was %q and it ran %v: want every step of the plan %v once", cut, done, mode, ran, planned)
	}
	if again, err := runMode(d); err != nil || again != "done already" {
		t.Errorf("%s: after %q the answer is %q (%v), want done already", cut, mode, again, err)
	}
}

// buildRunbook builds the runbook command of this checkout.
func buildRunbook(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "runbook")
	build := exec.Command("go", "build", "-o", bin, "./cmd/runbook")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build runbook: %v\n%s", err, out)
	}
	return bin
}

func runbook(t *testing.T, bin string, args ...string) {
	t.Helper()
	if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("runbook %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// cutJournal copies the journal dir full to dir as a kill would have left
// it with the journal file's text so far: its journal.log holds only that
// text, and no step's effects.
func cutJournal(t *testing.T, full, dir string, journal []byte) string {
	t.Helper()
	err := filepath.WalkDir(full, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(full, path)
		info, err := e.Info()
		if err != nil {
			return err
		}
		switch {
		case e.IsDir():
			return os.MkdirAll(filepath.Join(dir, rel), info.Mode().Perm())
		case rel == "effects.txt" || rel == engine.JournalFile || !e.Type().IsRegular():
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, rel), data, info.Mode().Perm())
	})
	if err != nil {
		t.Fatalf("copy the journal: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, engine.JournalFile), journal, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// doneSteps are the steps a "done" state record of the journal in dir names.
func doneSteps(t *testing.T, dir string) []string {
	t.Helper()
	records, _, err := engine.ReadJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	var done []string
	for _, r := range records {
		if r.Kind == engine.RecordState && r.State == engine.StateDone {
			done = append(done, r.Step)
		}
	}
	return done
}

// effects are the steps that ran in the journal dir, sorted.
func effects(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "effects.txt"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return slices.Sorted(slices.Values(strings.Fields(string(data))))
}

// laterRunbook is cutsRunbook's chain with a step of another change beside
// it (exec.other fails while fail exists in the journal dir), rollback
// commands, and approvals set by %d.
const laterRunbook = `runbook {
  name      = "later"
  approvals = %d
}

exec "one" {
  command          = ["sh", "-c", "echo exec.one >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
  rollback_command = ["true"]
}

exec "two" {
  command          = ["sh", "-c", "echo exec.two >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
  rollback_command = ["true"]
  depends_on       = [exec.one]
}

exec "other" {
  command = ["sh", "-c", "test ! -e \"$RUNBOOK_JOURNAL_DIR/fail\" && echo exec.other >> \"$RUNBOOK_JOURNAL_DIR/effects.txt\""]
}
`

// TestRunModeAfterLaterCommands: what an operator does to a deployment's
// journal after the fleet's plan ran is judged by the plan's steps alone.
// A rollback consumed the plan: the fleet never redoes what the operator
// undid (the runbook refuses the plan as applied once, or the rollback
// under way as unfinished), and a plan approved again applies. Another
// plan's failed step beside a finished plan leaves that plan done, with
// nothing run for it.
func TestRunModeAfterLaterCommands(t *testing.T) {
	bin := buildRunbook(t)
	chain := []string{"exec.one", "exec.two"}
	cases := []struct {
		name      string
		approvals int
		// later runs what the operator did after the plan in plan/ was
		// applied, and returns the deployment as the fleet then sees it.
		later func(t *testing.T, dir string, d DeploymentInput) DeploymentInput
		mode  string
		code  int      // the runbook's exit code following mode
		why   string   // in its output
		ran   []string // the effects after the plan's run and mode's
	}{
		{"rolled back", 0, func(t *testing.T, dir string, d DeploymentInput) DeploymentInput {
			runbook(t, bin, "rollback", d.RunbookFile, "-journal", d.Journal)
			return d
		}, "apply", 3, "was applied already", chain},
		{"rollback under way", 0, func(t *testing.T, dir string, d DeploymentInput) DeploymentInput {
			runbook(t, bin, "rollback", d.RunbookFile, "-journal", d.Journal)
			raw, err := os.ReadFile(filepath.Join(d.Journal, engine.JournalFile))
			if err != nil {
				t.Fatal(err)
			}
			i := bytes.Index(raw, []byte(`"state":"rolling_back"`))
			if i < 0 {
				t.Fatalf("the rollback wrote no rolling_back record:\n%s", raw)
			}
			j := cutJournal(t, d.Journal, filepath.Join(dir, "cut"), raw[:i+bytes.IndexByte(raw[i:], '\n')+1])
			if err := os.WriteFile(filepath.Join(j, "effects.txt"), []byte("exec.one\nexec.two\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			d.Journal = j
			return d
		}, "apply", 3, "was applied already", chain},
		{"rolled back and approved again", 1, func(t *testing.T, dir string, d DeploymentInput) DeploymentInput {
			runbook(t, bin, "rollback", d.RunbookFile, "-journal", d.Journal)
			again := filepath.Join(dir, "again")
			runbook(t, bin, "plan", d.RunbookFile, "-target", "exec.two", "-out", again, "-journal", d.Journal)
			runbook(t, bin, "approve", again, "--by", "b")
			doc, err := engine.ReadPlanDir(again)
			if err != nil {
				t.Fatal(err)
			}
			d.PlanDir, d.Fingerprint = again, doc.Fingerprint
			return d
		}, "apply", 0, "", append(slices.Clone(chain), chain...)},
		{"another plan's step failed", 0, func(t *testing.T, dir string, d DeploymentInput) DeploymentInput {
			if err := os.WriteFile(filepath.Join(d.Journal, "fail"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			other := filepath.Join(dir, "other")
			runbook(t, bin, "plan", d.RunbookFile, "-target", "exec.other", "-out", other, "-journal", d.Journal)
			if out, err := exec.Command(bin, "apply", other, "-journal", d.Journal).CombinedOutput(); err == nil {
				t.Fatalf("the other plan's apply did not fail:\n%s", out)
			}
			return d
		}, "done already", 0, "", chain},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rb := filepath.Join(dir, "rb.hcl")
			if err := os.WriteFile(rb, fmt.Appendf(nil, laterRunbook, c.approvals), 0o644); err != nil {
				t.Fatal(err)
			}
			d := DeploymentInput{Name: "later", PlanDir: filepath.Join(dir, "plan"), RunbookFile: rb, Journal: filepath.Join(dir, "journal")}
			runbook(t, bin, "plan", rb, "-target", "exec.two", "-out", d.PlanDir, "-journal", d.Journal)
			if c.approvals > 0 {
				runbook(t, bin, "approve", d.PlanDir, "--by", "a")
			}
			runbook(t, bin, "apply", d.PlanDir, "-journal", d.Journal)
			doc, err := engine.ReadPlanDir(d.PlanDir)
			if err != nil {
				t.Fatal(err)
			}
			d.Fingerprint = doc.Fingerprint
			if mode, err := runMode(d); err != nil || mode != "done already" {
				t.Fatalf("after the plan's run: %q (%v), want done already", mode, err)
			}
			d = c.later(t, dir, d)
			mode, err := runMode(d)
			if err != nil || mode != c.mode {
				t.Fatalf("runMode: %q (%v), want %q", mode, err, c.mode)
			}
			if mode != "done already" {
				out, err := exec.Command(bin, runbookArgs(d, mode)...).CombinedOutput()
				if code := exitCode(err); code != c.code || !strings.Contains(string(out), c.why) {
					t.Fatalf("runbook %s: exit %d (%v), want %d and %q\n%s", mode, code, err, c.code, c.why, out)
				}
			}
			if ran := effects(t, d.Journal); !slices.Equal(ran, slices.Sorted(slices.Values(c.ran))) {
				t.Errorf("ran %v, want %v", ran, c.ran)
			}
		})
	}
}

// exitCode is err's exit code: 0 for nil, -1 when there is none.
func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	}
	return -1
}

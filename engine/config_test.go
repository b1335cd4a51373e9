package engine_test

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
	_ "github.com/runbook-dev/runbook/steps"
)

// TestErrorFiles loads each testdata/error-files/*.hcl and compares the
// diagnostics with the "# ERROR: <Summary>" comments on the offending lines.
func TestErrorFiles(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/error-files/*.hcl")
	if err != nil || len(files) == 0 {
		t.Fatalf("no error files: %v", err)
	}
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want := expectedErrors(t, path)
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			s, diags := engine.Open(path, src, engine.VarInputs{}, false)
			if s != nil {
				diags = append(diags, s.Validate()...)
			}
			got := map[int][]string{}
			for _, d := range diags {
				if d.Severity != hcl.DiagError {
					continue
				}
				if d.Subject == nil {
					t.Errorf("diagnostic without a source range: %s: %s", d.Summary, d.Detail)
					continue
				}
				got[d.Subject.Start.Line] = append(got[d.Subject.Start.Line], d.Summary)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("diagnostics differ (-want +got):\n%s", diff)
			}
		})
	}
}

func expectedErrors(t *testing.T, path string) map[int][]string {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[int][]string{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		if _, after, ok := strings.Cut(sc.Text(), "# ERROR: "); ok {
			for _, s := range strings.Split(after, "; ") {
				want[line] = append(want[line], strings.TrimSpace(s))
			}
		}
	}
	return want
}

// FuzzLoad: no input makes loading, graphing or validating panic.
func FuzzLoad(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/error-files/*.hcl")
	seeds2, _ := filepath.Glob("../runbooks/*.hcl")
	for _, p := range append(seeds, seeds2...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte("runbook {\n name = \"x\"\n}\nexec \"a\" {\n command = [\"true\"]\n depends_on = [exec.a]\n}\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		s, _ := engine.Open("fuzz.hcl", src, engine.VarInputs{Vars: []string{"x=1"}}, false)
		if s != nil {
			s.Validate()
			if s.Graph != nil {
				_ = s.Graph.DOT()
			}
		}
	})
}

package engine_test

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
)

const header = "runbook {\n  name = \"x\"\n}\n"

func local(expr string) []byte { return []byte(header + "locals {\n  a = " + expr + "\n}\n") }

// summaries opens and validates src (with vars) and returns its diagnostics'
// summaries.
func summaries(t *testing.T, src []byte, in engine.VarInputs) string {
	t.Helper()
	s, diags := engine.Open("hostile.hcl", src, in, false)
	if s != nil {
		diags = append(diags, s.Validate()...)
	}
	var out []string
	for _, d := range diags {
		if d.Severity == hcl.DiagError {
			out = append(out, d.Summary+": "+d.Detail)
		}
	}
	return strings.Join(out, "\n")
}

// TestHostileRunbooks: inputs that crashed the loader (stack overflow) or
// took tens of GB are refused with a diagnostic naming the limit, in
// bounded memory. Each of the kinds of issue 20, input 9 (deep nesting, an
// expanding function), with others of the same kinds: every kind of
// bracket, template interpolations, %{if} directives, unary and binary
// operator chains, format widths, indent, join, replace, a local doubled
// forty times, a template of many references to a large value, a deep
// variables file and -var value.
func TestHostileRunbooks(t *testing.T) {
	const n = 100000
	dir := t.TempDir()
	deepVars := filepath.Join(dir, "deep.hcl")
	if err := os.WriteFile(deepVars, []byte("v = "+strings.Repeat("[", n)+strings.Repeat("]", n)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var doubling strings.Builder
	doubling.WriteString(header + "locals {\n  l0 = \"xxxxxxxxxxxxxxxx\"\n")
	for i := 1; i <= 40; i++ {
		doubling.WriteString("  l" + strconv.Itoa(i) + " = \"${local.l" + strconv.Itoa(i-1) + "}${local.l" + strconv.Itoa(i-1) + "}\"\n")
	}
	doubling.WriteString("}\n")
	variable := header + "variable \"v\" {\n  type = list(any)\n}\n"
	for _, tc := range []struct {
		name string
		src  []byte
		in   engine.VarInputs
		want string
	}{
		{"brackets", local(strings.Repeat("[", n) + strings.Repeat("]", n)), engine.VarInputs{}, "Nesting too deep"},
		{"parentheses", local(strings.Repeat("(", n) + "1" + strings.Repeat(")", n)), engine.VarInputs{}, "Nesting too deep"},
		{"objects", local(strings.Repeat("{a=", n) + "1" + strings.Repeat("}", n)), engine.VarInputs{}, "Nesting too deep"},
		{"interpolations", local(strings.Repeat(`"${`, n) + "1" + strings.Repeat(`}"`, n)), engine.VarInputs{}, "Nesting too deep"},
		{"if directives", local(`"` + strings.Repeat("%{if true}", n) + strings.Repeat("%{endif}", n) + `"`), engine.VarInputs{}, "Nesting too deep"},
		{"blocks", []byte(header + strings.Repeat("locals {\n", n) + strings.Repeat("}\n", n)), engine.VarInputs{}, "Nesting too deep"},
		{"not chain", local(strings.Repeat("!", 10*n) + "true"), engine.VarInputs{}, "Too many operators"},
		{"minus chain", local(strings.Repeat("-", 10*n) + "1"), engine.VarInputs{}, "Too many operators"},
		{"plus chain", local("1" + strings.Repeat(" + 1", 5*n)), engine.VarInputs{}, "Too many operators"},
		{"setproduct", local("setproduct(range(100), range(100), range(100), range(100), range(100))"), engine.VarInputs{}, "its result would be larger than 16 MiB"},
		{"format width", local(`format("%1000000000d", 1)`), engine.VarInputs{}, "its result would be larger than 16 MiB"},
		{"indent", local(`indent(100000000, "a\nb")`), engine.VarInputs{}, "its result would be larger than 16 MiB"},
		{"join", local(`join(format("%10000000s", "x"), range(10))`), engine.VarInputs{}, "its result would be larger than 16 MiB"},
		{"replace", local(`replace(format("%1000000s", "x"), " ", "0123456789abcdefghijklmnopqrstuvwxyz")`), engine.VarInputs{}, "its result would be larger than 16 MiB"},
		{"doubling", []byte(doubling.String()), engine.VarInputs{}, "The string this template builds would be larger than 16 MiB"},
		{"deep var file", []byte(variable), engine.VarInputs{VarFiles: []string{deepVars}}, "Nesting too deep"},
		{"deep -var", []byte(variable), engine.VarInputs{Vars: []string{"v=" + strings.Repeat("[", n) + strings.Repeat("]", n)}}, "Nesting too deep"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := summaries(t, tc.src, tc.in)
			if !strings.Contains(got, tc.want) {
				t.Fatalf("diagnostics:\n%s\nwant one with %q", got, tc.want)
			}
			if m := heapInUse(); m > 1<<30 {
				t.Fatalf("%d MiB of heap in use after loading", m>>20)
			}
		})
	}
}

// TestLimitsLeaveRunbooksAlone: the project's runbooks load as before.
func TestLimitsLeaveRunbooksAlone(t *testing.T) {
	paths, _ := filepath.Glob("../runbooks/*.hcl")
	for _, p := range paths {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := summaries(t, src, engine.VarInputs{}); strings.Contains(got, "too deep") || strings.Contains(got, "Too many") || strings.Contains(got, "too large") {
			t.Errorf("%s: %s", p, got)
		}
	}
}

// FuzzLoadLimits builds runbooks from a fragment repeated many times, nested
// or chained (the shapes that overflowed the stack or filled the memory),
// and loads them: no input may crash the loader or leave it holding more
// than 1 GiB.
func FuzzLoadLimits(f *testing.F) {
	for _, seed := range [][2]string{{"[", "]"}, {"(", ")"}, {`"${`, `}"`}, {"!", ""}, {"- ", ""}, {"1 + ", ""}, {"%{if true}", "%{endif}"},
		{"setproduct(range(50), ", ")"}, {"${local.a}", ""}, {"join(\"xxxxxxxx\", [", "])"}, {"{a = ", "}"}, {"true ? 1 : ", ""}} {
		f.Add(seed[0], seed[1], uint16(2000))
	}
	f.Fuzz(func(t *testing.T, open, close string, reps uint16) {
		if len(open)+len(close) > 64 {
			return
		}
		n := 1 + int(reps)%30000 // past both limits (100 deep, 20,000 operators), not far past

		src := local(`"x"` + "\n  b = " + strings.Repeat(open, n) + "1" + strings.Repeat(close, n))
		summaries(t, src, engine.VarInputs{})
		if m := heapInUse(); m > 1<<30 {
			t.Fatalf("%d MiB of heap in use after loading", m>>20)
		}
	})
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

package engine

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// changeListLimit is how many items a list in CHANGE.md shows before it
// points to the full list in items/.
const changeListLimit = 20

// renderChange writes CHANGE.md: a ticket or pull-request body for the
// reviewer — a summary first, then each step, the verification, the
// rollback path, the risks and the fingerprint.
func renderChange(d *PlanDoc, items map[string][]string) []byte {
	w := &changeWriter{d: d, items: items}
	w.summary()
	w.whatWillChange()
	w.stepsInOrder()
	w.verification()
	w.rollbackPath()
	w.risks()
	w.variables()
	w.bound()
	return w.b.Bytes()
}

// changeWriter renders one PlanDoc as CHANGE.md, a section per method.
type changeWriter struct {
	b     bytes.Buffer
	d     *PlanDoc
	items map[string][]string // items/ file name -> its lines
}

// p writes like fmt.Fprintf with every string argument escaped
// (Printable): names and observations come from the systems the plan
// read, and must not be able to change how the text around them reads on
// a terminal or in a Markdown viewer.
func (w *changeWriter) p(format string, args ...any) {
	for i, a := range args {
		switch v := a.(type) {
		case string:
			args[i] = Printable(v)
		case preformatted:
			args[i] = PrintableLines(string(v))
		}
	}
	fmt.Fprintf(&w.b, format, args...)
}

// summary is the title, the description and the table a reviewer reads
// first: runbook, steps, item counts, estimate, targets, risks,
// approvals, author and fingerprint.
func (w *changeWriter) summary() {
	d := w.d
	w.p("# Change request: %s\n\n", d.Runbook.Name)
	if d.Runbook.Description != "" {
		w.p("%s\n\n", d.Runbook.Description)
	}
	w.p("| | |\n|---|---|\n")
	w.p("| Runbook | `%s` (sha256 `%s`) |\n", d.Runbook.File, short(d.Runbook.SourceSHA256))
	w.p("| Steps | %d, in the order below |\n", len(d.Steps))
	var estimate float64
	for _, s := range d.Steps {
		estimate += s.EstimateSeconds
		if s.Items > 0 {
			w.p("| %s | %d %s |\n", s.Address, s.Items, itemsLabel(s))
		}
	}
	if estimate > 0 {
		w.p("| Estimated duration | about %s |\n", humanDuration(estimate))
	}
	if len(d.Targets) > 0 {
		w.p("| Targets | %s |\n", strings.Join(d.Targets, ", "))
	}
	w.p("| Risks | %d (see below) |\n", len(d.Risks))
	switch {
	case d.Runbook.AllowedSigners != "":
		w.p("| Approvals required | %d, each SSH-signed by a distinct key listed in `%s` |\n", d.Runbook.Approvals, d.Runbook.AllowedSigners)
	default:
		w.p("| Approvals required | %d |\n", d.Runbook.Approvals)
	}
	if d.MadeBy != "" {
		w.p("| Made by | %s (who cannot approve it) |\n", d.MadeBy)
	}
	w.p("| Fingerprint | `%s` |\n\n", d.Fingerprint)
}

// itemsLabel is what a step's items are called ("items" unless it says).
func itemsLabel(s PlanStepDoc) string {
	if s.ItemsLabel == "" {
		return "items"
	}
	return s.ItemsLabel
}

// whatWillChange lists each step's first action.
func (w *changeWriter) whatWillChange() {
	w.p("## What will change\n\n")
	for _, s := range w.d.Steps {
		if len(s.Actions) > 0 {
			w.p("- **%s**: %s\n", s.Address, s.Actions[0])
		}
	}
}

// stepsInOrder is one section per step: what it observed, what it will
// do, its items (the first changeListLimit, the rest in items/), its
// sections and its rollback.
func (w *changeWriter) stepsInOrder() {
	w.p("\n## Steps in execution order\n")
	for i, s := range w.d.Steps {
		w.p("\n### %d. `%s`\n\n", i+1, s.Address)
		if len(s.DependsOn) > 0 {
			w.p("After: %s\n\n", codeList(s.DependsOn))
		}
		w.bullets("Observed", s.Observed)
		w.bullets("Will do", s.Actions)
		var changes []string
		for _, c := range s.Changes {
			changes = append(changes, c.String())
		}
		w.bullets("Changes", changes)
		if s.Items > 0 {
			w.itemList(s)
		}
		for _, sec := range s.Sections {
			w.p("**%s**\n\n```\n%s\n```\n\n", sec.Title, preformatted(strings.TrimRight(sec.Body, "\n")))
		}
		if s.Rollback != "" {
			w.p("**Rollback**: %s\n\n", s.Rollback)
		}
	}
}

// itemList shows a step's items, at most changeListLimit of them, and
// links the full list in items/.
func (w *changeWriter) itemList(s PlanStepDoc) {
	list := w.items[strings.TrimPrefix(s.ItemsFile, itemsDir+"/")]
	shown := list
	if len(shown) > changeListLimit {
		shown = shown[:changeListLimit]
	}
	w.p("**%s (%d)**: %s", capitalise(itemsLabel(s)), s.Items, codeList(shown))
	if len(list) > len(shown) {
		w.p(" and %d more", len(list)-len(shown))
	}
	w.p(" — full list in [`%s`](%s)\n\n", s.ItemsFile, s.ItemsFile)
}

// verification lists what every step says will prove success.
func (w *changeWriter) verification() {
	w.p("## Verification that will prove success\n\n")
	n := 0
	for _, s := range w.d.Steps {
		for _, v := range s.Verification {
			w.p("- %s (`%s`)\n", v, s.Address)
			n++
		}
	}
	if n == 0 {
		w.p("- No step states a verification; each step's own checks apply.\n")
	}
}

// rollbackPath lists each step's undo, in reverse order.
func (w *changeWriter) rollbackPath() {
	w.p("\n## Rollback path\n\n`runbook rollback` undoes the steps in reverse order:\n\n")
	for i := len(w.d.Steps) - 1; i >= 0; i-- {
		s := w.d.Steps[i]
		rb := s.Rollback
		if rb == "" {
			rb = "nothing to undo"
		}
		w.p("1. `%s`: %s\n", s.Address, rb)
	}
}

func (w *changeWriter) risks() {
	w.p("\n## Risks\n\n")
	if len(w.d.Risks) == 0 {
		w.p("None found.\n")
	}
	for _, r := range w.d.Risks {
		w.p("- %s\n", r)
	}
}

// variables is the table of variable values, a sensitive one shown only
// as checked by hash.
func (w *changeWriter) variables() {
	w.p("\n## Variables\n\n| name | value |\n|---|---|\n")
	for _, v := range w.d.Variables {
		// Compact: read back from plan.json, which is indented, a list
		// value spans lines.
		var compact bytes.Buffer
		if json.Compact(&compact, v.Value) != nil {
			compact.Reset()
			compact.Write(v.Value)
		}
		val := "`" + strings.ReplaceAll(compact.String(), "|", "\\|") + "`"
		if v.Sensitive {
			val = Sensitive + " — checked by hash at apply"
		}
		w.p("| %s | %s |\n", v.Name, val)
	}
}

// bound lists what the fingerprint binds, and how to apply the plan.
func (w *changeWriter) bound() {
	d := w.d
	w.p("\n## Bound by the fingerprint\n\nThe runbook text, the variables, the tool's version (%s), what each step observed, and:\n\n", d.ToolVersion)
	for _, k := range sortedKeys(d.Inputs) {
		w.p("- %s (`%s`)\n", k, short(d.Inputs[k]))
	}
	if len(d.Inputs) == 0 {
		w.p("- no file or other observation beyond the steps' own\n")
	}
	w.p("\nApply exactly this plan with `runbook apply DIR`; it refuses if anything above changed.\n\nFingerprint: `%s`\n", d.Fingerprint)
}

// preformatted is text shown as a block of lines: its newlines are kept.
type preformatted string

// bullets is a titled list, escaped as everything p writes; nothing for
// no lines.
func (w *changeWriter) bullets(title string, lines []string) {
	if len(lines) == 0 {
		return
	}
	w.p("**%s**\n\n", title)
	for _, l := range lines {
		w.p("- %s\n", l)
	}
	w.p("\n")
}

func codeList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = "`" + s + "`"
	}
	return strings.Join(q, ", ")
}

func short(h string) string {
	h = strings.TrimPrefix(h, "sha256:")
	if len(h) > 16 {
		return h[:16]
	}
	return h
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func humanDuration(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d < time.Second:
		return "a second"
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Seconds()+0.5))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Minutes()+0.5))
	}
	return fmt.Sprintf("%.1f h", d.Hours())
}

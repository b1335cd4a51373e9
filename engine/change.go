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
	var b bytes.Buffer
	// Every string shown is escaped (Printable): names and observations come
	// from the systems the plan read, and must not be able to change how the
	// text around them reads on a terminal or in a Markdown viewer.
	p := func(format string, args ...any) {
		for i, a := range args {
			switch v := a.(type) {
			case string:
				args[i] = Printable(v)
			case preformatted:
				args[i] = PrintableLines(string(v))
			}
		}
		fmt.Fprintf(&b, format, args...)
	}
	p("# Change request: %s\n\n", d.Runbook.Name)
	if d.Runbook.Description != "" {
		p("%s\n\n", d.Runbook.Description)
	}
	p("| | |\n|---|---|\n")
	p("| Runbook | `%s` (sha256 `%s`) |\n", d.Runbook.File, short(d.Runbook.SourceSHA256))
	p("| Steps | %d, in the order below |\n", len(d.Steps))
	var estimate float64
	for _, s := range d.Steps {
		estimate += s.EstimateSeconds
		if s.Items > 0 {
			label := s.ItemsLabel
			if label == "" {
				label = "items"
			}
			p("| %s | %d %s |\n", s.Address, s.Items, label)
		}
	}
	if estimate > 0 {
		p("| Estimated duration | about %s |\n", humanDuration(estimate))
	}
	if len(d.Targets) > 0 {
		p("| Targets | %s |\n", strings.Join(d.Targets, ", "))
	}
	p("| Risks | %d (see below) |\n", len(d.Risks))
	switch {
	case d.Runbook.AllowedSigners != "":
		p("| Approvals required | %d, each SSH-signed by a distinct key listed in `%s` |\n", d.Runbook.Approvals, d.Runbook.AllowedSigners)
	default:
		p("| Approvals required | %d |\n", d.Runbook.Approvals)
	}
	if d.MadeBy != "" {
		p("| Made by | %s (who cannot approve it) |\n", d.MadeBy)
	}
	p("| Fingerprint | `%s` |\n\n", d.Fingerprint)

	p("## What will change\n\n")
	for _, s := range d.Steps {
		if len(s.Actions) > 0 {
			p("- **%s**: %s\n", s.Address, s.Actions[0])
		}
	}
	p("\n## Steps in execution order\n")
	for i, s := range d.Steps {
		p("\n### %d. `%s`\n\n", i+1, s.Address)
		if len(s.DependsOn) > 0 {
			p("After: %s\n\n", codeList(s.DependsOn))
		}
		bullets(&b, "Observed", s.Observed)
		bullets(&b, "Will do", s.Actions)
		if s.Items > 0 {
			label := s.ItemsLabel
			if label == "" {
				label = "items"
			}
			list := items[strings.TrimPrefix(s.ItemsFile, itemsDir+"/")]
			shown := list
			if len(shown) > changeListLimit {
				shown = shown[:changeListLimit]
			}
			p("**%s (%d)**: %s", capitalise(label), s.Items, codeList(shown))
			if len(list) > len(shown) {
				p(" and %d more", len(list)-len(shown))
			}
			p(" — full list in [`%s`](%s)\n\n", s.ItemsFile, s.ItemsFile)
		}
		for _, sec := range s.Sections {
			p("**%s**\n\n```\n%s\n```\n\n", sec.Title, preformatted(strings.TrimRight(sec.Body, "\n")))
		}
		if s.Rollback != "" {
			p("**Rollback**: %s\n\n", s.Rollback)
		}
	}
	p("## Verification that will prove success\n\n")
	n := 0
	for _, s := range d.Steps {
		for _, v := range s.Verification {
			p("- %s (`%s`)\n", v, s.Address)
			n++
		}
	}
	if n == 0 {
		p("- No step states a verification; each step's own checks apply.\n")
	}
	p("\n## Rollback path\n\n`runbook rollback` undoes the steps in reverse order:\n\n")
	for i := len(d.Steps) - 1; i >= 0; i-- {
		s := d.Steps[i]
		rb := s.Rollback
		if rb == "" {
			rb = "nothing to undo"
		}
		p("1. `%s`: %s\n", s.Address, rb)
	}
	p("\n## Risks\n\n")
	if len(d.Risks) == 0 {
		p("None found.\n")
	}
	for _, r := range d.Risks {
		p("- %s\n", r)
	}
	p("\n## Variables\n\n| name | value |\n|---|---|\n")
	for _, v := range d.Variables {
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
		p("| %s | %s |\n", v.Name, val)
	}
	p("\n## Bound by the fingerprint\n\nThe runbook text, the variables, the tool's version (%s), what each step observed, and:\n\n", d.ToolVersion)
	for _, k := range sortedKeys(d.Inputs) {
		p("- %s (`%s`)\n", k, short(d.Inputs[k]))
	}
	if len(d.Inputs) == 0 {
		p("- no file or other observation beyond the steps' own\n")
	}
	p("\nApply exactly this plan with `runbook apply DIR`; it refuses if anything above changed.\n\nFingerprint: `%s`\n", d.Fingerprint)
	return b.Bytes()
}

// preformatted is text shown as a block of lines: its newlines are kept.
type preformatted string

func bullets(b *bytes.Buffer, title string, lines []string) {
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(b, "**%s**\n\n", title)
	for _, l := range lines {
		fmt.Fprintf(b, "- %s\n", Printable(l))
	}
	b.WriteString("\n")
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

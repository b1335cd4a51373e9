package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
)

// writeDiags prints each diagnostic as file:line:col: severity: summary, then
// the source line with the subject underlined, then the detail.
func writeDiags(w io.Writer, files map[string]*hcl.File, diags hcl.Diagnostics, rd *engine.Redactor) {
	var buf bytes.Buffer
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		if d.Subject == nil {
			fmt.Fprintf(&buf, "runbook: %s: %s\n", sev, d.Summary)
		} else {
			s := d.Subject
			fmt.Fprintf(&buf, "%s:%d:%d: %s: %s\n", s.Filename, s.Start.Line, s.Start.Column, sev, d.Summary)
			if f := files[s.Filename]; f != nil && f.Bytes != nil {
				writeSnippet(&buf, f.Bytes, *s)
			}
		}
		if d.Detail != "" {
			fmt.Fprintf(&buf, "    %s\n", strings.ReplaceAll(d.Detail, "\n", "\n    "))
		}
		buf.WriteByte('\n')
	}
	text := buf.String()
	if rd != nil {
		text = rd.String(text)
	}
	io.WriteString(w, text)
}

func writeSnippet(w io.Writer, src []byte, rng hcl.Range) {
	sc := bufio.NewScanner(bytes.NewReader(src))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for line := 1; sc.Scan(); line++ {
		if line != rng.Start.Line {
			continue
		}
		text := strings.ReplaceAll(sc.Text(), "\t", " ")
		fmt.Fprintf(w, "%5d | %s\n", line, text)
		start := rng.Start.Column - 1
		end := len(text)
		if rng.End.Line == rng.Start.Line {
			end = rng.End.Column - 1
		}
		if start < 0 || start > len(text) {
			return
		}
		if end <= start {
			end = start + 1
		}
		if end > len(text) {
			end = len(text)
		}
		fmt.Fprintf(w, "      | %s%s\n", strings.Repeat(" ", start), strings.Repeat("^", max(1, end-start)))
		return
	}
}

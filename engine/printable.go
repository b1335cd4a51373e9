package engine

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable returns s with every character that could change how a terminal
// or a Markdown viewer shows the text around it escaped, Go-style: control
// characters including newlines (\n, \x1b), Unicode format characters such
// as bidirectional overrides (\u202e) and invalid UTF-8 (\xff). Text that
// comes from outside the runbook (an approver's name or comment, a key name
// a server listed, anything read back from a plan directory) is printed
// through it, so that it cannot paint over what runbook itself prints.
func Printable(s string) string { return escapeText(s, false) }

// PrintableLines is Printable for text that is meant to span lines (a
// preformatted section): newlines are kept, everything else is escaped.
func PrintableLines(s string) string { return escapeText(s, true) }

func escapeText(s string, keepNewlines bool) string {
	clean := true
	for _, r := range s {
		if needsEscape(r, keepNewlines) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n' && !keepNewlines:
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case needsEscape(r, keepNewlines) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case needsEscape(r, keepNewlines):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func needsEscape(r rune, keepNewlines bool) bool {
	switch {
	case r == '\t', r == '\n' && keepNewlines:
		return false
	case r == utf8.RuneError:
		return true // also a literal U+FFFD: shown escaped, which is harmless
	}
	return unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029'
}

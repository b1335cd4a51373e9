package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// renderings are the ways a secret reaches output, files and the journal:
// each returns what would be written, given a redactor that knows the
// secret. They pass the value through the engine's own output paths.
var renderings = map[string]func(rd *Redactor, secret string) string{
	"human output": func(rd *Redactor, s string) string {
		var b bytes.Buffer
		em := emitter{out: &HumanOutput{W: &b}, rd: rd}
		em.emit(Event{Type: EventState, Step: "exec.x", State: StateFailed, Message: "token " + s, Error: fmt.Errorf("run %q: %w", s, errors.New("exit 1")).Error()})
		em.emit(Event{Type: EventPlan, Step: "exec.x", Details: []string{"will: run [" + strconv.Quote(s) + "]", "env:\n" + s + "\n"}})
		return b.String()
	},
	"-json output": func(rd *Redactor, s string) string {
		var b bytes.Buffer
		em := emitter{out: &JSONOutput{W: &b}, rd: rd}
		em.emit(Event{Type: EventLog, Step: "exec.x", Message: "line: " + s, Details: []string{s}})
		return b.String()
	},
	"journal data (JSON, then redacted)": func(rd *Redactor, s string) string {
		raw, _ := json.Marshal(map[string]any{"stdout": s + "\n", "argv": []string{"--password=" + s}})
		return rd.String(string(raw))
	},
	"plan.json (JSON without HTML escaping)": func(rd *Redactor, s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(map[string]string{"action": "run " + s})
		return rd.String(b.String())
	},
	"error wrapping": func(rd *Redactor, s string) string {
		err := fmt.Errorf("apply exec.x: %w", fmt.Errorf("program %q: %w", s, errors.New("not found")))
		return rd.String(err.Error())
	},
	"HCL source line": func(rd *Redactor, s string) string {
		return rd.String(`  password = "` + hclInner(s) + `"`)
	},
	"URL": func(rd *Redactor, s string) string {
		u := url.URL{Scheme: "https", User: url.UserPassword("admin", s), Host: "kms.example.net", Path: "/" + s, RawQuery: url.Values{"t": {s}}.Encode()}
		return rd.String(u.String())
	},
	"streamed exec output, in pieces": func(rd *Redactor, s string) string {
		var b bytes.Buffer
		w := rd.Writer(&b)
		text := "before\n" + s + "\r\nbetween " + strings.ReplaceAll(s, "\n", "\r\n") + " after\n"
		for i := 0; i < len(text); {
			n := 1 + (i*7+len(s))%5 // uneven pieces, some inside the secret
			w.Write([]byte(text[i:min(len(text), i+n)]))
			i += n
		}
		w.Close()
		return b.String()
	},
}

// FuzzRedact renders random secrets through every output path and checks that
// no form of the secret (Forms: as given, quoted, JSON-, HCL- and URL-escaped,
// CRLF) is left in what would be written. Secrets are wrapped in "Q9…9Q" so
// that a form cannot be text of the rendering itself or of "(sensitive)".
func FuzzRedact(f *testing.F) {
	for _, s := range []string{`pa"ss\word`, "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN\nBgkqhkiG9w0B\n-----END PRIVATE KEY-----\n", "a\tb\x1bc", "€ uni ${x} %{y}", "<&>", "", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		if !utf8.ValidString(body) {
			body = strings.ToValidUTF8(body, "?")
		}
		secret := "Q9" + body + "9Q"
		rd := &Redactor{}
		rd.Add(secret)
		for name, render := range renderings {
			out := render(rd, secret)
			for _, form := range Forms(secret) {
				if strings.Contains(out, form) {
					t.Fatalf("%s: the secret %q is shown as %q in:\n%s", name, secret, form, out)
				}
			}
		}
	})
}

// TestRedactWriterHoldsOnlyAPrefix: the streaming writer passes text on as
// soon as it cannot be the beginning of a secret, so a line shows when it is
// written, not when the next one comes.
func TestRedactWriterHoldsOnlyAPrefix(t *testing.T) {
	rd := &Redactor{}
	rd.Add("hunter2-secret")
	var b bytes.Buffer
	w := rd.Writer(&b)
	w.Write([]byte("waiting for the node\n"))
	if got := b.String(); got != "waiting for the node\n" {
		t.Fatalf("after one line: %q written", got)
	}
	w.Write([]byte("key: hunt"))
	if got := b.String(); got != "waiting for the node\nkey: " {
		t.Fatalf("with a secret's beginning pending: %q written", got)
	}
	w.Write([]byte("er2-secret\n"))
	w.Close()
	if got := b.String(); got != "waiting for the node\nkey: (sensitive)\n" {
		t.Fatalf("got %q", got)
	}
}

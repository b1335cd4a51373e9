package engine

import (
	"encoding/json"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Sensitive is the text that stands for a secret wherever one would appear.
const Sensitive = "(sensitive)"

// Redactor replaces every registered secret with "(sensitive)". Every byte the
// engine writes outside secrets/ and backups/ (output, logs, journal records,
// plans) passes through one: marks on values protect evaluation, this protects
// text that a step or a child process produced.
//
// A secret is registered with every form in which text may carry it (Forms):
// as given, escaped inside a Go or JSON string (with and without HTML
// escaping), inside an HCL string, inside a URL, and for a multi-line secret
// with CRLF line ends. Text is redacted as a whole, never line by line, so a
// multi-line secret (a PEM key) is found across its lines.
type Redactor struct {
	mu      sync.RWMutex
	secrets map[string]bool
	// byFirst indexes every form by its first byte, longest first, so that
	// at each position the longest form wins (a secret containing another is
	// replaced whole). An array, not a map: every byte of every output line
	// and journal record is looked up (a map's hash was 0.2 s of CPU in an
	// apply of 100,000 keys).
	byFirst *[256][]string
	maxLen  int
}

// minSecretLen keeps a one-character "secret" from redacting all output.
const minSecretLen = 4

// Add registers secret values.
func (rd *Redactor) Add(values ...string) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < minSecretLen || rd.secrets[v] {
			continue
		}
		if rd.secrets == nil {
			rd.secrets, rd.byFirst = map[string]bool{}, new([256][]string)
		}
		rd.secrets[v] = true
		for _, f := range Forms(v) {
			list := rd.byFirst[f[0]]
			if !contains(list, f) {
				list = append(list, f)
				sort.SliceStable(list, func(i, j int) bool { return len(list[i]) > len(list[j]) })
				rd.byFirst[f[0]] = list
			}
			rd.maxLen = max(rd.maxLen, len(f))
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Forms returns the renderings of secret that text may carry, secret first:
// the escaped forms are those of the inside of a quoted Go, JSON (Go's
// encoding/json, with and without HTML escaping) or HCL string, of a URL's
// password, query or path, and, for a multi-line secret, its CRLF form. Each
// is at least minSecretLen long; duplicates are left out.
func Forms(secret string) []string {
	forms := []string{secret}
	add := func(f string) {
		if len(f) >= minSecretLen && !contains(forms, f) {
			forms = append(forms, f)
		}
	}
	q := strconv.Quote(secret)
	add(q[1 : len(q)-1])
	q = strconv.QuoteToASCII(secret)
	add(q[1 : len(q)-1])
	add(jsonInner(secret, true))
	add(jsonInner(secret, false))
	add(hclInner(secret))
	add(strings.TrimPrefix(url.UserPassword("u", secret).String(), "u:"))
	add(url.QueryEscape(secret))
	add(url.PathEscape(secret))
	if strings.Contains(secret, "\n") {
		crlf := strings.ReplaceAll(secret, "\n", "\r\n")
		add(crlf)
		q = strconv.Quote(crlf)
		add(q[1 : len(q)-1])
		add(jsonInner(crlf, true))
	}
	return forms
}

func jsonInner(s string, html bool) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(html)
	enc.Encode(s)
	out := strings.TrimSuffix(b.String(), "\n")
	return out[1 : len(out)-1]
}

// hclInner is s as written inside an HCL quoted string (hclwrite's escaping).
func hclInner(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "\t", `\t`, "${", "$${", "%{", "%%{")
	return r.Replace(s)
}

// String returns s with every form of every secret replaced.
func (rd *Redactor) String(s string) string {
	if rd == nil {
		return s
	}
	rd.mu.RLock()
	defer rd.mu.RUnlock()
	if rd.byFirst == nil {
		return s
	}
	out, _ := rd.scan(s, true)
	return out
}

// Contains reports whether s holds any form of a registered secret.
func (rd *Redactor) Contains(s string) bool {
	if rd == nil {
		return false
	}
	rd.mu.RLock()
	defer rd.mu.RUnlock()
	if rd.byFirst == nil {
		return false
	}
	for i := 0; i < len(s); i++ {
		if rd.match(s[i:]) > 0 {
			return true
		}
	}
	return false
}

// scan redacts s from its start. Unless final, it stops where the rest of s
// could be the beginning of a secret that more text would complete, and
// returns how much of s it consumed; the caller keeps the rest.
func (rd *Redactor) scan(s string, final bool) (string, int) {
	if rd.byFirst == nil {
		return s, len(s) // no secret yet
	}
	var out strings.Builder // written only once a secret is found
	last := 0
	i := 0
	for i < len(s) {
		if n := rd.match(s[i:]); n > 0 {
			out.WriteString(s[last:i])
			out.WriteString(Sensitive)
			i += n
			last = i
			continue
		}
		if !final && len(s)-i < rd.maxLen && rd.partial(s[i:]) {
			break
		}
		i++
	}
	if last == 0 {
		return s[:i], i
	}
	out.WriteString(s[last:i])
	return out.String(), i
}

// match returns the length of the longest form that s begins with, or 0.
func (rd *Redactor) match(s string) int {
	for _, f := range rd.byFirst[s[0]] {
		if strings.HasPrefix(s, f) {
			return len(f)
		}
	}
	return 0
}

// partial reports whether s is the beginning of a longer form.
func (rd *Redactor) partial(s string) bool {
	for _, f := range rd.byFirst[s[0]] {
		if len(f) > len(s) && strings.HasPrefix(f, s) {
			return true
		}
	}
	return false
}

// Writer returns a writer that redacts what passes through it to w as one
// text: it holds back only what could be the beginning of a secret that the
// next write completes, so a secret split across writes, or across lines,
// is still found. Close (or Flush) writes what it holds.
func (rd *Redactor) Writer(w io.Writer) *RedactWriter {
	return &RedactWriter{rd: rd, w: w}
}

// RedactWriter is the io.Writer returned by Redactor.Writer.
type RedactWriter struct {
	mu  sync.Mutex
	rd  *Redactor
	w   io.Writer
	buf []byte
}

func (rw *RedactWriter) Write(p []byte) (int, error) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	rw.buf = append(rw.buf, p...)
	rw.rd.mu.RLock()
	out, n := rw.rd.scan(string(rw.buf), false)
	rw.rd.mu.RUnlock()
	rw.buf = append(rw.buf[:0], rw.buf[n:]...)
	if out == "" {
		return len(p), nil
	}
	if _, err := io.WriteString(rw.w, out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what the writer holds back, redacted.
func (rw *RedactWriter) Flush() error {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	if len(rw.buf) == 0 {
		return nil
	}
	out := rw.rd.String(string(rw.buf))
	rw.buf = rw.buf[:0]
	_, err := io.WriteString(rw.w, out)
	return err
}

// Close flushes the writer.
func (rw *RedactWriter) Close() error { return rw.Flush() }

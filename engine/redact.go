package engine

import (
	"io"
	"sort"
	"strings"
	"sync"
)

// Sensitive is the text that stands for a secret wherever one would appear.
const Sensitive = "(sensitive)"

// Redactor replaces every registered secret with "(sensitive)". Every byte the
// engine writes outside secrets/ and backups/ (output, logs, journal records,
// plans) passes through one: marks on values protect evaluation, this protects
// text that a step or a child process produced.
type Redactor struct {
	mu      sync.RWMutex
	secrets []string // longest first, so a secret containing another is replaced whole
	r       *strings.Replacer
}

// minSecretLen keeps a one-character "secret" from redacting all output.
const minSecretLen = 4

// Add registers secret values.
func (rd *Redactor) Add(values ...string) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	changed := false
	for _, v := range values {
		v = strings.TrimSpace(v)
		if len(v) < minSecretLen || rd.has(v) {
			continue
		}
		rd.secrets = append(rd.secrets, v)
		changed = true
	}
	if !changed {
		return
	}
	sort.Slice(rd.secrets, func(i, j int) bool { return len(rd.secrets[i]) > len(rd.secrets[j]) })
	pairs := make([]string, 0, 2*len(rd.secrets))
	for _, s := range rd.secrets {
		pairs = append(pairs, s, Sensitive)
	}
	rd.r = strings.NewReplacer(pairs...)
}

func (rd *Redactor) has(v string) bool {
	for _, s := range rd.secrets {
		if s == v {
			return true
		}
	}
	return false
}

// String returns s with every secret replaced.
func (rd *Redactor) String(s string) string {
	if rd == nil {
		return s
	}
	rd.mu.RLock()
	r := rd.r
	rd.mu.RUnlock()
	if r == nil {
		return s
	}
	return r.Replace(s)
}

// Writer returns a writer that redacts line by line before writing to w.
// Lines are buffered until their newline so a secret split across two writes
// is still caught; Close (or Flush) writes what remains.
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
	i := strings.LastIndexByte(string(rw.buf), '\n')
	if i < 0 {
		if len(rw.buf) < 64<<10 {
			return len(p), nil
		}
		i = len(rw.buf) - 1 // a very long line: write it rather than grow without bound
	}
	out := rw.rd.String(string(rw.buf[:i+1]))
	rw.buf = append(rw.buf[:0], rw.buf[i+1:]...)
	if _, err := io.WriteString(rw.w, out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes any unterminated last line.
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

package engine

import (
	"errors"
	"slices"
)

// WithHint attaches a hint to err: what the operator can do about it. The
// error's text stays what failed; the hint is printed apart, on its own
// line ("runbook: hint: …" by the CLI, "hint: …" under a step's failure or
// plan), as age's errorWithHint does. An error keeps its hints through
// fmt.Errorf("…: %w") and errors.Join. WithHint(nil, …) is nil.
func WithHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hintError{err: err, hint: hint}
}

type hintError struct {
	err  error
	hint string
}

func (e *hintError) Error() string { return e.err.Error() }
func (e *hintError) Unwrap() error { return e.err }

// Hints returns the hints attached to err and to every error it wraps, in
// the order they were attached (innermost first), each once.
func Hints(err error) []string {
	var hints []string
	seen := map[string]bool{}
	var walk func(error)
	walk = func(err error) {
		for err != nil {
			if h, ok := err.(*hintError); ok && !seen[h.hint] {
				seen[h.hint] = true
				hints = append(hints, h.hint)
			}
			if multi, ok := err.(interface{ Unwrap() []error }); ok {
				for _, e := range multi.Unwrap() {
					walk(e)
				}
				return
			}
			err = errors.Unwrap(err)
		}
	}
	walk(err)
	slices.Reverse(hints)
	return hints
}

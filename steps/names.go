package steps

import (
	"fmt"
	"slices"
)

// Names: the sets of key names, identities and objects that steps compare
// and show. The one set difference and the one "N more" list are
// keystore.Diff and keystore.NameList.

// setOf is names as a set.
func setOf(names []string) map[string]bool {
	s := make(map[string]bool, len(names))
	for _, n := range names {
		s[n] = true
	}
	return s
}

// nameIntersect returns the names in both, sorted, each once.
func nameIntersect(a, b []string) []string {
	in := make(map[string]bool, len(b))
	for _, n := range b {
		in[n] = true
	}
	var out []string
	for _, n := range a {
		if in[n] {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// plural renders a count with its noun.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

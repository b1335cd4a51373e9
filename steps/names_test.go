package steps

import (
	"slices"
	"testing"

	"github.com/runbook-dev/runbook/internal/keystore"
)

func TestNameDiff(t *testing.T) {
	t.Parallel()
	missing, extra := keystore.Diff([]string{"a", "b", "c", "d"}, []string{"d", "b", "x", "a"})
	if !slices.Equal(missing, []string{"c"}) || !slices.Equal(extra, []string{"x"}) {
		t.Fatalf("missing %q extra %q, want [c] [x]", missing, extra)
	}
	missing, extra = keystore.Diff([]string{"a"}, []string{"a"})
	if missing != nil || extra != nil {
		t.Fatalf("equal sets: missing %q extra %q", missing, extra)
	}
	if got := nameIntersect([]string{"c", "a", "b"}, []string{"b", "c", "z"}); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("intersect = %q", got)
	}
}

func TestNameList(t *testing.T) {
	t.Parallel()
	if got := keystore.NameList(nil, 3); got != "none" {
		t.Fatalf("empty = %q", got)
	}
	if got := keystore.NameList([]string{"a", "b"}, 3); got != "a, b" {
		t.Fatalf("short = %q", got)
	}
	if got := keystore.NameList([]string{"a", "b", "c", "d", "e"}, 3); got != "a, b, c and 2 more" {
		t.Fatalf("long = %q", got)
	}
}

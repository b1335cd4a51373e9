package keystore

import (
	"strings"
	"testing"
)

// TestSameNamesNamesTheDifference: a listing that differs from the
// directory is refused naming each name on each side, never only counts.
func TestSameNamesNamesTheDifference(t *testing.T) {
	err := SameNames("the key store's listing", []string{"a", "b", "c"}, "directory /keys", []string{"a", "c", "d"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"only in the key store's listing: b", "only in directory /keys: d", "refusing"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%v: want %q", err, s)
		}
	}
	if err := SameNames("x", []string{"a"}, "y", []string{"a"}); err != nil {
		t.Errorf("equal lists: %v", err)
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"key-1": true, "A_b-9": true, "_x": true, strings.Repeat("a", 80): true,
		"": false, "_": false, "-a": false, "a-": false, "a.b": false, "a~": false,
		"lost+found": false, "a/b": false, strings.Repeat("a", 81): false,
	} {
		if ValidName(name) != ok {
			t.Errorf("ValidName(%q) = %v, want %v", name, !ok, ok)
		}
	}
}

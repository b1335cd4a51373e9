package keystore

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/runbook-dev/runbook/internal/kescrypto"
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

// Classify reads each name once per process when given the same Verdicts:
// a later listing reads only the names it has not judged.
func TestClassifyRemembers(t *testing.T) {
	k, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string][]byte{"key-1": k, "app": []byte(`{"password":"x"}`), "key-2": k}
	var mu sync.Mutex
	reads := map[string]int{}
	read := func(_ context.Context, name string) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		reads[name]++
		return slices.Clone(values[name]), nil
	}
	var v Verdicts
	for round, names := range [][]string{{"app", "key-1"}, {"app", "key-1", "key-2"}} {
		l := &Listing{Keys: names}
		if err := l.Classify(context.Background(), read, 4, &v); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(l.Foreign, []string{"app"}) || slices.Contains(l.Keys, "app") {
			t.Errorf("round %d: keys %q, foreign %q", round, l.Keys, l.Foreign)
		}
	}
	if reads["app"] != 1 || reads["key-1"] != 1 || reads["key-2"] != 1 {
		t.Errorf("reads: %v; want each name read once", reads)
	}
	// What a plan counts without reading again, and nothing of the value.
	if f, ok := v.Facts("key-1"); !ok || f != (Facts{Class: ClassKey, Format: FormatV024, Algorithm: kescrypto.AES256, HMAC: true}) {
		t.Errorf("facts of key-1: %+v, %v", f, ok)
	}
	if f, ok := v.Facts("app"); !ok || f.Class != ClassForeign {
		t.Errorf("facts of app: %+v, %v", f, ok)
	}
	if _, ok := v.Facts("unread"); ok {
		t.Error("facts of a name never read")
	}
}

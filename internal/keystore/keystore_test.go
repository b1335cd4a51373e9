package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// Under Hold, Classify keeps the value of every KES key it reads, and only
// of keys (never another application's secret, nor a broken key), within
// the budget, with the key KES's parser made of it; Held and HeldKey give
// copies (HeldKey only for the same bytes); Release wipes them all.
func TestClassifyHoldsKeyValues(t *testing.T) {
	key := func(b byte) []byte {
		k, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: bytes.Repeat([]byte{b}, 32), HMAC: bytes.Repeat([]byte{b + 100}, 32)}.MarshalV024()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	values := map[string][]byte{"key-1": key(1), "key-2": key(2), "key-3": key(3), "app": []byte(`{"password":"x"}`), "cut": []byte(`{"bytes":"AAA`)}
	read := func(_ context.Context, name string) ([]byte, error) { return slices.Clone(values[name]), nil }
	// Room for two keys' values.
	v := Verdicts{budget: 2 * (len("key-1") + len(values["key-1"]) + 2*32 + heldOverhead)}
	l := &Listing{Keys: []string{"app", "cut", "key-1"}}
	if err := l.Classify(context.Background(), read, 1, &v); err != nil {
		t.Fatal(err)
	}
	if v.Held("key-1") != nil {
		t.Error("a value held before Hold")
	}
	v.Hold()
	l = &Listing{Keys: []string{"app", "cut", "key-1", "key-2", "key-3"}}
	if err := l.Classify(context.Background(), read, 1, &v); err != nil {
		t.Fatal(err)
	}
	if got := v.Held("key-2"); !bytes.Equal(got, values["key-2"]) {
		t.Errorf("Held(key-2) = %q, want the value read", got)
	}
	if v.Held("key-3") == nil {
		t.Error("key-3 not held: room for it was left")
	}
	for _, name := range []string{"app", "cut", "key-1"} {
		if v.Held(name) != nil {
			t.Errorf("Held(%s) holds a value: another application's secret, a broken key, or a key judged before Hold", name)
		}
	}
	v.Hold() // a fourth key is past the budget
	values["key-4"] = key(4)
	if err := (&Listing{Keys: []string{"key-4"}}).Classify(context.Background(), read, 1, &v); err != nil {
		t.Fatal(err)
	}
	if v.Held("key-4") != nil {
		t.Error("key-4 held past the budget")
	}
	copied := v.Held("key-2")
	clear(copied)
	if !bytes.Equal(v.Held("key-2"), values["key-2"]) {
		t.Error("wiping Held's answer wiped the held value")
	}
	for _, raw := range [][]byte{nil, slices.Clone(values["key-2"])} {
		k, format, ok := v.HeldKey("key-2", raw)
		if !ok || format != FormatV024 || !bytes.Equal(k.Material, bytes.Repeat([]byte{2}, 32)) || len(k.HMAC) != 32 || k.Algorithm != kescrypto.AES256 {
			t.Errorf("HeldKey(key-2, %d bytes) = %v %q %v, want the key parsed from its value", len(raw), k.Algorithm, format, ok)
		}
		clear(k.Material)
	}
	if k, _, _ := v.HeldKey("key-2", nil); !bytes.Equal(k.Material, bytes.Repeat([]byte{2}, 32)) {
		t.Error("wiping HeldKey's answer wiped the held key")
	}
	if _, _, ok := v.HeldKey("key-2", values["key-3"]); ok {
		t.Error("HeldKey answered for bytes other than the held value's")
	}
	for _, name := range []string{"app", "cut", "key-1", "key-4"} {
		if _, _, ok := v.HeldKey(name, nil); ok {
			t.Errorf("HeldKey(%s) answered for a value not held", name)
		}
	}
	held := v.held["key-2"]
	v.Release()
	if v.Held("key-2") != nil || v.Held("key-3") != nil {
		t.Error("a value held after Release")
	}
	if _, _, ok := v.HeldKey("key-2", nil); ok {
		t.Error("a key held after Release")
	}
	for _, b := range [][]byte{held.raw, held.key.Material, held.key.HMAC} {
		if len(b) == 0 || !bytes.Equal(b, make([]byte, len(b))) {
			t.Error("Release left a held value or its material in memory")
		}
	}
	if f, ok := v.Facts("key-2"); !ok || f.Class != ClassKey {
		t.Errorf("facts of key-2 after Release: %+v, %v", f, ok)
	}
}

// Two Classify calls at once with the same Verdicts (the plans of two steps)
// read each name once: one waits for the other's verdict; and a name whose
// read failed in one is read again by the other.
func TestClassifyAtOnceReadsOnce(t *testing.T) {
	k, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i := range 200 {
		names = append(names, fmt.Sprintf("key-%03d", i))
	}
	var mu sync.Mutex
	reads := map[string]int{}
	var now, most int // reads under way: more than one Classify's 4 proves they overlapped
	read := func(_ context.Context, name string) ([]byte, error) {
		mu.Lock()
		reads[name]++
		n := reads[name]
		now++
		most = max(most, now)
		mu.Unlock()
		time.Sleep(time.Millisecond)
		mu.Lock()
		now--
		mu.Unlock()
		if name == "key-007" && n == 1 {
			return nil, errors.New("connection reset")
		}
		return slices.Clone(k), nil
	}
	var v Verdicts
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() { errs[i] = (&Listing{Keys: slices.Clone(names)}).Classify(context.Background(), read, 4, &v) })
	}
	wg.Wait()
	if most <= 4 {
		t.Fatalf("at most %d reads at once: the two Classify calls did not overlap", most)
	}
	if (errs[0] == nil) == (errs[1] == nil) {
		t.Fatalf("errors %v, %v: want the failed read to fail one Classify, and the other to read the name itself", errs[0], errs[1])
	}
	for _, n := range names {
		want := 1
		if n == "key-007" {
			want = 2
		}
		if reads[n] != want {
			t.Errorf("%s read %d times, want %d", n, reads[n], want)
		}
		if f, ok := v.Facts(n); !ok || f.Class != ClassKey {
			t.Errorf("facts of %s: %+v, %v", n, f, ok)
		}
	}
}

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
// the budget, with the key KES's parser made of it; Held, HeldKey and
// HeldKeyOf give copies (HeldKeyOf only for the same bytes); Release wipes
// them all.
func TestClassifyHoldsKeyValues(t *testing.T) {
	key := func(b byte) []byte {
		k, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: bytes.Repeat([]byte{b}, 32), HMAC: bytes.Repeat([]byte{b + 100}, 32)}.MarshalV024()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	json023 := func(b byte) []byte { // KES v0.22/v0.23: no HMAC key
		k, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: bytes.Repeat([]byte{b}, 32)}.MarshalV023()
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	values := map[string][]byte{"key-1": key(1), "key-2": key(2), "key-3": json023(3), "app": []byte(`{"password":"x"}`), "cut": []byte(`{"bytes":"AAA`)}
	read := func(_ context.Context, name string) ([]byte, error) { return slices.Clone(values[name]), nil }
	// Room for key-2 and key-3 and not one byte more: what keep counts.
	v := Verdicts{budget: len("key-2") + len(values["key-2"]) + 2*32 + heldOverhead + len("key-3") + len(values["key-3"]) + 32 + heldOverhead}
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
	heldKeys := map[string]func() (kescrypto.Key, string, bool){
		"HeldKey":   func() (kescrypto.Key, string, bool) { return v.HeldKey("key-2") },
		"HeldKeyOf": func() (kescrypto.Key, string, bool) { return v.HeldKeyOf("key-2", slices.Clone(values["key-2"])) },
	}
	for what, heldKey := range heldKeys {
		k, format, ok := heldKey()
		if !ok || format != FormatV024 || k.Algorithm != kescrypto.AES256 || !bytes.Equal(k.Material, bytes.Repeat([]byte{2}, 32)) || !bytes.Equal(k.HMAC, bytes.Repeat([]byte{102}, 32)) {
			t.Errorf("%s(key-2) = %v %q %v, want the key parsed from its value", what, k.Algorithm, format, ok)
		}
		clear(k.Material)
		clear(k.HMAC)
		if k, _, _ := heldKey(); !bytes.Equal(k.Material, bytes.Repeat([]byte{2}, 32)) || !bytes.Equal(k.HMAC, bytes.Repeat([]byte{102}, 32)) {
			t.Errorf("wiping %s's answer wiped the held key", what)
		}
	}
	if k, format, ok := v.HeldKey("key-3"); !ok || format != FormatV023 || k.HMAC != nil || !bytes.Equal(k.Material, bytes.Repeat([]byte{3}, 32)) {
		t.Errorf("HeldKey(key-3) = %q %v, HMAC %v: want the v0.23 key, without an HMAC key", format, ok, k.HMAC)
	}
	for _, raw := range [][]byte{values["key-3"], nil, {}} {
		if _, _, ok := v.HeldKeyOf("key-2", raw); ok {
			t.Errorf("HeldKeyOf(key-2) answered for %d other bytes (an emptied entry reads as none)", len(raw))
		}
	}
	for _, name := range []string{"app", "cut", "key-1", "key-4"} {
		if _, _, ok := v.HeldKey(name); ok {
			t.Errorf("HeldKey(%s) answered for a value not held", name)
		}
	}
	held := v.held["key-2"]
	v.Release()
	if v.Held("key-2") != nil || v.Held("key-3") != nil {
		t.Error("a value held after Release")
	}
	if _, _, ok := v.HeldKey("key-2"); ok {
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

	// The budget counts name, value, material, HMAC key and the overhead:
	// a byte less and the key is not held.
	size := len("key-2") + len(values["key-2"]) + 2*32 + heldOverhead
	for budget, wantHeld := range map[int]bool{size: true, size - 1: false} {
		w := Verdicts{budget: budget}
		w.Hold()
		if err := (&Listing{Keys: []string{"key-2"}}).Classify(context.Background(), read, 1, &w); err != nil {
			t.Fatal(err)
		}
		if held := w.Held("key-2") != nil; held != wantHeld {
			t.Errorf("budget %d for a key that costs %d: held %v", budget, size, held)
		}
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

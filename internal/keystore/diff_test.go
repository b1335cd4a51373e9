package keystore

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestDiffSortedAsSets: two sorted lists (every listing is), walked side by
// side, give what the sets of their names give, for lists with repeated
// names, empty ones and names one side lacks at either end; an unsorted
// list gives the same answer as its sorted copy.
func TestDiffSortedAsSets(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	list := func() []string {
		var l []string
		for range rng.IntN(12) {
			l = append(l, fmt.Sprintf("k%d", rng.IntN(10)))
		}
		return l
	}
	bySets := func(a, b []string) (onlyA, onlyB []string) {
		inA, inB := map[string]bool{}, map[string]bool{}
		for _, n := range a {
			inA[n] = true
		}
		for _, n := range b {
			inB[n] = true
		}
		for n := range inA {
			if !inB[n] {
				onlyA = append(onlyA, n)
			}
		}
		for n := range inB {
			if !inA[n] {
				onlyB = append(onlyB, n)
			}
		}
		slices.Sort(onlyA)
		slices.Sort(onlyB)
		return onlyA, onlyB
	}
	for range 2000 {
		a, b := list(), list()
		wantA, wantB := bySets(a, b)
		gotA, gotB := Diff(a, b) // as given: mostly unsorted
		sa, sb := slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b))
		sortedA, sortedB := Diff(sa, sb)
		for _, c := range []struct {
			what      string
			got, want []string
		}{{"only in a", gotA, wantA}, {"only in b", gotB, wantB}, {"only in a, sorted", sortedA, wantA}, {"only in b, sorted", sortedB, wantB}} {
			if !slices.Equal(c.got, c.want) {
				t.Fatalf("Diff(%q, %q): %s: got %q, want %q", a, b, c.what, c.got, c.want)
			}
		}
	}
}

package steps

import (
	"errors"
	"slices"
	"testing"
)

// TestFreshServed pins which listing of the KES server's names the
// verification judges: its own as it is; the plan's as it is when it agrees
// with the store, and listed again when it has a name the store no longer
// holds (a key deleted at KES since) or failed (KES restarted meanwhile).
func TestFreshServed(t *testing.T) {
	t.Parallel()
	stored := []string{"a", "b"}
	fresh := servedNames{names: []string{"a", "b"}}
	cases := []struct {
		name       string
		pattern    string
		res        servedNames
		byPlan     bool
		wantRelist bool
		wantWhy    string
		wantByPlan bool
	}{
		{"own listing with an extra name is judged as it is", "*", servedNames{names: []string{"a", "b", "gone"}}, false, false, "", false},
		{"own listing that failed is judged as it is", "*", servedNames{err: errors.New("boom")}, false, false, "", false},
		{"plan's listing that agrees is taken", "*", servedNames{names: []string{"a", "b"}}, true, false, "", true},
		{"plan's listing with fewer names is taken", "*", servedNames{names: []string{"a"}}, true, false, "", true},
		{"plan's listing with a name the store lacks is listed again", "*", servedNames{names: []string{"a", "b", "gone"}}, true, true, "1 name(s) listed while the plan ran are not in the key store (gone)", false},
		{"plan's listing that failed is listed again", "*", servedNames{err: errors.New("connection refused")}, true, true, "the listing the plan started failed (connection refused)", false},
		{"names outside the pattern do not count", "[ab]*", servedNames{names: []string{"a", "b", "other-x"}}, true, false, "", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			relisted := false
			got, why := freshServed(c.res, c.byPlan, stored, c.pattern, func() servedNames {
				relisted = true
				return fresh
			})
			if relisted != c.wantRelist {
				t.Fatalf("listed again = %v, want %v", relisted, c.wantRelist)
			}
			if why != c.wantWhy {
				t.Errorf("why = %q, want %q", why, c.wantWhy)
			}
			if got.byPlan != c.wantByPlan {
				t.Errorf("byPlan = %v, want %v", got.byPlan, c.wantByPlan)
			}
			if c.wantRelist && !slices.Equal(got.names, fresh.names) {
				t.Errorf("judged %q, not the new listing", got.names)
			}
			if !c.wantRelist && !slices.Equal(got.names, c.res.names) {
				t.Errorf("judged %q, not the listing given", got.names)
			}
		})
	}
}

package steps

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/parallel"
)

// kesListFunc lists the keys of a KES server whose names start with prefix
// ("*" for all), as its /v1/key/list API does: at most about 1024 names and
// a continuation when there are more.
type kesListFunc func(ctx context.Context, prefix string) (names []string, continueAt string, err error)

// kesNameAlphabet is every character a KES key name may hold, in byte order.
const kesNameAlphabet = "-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"

// kesUnlisted is the one region of names the listing of a KES server
// leaves out: names that start with "_--". KES refuses a listing prefix that
// is "_" or ends in '-' (auth.go validPattern), so names under "_-" can only
// be reached one character at a time, one level per further '-': proving
// that no name starts with "_--" would take 62 listings per level, about
// 4,800 in all, each a read of the whole store by the KES server. The walk
// reaches that region only when more than a page of names sorts before '_'
// (digits, capitals: hex names do), and says so when it leaves it out.
const kesUnlisted = "_--"

// kesUnlistedNote is what a plan or log line adds when the listing leaves
// out kesUnlisted ("" when it does not).
func kesUnlistedNote(unlisted bool) string {
	if !unlisted {
		return ""
	}
	return fmt.Sprintf("; except names that start with %q, which KES's listing API reaches only one character at a time, about 4,800 more listings (it refuses a prefix that is \"_\" or ends in '-')", kesUnlisted)
}

// listKESServer lists every key a KES server holds, but for the names that
// start with kesUnlisted (unlisted reports whether the walk had to leave
// them out). Its listing API returns
// about 1024 names for a prefix and, when there are more, the first name it
// left out, as a "continuation" that kes-go and kes migrate pass back as a
// prefix and so lose keys (docs/domain.md, "KES key names and listing"). Here the names at or after that
// continuation under the prefix are covered exactly by the continuation
// itself (as a prefix) and, for each of its positions, the prefixes that
// share it up to there and continue with a greater character; each of those
// is listed the same way. The API takes no prefix ending in '-' nor the
// prefix "_"; the first arises only below the second, and both are split by
// their next character, down to kesUnlisted.
func listKESServer(ctx context.Context, list kesListFunc) (names []string, unlisted bool, err error) {
	var out []string
	if err := kesWalk(ctx, list, "", &out, &unlisted); err != nil {
		return nil, false, err
	}
	slices.Sort(out)
	return slices.Compact(out), unlisted, nil
}

// kesWalk appends to out every name under prefix, as listKESServer
// describes, and sets *unlisted when it leaves out kesUnlisted.
func kesWalk(ctx context.Context, list kesListFunc, prefix string, out *[]string, unlisted *bool) error {
	var walk func(prefix string, depth int) error
	walk = func(prefix string, depth int) error {
		if prefix == kesUnlisted {
			*unlisted = true
			return nil
		}
		if len(prefix) >= 80 && (prefix == "_" || strings.HasSuffix(prefix, "-")) {
			return nil // no key name is longer than 80 characters or ends in '-'
		}
		if depth > 100000 {
			return fmt.Errorf("list keys of the KES server: the listing does not converge under %q", prefix)
		}
		if prefix == "_" || strings.HasSuffix(prefix, "-") {
			// Not listable; no key has this name itself.
			for _, c := range kesNameAlphabet {
				if err := walk(prefix+string(c), depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		q := prefix
		if q == "" {
			q = "*"
		}
		names, next, err := listRetrying(ctx, list, q)
		if err != nil {
			return err
		}
		*out = append(*out, names...)
		if next == "" {
			return nil
		}
		if !strings.HasPrefix(next, prefix) || len(next) <= len(prefix) || (len(names) > 0 && next <= names[len(names)-1]) {
			return fmt.Errorf("list keys of the KES server under %q: unexpected continuation %q", q, next)
		}
		// The names at or after next that start with prefix.
		if err := walk(next, depth+1); err != nil {
			return err
		}
		for i := len(next) - 1; i >= len(prefix); i-- {
			for _, c := range kesNameAlphabet {
				if byte(c) <= next[i] {
					continue
				}
				if err := walk(next[:i]+string(c), depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return walk(prefix, 0)
}

// kesGuidedFew bounds the expected names that a guided listing may return
// again: the shorter a prefix, the further one listing reaches, but the
// more names it may repeat.
const kesGuidedFew = 256

// listKESServerGuided lists every key a KES server holds, like
// listKESServer (but for kesUnlisted), in about one listing per 1024 names: the KES server reads
// and sorts its whole store for every listing (docs/domain.md, "KES key names and listing"), so at 100,000
// keys the number of listings is what costs.
//
// A listing under prefix P that answers names and continuation C proves
// the server's names in [P, C) are exactly those (every string between P
// and C starts with P); one that answers no continuation proves every name
// that starts with P. The listing walks a cursor over the name space: the
// next prefix is the shortest listable prefix of the cursor under which
// expected (sorted; the key store's names) puts few names before the
// cursor, so that most of what it answers is new. expected only guides the
// choice: a server holding other names is listed just as completely, with
// more listings. Between one prefix's names and the next cursor lie only
// strings with a character KES refuses in names, which no key can have.
func listKESServerGuided(ctx context.Context, list kesListFunc, expected []string, inFlight int) (names []string, unlisted bool, err error) {
	// The listings the walk will ask for if the server holds exactly the
	// expected names are known in advance: they are asked for in parallel
	// (the KES server's cost per listing is CPU, and it has several), and
	// the walk then takes their answers, asking only for what differs.
	var planned []string
	if _, err := kesCursorWalk(ctx, func(_ context.Context, q string) ([]string, string, error) {
		planned = append(planned, q)
		return kesListSorted(expected, q)
	}, expected, new(bool)); err != nil {
		return nil, false, err
	}
	type answer struct {
		names []string
		next  string
	}
	answers := make([]answer, len(planned))
	err = parallel.ForEach(ctx, inFlight, len(planned), func(ctx context.Context, i int) error {
		return withRetry(ctx, func() error {
			var err error
			answers[i].names, answers[i].next, err = list(ctx, planned[i])
			return err
		})
	})
	if err != nil {
		return nil, false, fmt.Errorf("list keys of the KES server: %w", err)
	}
	cache := make(map[string]answer, len(planned))
	for i, q := range planned {
		cache[q] = answers[i]
	}
	names, err = kesCursorWalk(ctx, func(ctx context.Context, q string) ([]string, string, error) {
		if a, ok := cache[q]; ok {
			delete(cache, q)
			return a.names, a.next, nil
		}
		return list(ctx, q)
	}, expected, &unlisted)
	return names, unlisted, err
}

// kesPlannedListings is how many listings listKESServerGuided asks of a
// KES server that holds exactly the expected names (sorted), and whether it
// will leave out kesUnlisted.
func kesPlannedListings(ctx context.Context, expected []string) (n int, unlisted bool) {
	kesCursorWalk(ctx, func(_ context.Context, q string) ([]string, string, error) {
		n++
		return kesListSorted(expected, q)
	}, expected, &unlisted)
	return n, unlisted
}

// kesListParallelism is how many listings the KES server works on at once
// (kesListInFlight).
const kesListParallelism = KESListParallelism

// KESListParallelism is how many listings the verification keeps the KES
// server working on at once.
const KESListParallelism = 4

// kesListMaxInFlight bounds the listings asked at once however long the
// round trip.
const kesListMaxInFlight = 16

// kesListInFlight is how many listings to ask of a KES server at once, from
// how long one listing took (listing, the probe's) and a request that costs
// the server nothing (roundTrip: kesServer.roundTrip, the shortest of the
// quiet plan's probe's and two timed as the listing starts): a listing
// keeps the server busy for listing - roundTrip and its answer travels for
// the rest, so that n listings in flight keep n × (listing - roundTrip) /
// listing of them on the server's CPU at once. It asks as many as keep kesListParallelism there (4 on
// loopback, 12 where the round trip is twice the server's time), between
// kesListParallelism and kesListMaxInFlight; kesListParallelism when
// either time is unknown.
func kesListInFlight(listing, roundTrip time.Duration) int {
	if listing <= 0 || roundTrip <= 0 {
		return kesListParallelism
	}
	server := max(listing-roundTrip, listing/kesListMaxInFlight)
	n := int(math.Round(float64(kesListParallelism) * float64(listing) / float64(server)))
	return min(max(n, kesListParallelism), kesListMaxInFlight)
}

// KESListings are the prefixes ("*" first) the verification lists on a KES
// v0.23/v0.24 server that holds exactly names (sorted): the fewest
// listings that prove a server's complete name set with its listing API
// (docs/domain.md, "KES key names and listing"). bench/migration times them
// as the floor of the verification at scale.
func KESListings(names []string) []string {
	var planned []string
	kesCursorWalk(context.Background(), func(_ context.Context, q string) ([]string, string, error) {
		planned = append(planned, q)
		return kesListSorted(names, q)
	}, names, new(bool))
	return planned
}

// kesListSorted answers a listing as KES's listing helper does
// (internal/keystore.List, called with n < 0) from sorted names.
func kesListSorted(sorted []string, q string) ([]string, string, error) {
	const page = 1024
	prefix := q
	if q == "*" {
		prefix = ""
	}
	i := sort.SearchStrings(sorted, prefix)
	j := i
	for j < len(sorted) && strings.HasPrefix(sorted[j], prefix) && j-i < page {
		j++
	}
	if j < len(sorted) && strings.HasPrefix(sorted[j], prefix) {
		return sorted[i:j], sorted[j], nil
	}
	return sorted[i:j], "", nil
}

// listRetrying is one KES listing under q, retried on transient errors.
func listRetrying(ctx context.Context, list kesListFunc, q string) (names []string, next string, err error) {
	err = withRetry(ctx, func() error {
		var err error
		names, next, err = list(ctx, q)
		return err
	})
	if err != nil {
		return nil, "", fmt.Errorf("list keys of the KES server under %q: %w", q, err)
	}
	return names, next, nil
}

// kesCursorWalk is listKESServerGuided's walk over the name space, asking
// list for each listing; it sets *unlisted when it leaves out kesUnlisted.
func kesCursorWalk(ctx context.Context, list kesListFunc, expected []string, unlisted *bool) ([]string, error) {
	var out []string
	names, cursor, err := listRetrying(ctx, list, "*")
	if err != nil {
		return nil, err
	}
	out = append(out, names...)
	for cursor != "" {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		at := sort.SearchStrings(expected, cursor)
		moved := false
		longest, tried := "", ""
		try := func(p string) error {
			tried = p
			names, next, err := listRetrying(ctx, list, p)
			if err != nil {
				return err
			}
			switch {
			case next == "":
				out = append(out, names...)
				cursor, moved = kesNextAfter(p), true
			case next > cursor:
				if !strings.HasPrefix(next, p) {
					return fmt.Errorf("list keys of the KES server under %q: unexpected continuation %q", p, next)
				}
				out = append(out, names...)
				cursor, moved = next, true
			}
			return nil
		}
		for k := 1; k <= len(cursor) && !moved; k++ {
			p := cursor[:k]
			if !kesListable(p) {
				continue
			}
			longest = p
			if at-sort.SearchStrings(expected, p) > kesGuidedFew {
				continue
			}
			if err := try(p); err != nil {
				return nil, err
			}
		}
		if !moved && longest != "" && longest != tried {
			if err := try(longest); err != nil {
				return nil, err
			}
		}
		if moved {
			continue
		}
		// No listable prefix of the cursor moves it: list exhaustively the
		// names that start with the cursor when KES names can (it is "_" or
		// ends in '-'), or with its longest listable part (it holds a
		// character KES refuses), then move past them.
		part := longest
		if kesNameChars(cursor) {
			part = cursor
		}
		if part == "" {
			cursor = kesNextAfter(cursor[:1])
			continue
		}
		if err := kesWalk(ctx, list, part, &out, unlisted); err != nil {
			return nil, err
		}
		cursor = kesNextAfter(part)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// kesNameChars reports whether s holds only characters KES key names may.
func kesNameChars(s string) bool {
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune(kesNameAlphabet, rune(s[i])) {
			return false
		}
	}
	return true
}

// kesListable reports whether KES's listing API takes p as a prefix
// (auth.go validPattern, without its '*'): the same rule as a key name's.
func kesListable(p string) bool { return kesValidName(p) }

// kesValidName is KES's rule for key names (keystore.ValidName).
var kesValidName = keystore.ValidName

// kesNextAfter is the smallest string of KES name characters greater than
// every string that starts with p, or "" when there is none. The strings
// between p's names and it all hold a character KES refuses in names.
func kesNextAfter(p string) string {
	for len(p) > 0 {
		last := p[len(p)-1]
		p = p[:len(p)-1]
		if i := strings.IndexFunc(kesNameAlphabet, func(r rune) bool { return byte(r) > last }); i >= 0 {
			return p + kesNameAlphabet[i:i+1]
		}
	}
	return ""
}

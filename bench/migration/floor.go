package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/runbook-dev/runbook/steps"
)

// listAlone is the floor of the verification at scale: the time the KES
// server alone needs to list its complete name set, asked directly (no
// runbook process, no proxy) with the listings the verification asks of a
// server that holds exactly the store's names (steps.KESListings), as many
// at once as it asks them on loopback (steps.KESListParallelism; more only
// where a round trip leaves the server idle). A KES v0.22 server streams
// every name in one listing. It checks that the listings returned every
// name, and returns the best of runs and the number of listings.
func (s *store) listAlone(runs int) (time.Duration, int) {
	names := make([]string, s.keys)
	for i := range names {
		names[i] = keyName(i)
	}
	slices.Sort(names)
	prefixes := []string{"*"}
	if !s.shape.v022 {
		prefixes = steps.KESListings(names)
	}
	c := s.kes.Client()
	var best time.Duration
	for range runs {
		var mu sync.Mutex
		seen := make(map[string]bool, len(names))
		g, ctx := errgroup.WithContext(context.Background())
		g.SetLimit(steps.KESListParallelism)
		start := time.Now()
		for _, p := range prefixes {
			g.Go(func() error {
				got, _, err := c.ListKeys(ctx, p, -1)
				mu.Lock()
				for _, n := range got {
					seen[n] = true
				}
				mu.Unlock()
				return err
			})
		}
		check(g.Wait())
		took := time.Since(start)
		if len(seen) != len(names) {
			check(fmt.Errorf("the KES server's listings returned %d names of the store's %d", len(seen), len(names)))
		}
		if best == 0 || took < best {
			best = took
		}
	}
	return best, len(prefixes)
}

// Package parallel runs a loop's bodies at a bounded parallelism, for the
// steps and the key store's classification alike.
package parallel

import (
	"context"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
)

// ForEach calls fn for 0..n-1, started in that order, at most par at a
// time. The first error cancels the others' context and is returned; so is
// the context's error when it ends first. par workers take the indexes in
// turn: a goroutine per call would start each on a small stack that grows
// (copied) on every call deep enough for a system call or a cipher, which
// at 1,000 keys cost about a twentieth of the runbook's CPU (perf).
func ForEach(ctx context.Context, par, n int, fn func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range min(max(par, 1), n) {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || gctx.Err() != nil {
					return nil // done, or an earlier call failed
				}
				if err := fn(gctx, i); err != nil {
					return err
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

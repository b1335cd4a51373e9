package steps

import (
	"context"

	"golang.org/x/sync/errgroup"
)

// forEach calls fn for 0..n-1, at most par at a time. The first error
// cancels the others' context and is returned; so is the context's error
// when it ends first.
func forEach(ctx context.Context, par, n int, fn func(ctx context.Context, i int) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(par, 1))
	for i := range n {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			if gctx.Err() != nil {
				return nil // an earlier call failed while this one waited for its turn
			}
			return fn(gctx, i)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}

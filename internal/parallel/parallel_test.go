package parallel

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// ForEach runs every index at most par at a time; the first error stops
// the rest and is what it returns; a context that ends first is the error.
func TestForEach(t *testing.T) {
	t.Parallel()
	var running, most, calls atomic.Int64
	err := ForEach(context.Background(), 3, 50, func(ctx context.Context, i int) error {
		calls.Add(1)
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		return nil
	})
	if err != nil || calls.Load() != 50 || most.Load() > 3 {
		t.Fatalf("err %v, %d calls, at most %d at once; want nil, 50, at most 3", err, calls.Load(), most.Load())
	}
	boom := errors.New("boom")
	calls.Store(0)
	err = ForEach(context.Background(), 1, 50, func(ctx context.Context, i int) error {
		calls.Add(1)
		if i == 4 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || calls.Load() != 5 {
		t.Fatalf("err %v after %d calls; want boom after 5 (one at a time, nothing after the error)", err, calls.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ForEach(ctx, 2, 10, func(context.Context, int) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled context gives %v, want context.Canceled", err)
	}
}

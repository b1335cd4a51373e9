package engine

import (
	"context"
	"fmt"
)

// selected returns the blocks a command acts on: all, or the targets and
// everything they depend on.
func (s *Session) selected(targets []string) (map[string]bool, error) {
	sel := map[string]bool{}
	if len(targets) == 0 {
		for _, n := range s.Graph.Nodes {
			sel[n] = true
		}
		return sel, nil
	}
	for _, t := range targets {
		if s.Config.Block(t) == nil {
			return nil, fmt.Errorf("target %q: no such block in the runbook (write it as type.name)", t)
		}
		sel[t] = true
		for a := range s.Graph.Ancestors(t) {
			sel[a] = true
		}
	}
	return sel, nil
}

// walk runs fn on every selected node once all its dependencies succeeded,
// up to parallelism at once. Dependents of a failed node are skipped and
// reported once; after ctx is cancelled nothing new starts.
func (x *execution) walk(ctx context.Context, sel map[string]bool, fn func(context.Context, string) error) map[string]error {
	type result struct {
		addr string
		err  error
	}
	g := x.s.Graph
	status := map[string]string{} // "", running, ok, failed, skipped
	errs := map[string]error{}
	results := make(chan result)
	sem := make(chan struct{}, x.opts.Parallelism)
	running := 0
	for {
		if ctx.Err() == nil {
			for _, n := range g.Order() {
				if !sel[n] || status[n] != "" {
					continue
				}
				ready, blocked := true, false
				for _, d := range g.Deps[n] {
					if !sel[d] {
						continue
					}
					switch status[d] {
					case "ok":
					case "failed", "skipped":
						blocked = true
					default:
						ready = false
					}
				}
				if blocked {
					status[n] = "skipped"
					if x.cfg.Block(n).BlockType.Kind == KindStep {
						x.emit(Event{Type: EventState, Step: n, State: StateSkipped, Message: "a dependency did not complete"})
					}
					continue
				}
				if !ready {
					continue
				}
				status[n] = "running"
				running++
				go func(n string) {
					sem <- struct{}{}
					defer func() { <-sem }()
					var err error
					if ctx.Err() != nil {
						err = ErrInterrupted
					} else {
						err = fn(ctx, n)
					}
					results <- result{n, err}
				}(n)
			}
		}
		if running == 0 {
			break
		}
		res := <-results
		running--
		if res.err != nil {
			status[res.addr] = "failed"
			errs[res.addr] = res.err
		} else {
			status[res.addr] = "ok"
		}
	}
	return errs
}

package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// applyNode decodes a connection, or applies a step unless the journal
// says it is done (then its recorded outputs feed its dependents).
func (x *execution) applyNode(ctx context.Context, addr string) error {
	b := x.cfg.Block(addr)
	if b.BlockType.Kind == KindConnection {
		if err := x.s.decodeConnection(b); err != nil {
			x.emit(Event{Type: EventState, Step: addr, State: StateFailed, Error: err.Error(), Hints: Hints(err)})
			return err
		}
		return nil
	}
	st := x.js.Step(addr)
	if st.State == StateDone {
		outs, err := x.restoreOutputs(addr, st.Outputs)
		if err != nil {
			return err
		}
		x.s.Scope.SetOutputs(addr, outs)
		x.emit(Event{Type: EventState, Step: addr, State: StateDone, Message: "already done (journal)"})
		return nil
	}
	return x.applyStep(ctx, b, st)
}

// applyStep applies one step: decoded and validated with the values known
// now, tried as often as its retry setting allows, then its outputs and its
// done state recorded. Whatever ends it early is recorded as its state.
func (x *execution) applyStep(ctx context.Context, b *BlockConfig, st *StepState) error {
	step, r, p, err := x.prepareStep(b, st)
	if err != nil {
		return x.fail(b.Addr(), err)
	}
	started := time.Now()
	if err := x.attempts(ctx, step, r, st.Attempts, p); err != nil {
		return err
	}
	return x.recordDone(r, started)
}

// retryPolicy is a step's timeout (per attempt; zero: none) and retry
// settings.
type retryPolicy struct {
	timeout, backoff time.Duration
	attempts         int
}

// prepareStep decodes a step for applying: every value it uses must be
// known by now.
func (x *execution) prepareStep(b *BlockConfig, st *StepState) (Step, *Run, retryPolicy, error) {
	var p retryPolicy
	inst, d, diags := x.s.decode(b)
	timeout, backoff, attempts, moreDiags := x.s.meta(b)
	diags = append(diags, moreDiags...)
	if diags.HasErrors() {
		return nil, nil, p, diagsError(diags)
	}
	if len(d.unknown) > 0 {
		return nil, nil, p, fmt.Errorf("values not known when the step ran: %s", strings.Join(sortedKeys(d.unknown), ", "))
	}
	step, ok := inst.(Step)
	if !ok {
		return nil, nil, p, fmt.Errorf("block type %s has no apply", b.Type)
	}
	p = retryPolicy{timeout: timeout, backoff: backoff, attempts: attempts}
	if p.backoff == 0 {
		p.backoff = time.Second
	}
	return step, x.newRun(b.Addr(), d, st, nil), p, nil
}

// attempts calls the step's Apply until it succeeds, up to p.attempts
// times with exponential backoff, each attempt recorded as running
// (numbered after the earlier commands' attempts). An interruption, a
// wait for the operator, a refusal or the last failure ends it, recorded.
func (x *execution) attempts(ctx context.Context, step Step, r *Run, earlier int, p retryPolicy) error {
	addr := r.Addr
	for attempt := 1; ; attempt++ {
		r.attempt = attempt
		if err := x.setState(addr, StateRunning, nil, map[string]int{"attempt": earlier + attempt}); err != nil {
			return err
		}
		err := x.attempt(ctx, step, r, p.timeout)
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return x.interrupted(addr, err)
		case errors.Is(err, ErrWaiting):
			if e := x.setState(addr, StateWaiting, err, nil); e != nil {
				return e
			}
			return err
		case attempt >= p.attempts || errors.Is(err, ErrRefused):
			return x.fail(addr, err)
		}
		wait := p.backoff << (attempt - 1)
		x.emit(Event{Type: EventState, Step: addr, State: StateRetrying, Error: err.Error(), Message: fmt.Sprintf("attempt %d of %d failed; trying again in %s", attempt, p.attempts, wait)})
		select {
		case <-ctx.Done():
			return x.interrupted(addr, ctx.Err())
		case <-time.After(wait):
		}
	}
}

// attempt is one call of the step's Apply, under its timeout.
func (x *execution) attempt(ctx context.Context, step Step, r *Run, timeout time.Duration) error {
	sctx, cancel := ctx, context.CancelFunc(func() {})
	if timeout > 0 {
		sctx, cancel = context.WithTimeout(ctx, timeout)
	}
	defer cancel()
	err := step.Apply(sctx, r)
	if err != nil && sctx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		err = fmt.Errorf("timed out after %s: %w", timeout, err)
	}
	return err
}

// recordDone records the step's outputs, then that it is done.
func (x *execution) recordDone(r *Run, started time.Time) error {
	outs := r.Outputs()
	data, err := x.encodeOutputs(r, outs)
	if err != nil {
		return x.fail(r.Addr, err)
	}
	if err := x.append(&Record{Kind: RecordOutput, Step: r.Addr, Data: data}); err != nil {
		return err
	}
	x.s.Scope.SetOutputs(r.Addr, outs)
	if err := x.append(&Record{Kind: RecordState, Step: r.Addr, State: StateDone}); err != nil {
		return err
	}
	x.emit(Event{Type: EventState, Step: r.Addr, State: StateDone, Duration: time.Since(started).Round(time.Millisecond).String()})
	return nil
}

// fail records the step as failed with err, and returns err.
func (x *execution) fail(addr string, err error) error {
	if e := x.setState(addr, StateFailed, err, nil); e != nil {
		return e
	}
	return err
}

// interrupted records the step as interrupted (Ctrl-C) with err.
func (x *execution) interrupted(addr string, err error) error {
	if e := x.setState(addr, StateInterrupted, err, nil); e != nil {
		return e
	}
	return ErrInterrupted
}

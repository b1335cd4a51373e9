package steps

import (
	"context"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// servedListing is the KES server's complete name set, listed once per
// process. At scale this listing is most of the verification's time (each
// listing costs the KES server a read of its whole store: about 28 s at
// 100,000 keys here, BENCHMARKS.md), and it depends on nothing the other
// steps do, so the quiet plan that apply FILE makes first starts it
// (engine.Run.BeforeApply) and it runs while the migration does; the
// verification takes its answer when it gets there. Without that plan
// (resume, runbook plan) the verification starts it itself, as before.
type servedListing struct {
	done    chan struct{}
	started time.Time
	res     servedNames
}

// servedKey keeps one servedListing per KES server and config file.
type servedKey struct{ endpoint, config string }

// startServedListing returns the session's listing of the KES server's
// names, starting it if no step of this process has (expected, the key
// store's names, sorted, only guides the walk: listKESServerGuided). It
// lists on ctx's values without its cancellation: the plan that starts it
// ends long before the listing does. A listing the plan started that the
// apply never takes ends with the process.
func startServedListing(ctx context.Context, r *engine.Run, src *kesConnection, srv *kesServer, expected []string) *servedListing {
	key := servedKey{src.Endpoint(), src.ConfigFile(r)}
	return r.Memo(key, func() any {
		l := &servedListing{done: make(chan struct{}), started: time.Now()}
		go func() {
			defer close(l.done)
			l.res = listServed(context.WithoutCancel(ctx), srv, expected)
		}()
		return l
	}).(*servedListing)
}

// listServed lists every name the KES server serves, and how long it took.
func listServed(ctx context.Context, srv *kesServer, expected []string) servedNames {
	t0 := time.Now()
	var res servedNames
	if srv.generation == kesGlob { // one listing streams every name
		res.names, res.unlisted, res.err = listKESServer(ctx, srv.list)
	} else {
		res.names, res.unlisted, res.err = listKESServerGuided(ctx, srv.list, expected)
	}
	res.took = time.Since(t0)
	return res
}

// wait returns the listing's answer, or ctx's error when ctx ends first.
func (l *servedListing) wait(ctx context.Context) servedNames {
	select {
	case <-l.done:
		return l.res
	case <-ctx.Done():
		return servedNames{err: ctx.Err()}
	}
}

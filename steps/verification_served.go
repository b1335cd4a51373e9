package steps

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/keystore"
)

// servedListing is one listing of the KES server's complete name set, under
// way or done. At scale this listing is most of the verification's time
// (each listing costs the KES server a read of its whole store: about 28 s
// at 100,000 keys here, BENCHMARKS.md), and it depends on nothing the other
// steps do, so the quiet plan an apply makes first starts one
// (StartEarly, at its first moment) that runs while the migration does,
// and the first verification attempt takes it. Any other attempt, and an apply
// without that plan (resume), lists when it gets there.
type servedListing struct {
	done chan struct{}
	// from says when in the quiet plan before the apply the listing
	// started ("" when the verification's attempt started it itself).
	from   string
	cancel context.CancelFunc // ends the listing; its taker calls it when done
	taken  atomic.Bool
	res    servedNames
}

// servedKey keeps the plan's listing apart per KES server, config file and
// client identity (what one identity may list, another may not).
type servedKey struct{ endpoint, config, identity string }

func servedKeyOf(r *engine.Run, src *kesConnection, srv *kesServer) servedKey {
	return servedKey{src.Endpoint(), src.ConfigFile(r), kesIdentity(srv.c)}
}

// startServedListing starts, in the quiet plan before an apply, the
// listing the verification will take (expected, the key store's names,
// sorted, only guides the walk: listKESServerGuided). The listing runs on
// ctx's values without its cancellation: the plan ends long before the
// listing does; one no step takes ends with the process.
func startServedListing(ctx context.Context, r *engine.Run, src *kesConnection, srv *kesServer, expected []string, from string) {
	r.Memo(servedKeyOf(r, src, srv), func() any {
		return newServedListing(context.WithoutCancel(ctx), srv, expected, from)
	})
}

// StartEarly starts the listing of the KES server's names at the first
// moment of the quiet plan before an apply (engine.EarlyStarter), rather
// than when the plan reaches this step after the migration's: it needs
// only the KES server and the key store's names (keystore.List: the
// listing, no values), and at 100,000 keys the plan spends seconds reading
// the values first. On any failure it starts nothing: the plan and the
// apply meet it in their order.
func (v *verificationStep) StartEarly(ctx context.Context, r *engine.Run) {
	// Only the source: the enclave may be a step's output, unknown yet.
	src, srcAddr, err := engine.ConnectionFrom[*kesConnection](v.cfg.Source, "kes")
	if err != nil || !src.HasServer() {
		return
	}
	srv, err := src.Server(ctx, r, srcAddr)
	if err != nil {
		return
	}
	ks, conf, err := src.OpenKeyStore(ctx, r)
	if err != nil {
		return
	}
	defer ks.Close()
	l, err := planList(ctx, r, src, ks, conf)
	if err != nil {
		return
	}
	startServedListing(ctx, r, src, srv, l.All, "from the plan's start")
}

// takeServedListing returns the listing the plan started, if there is one
// and no step has taken it, and otherwise starts one on ctx.
func takeServedListing(ctx context.Context, r *engine.Run, src *kesConnection, srv *kesServer, expected []string) *servedListing {
	l, _ := r.Memo(servedKeyOf(r, src, srv), func() any { return (*servedListing)(nil) }).(*servedListing)
	if l != nil && l.taken.CompareAndSwap(false, true) {
		return l
	}
	l = newServedListing(ctx, srv, expected, "")
	l.taken.Store(true)
	return l
}

func newServedListing(ctx context.Context, srv *kesServer, expected []string, from string) *servedListing {
	ctx, cancel := context.WithCancel(ctx)
	l := &servedListing{done: make(chan struct{}), from: from, cancel: cancel}
	go func() {
		defer close(l.done)
		l.res = listServed(ctx, srv, expected)
	}()
	return l
}

// listServed lists every name the KES server serves, and how long it took.
func listServed(ctx context.Context, srv *kesServer, expected []string) servedNames {
	t0 := time.Now()
	var res servedNames
	if srv.generation == kesGlob { // one listing streams every name
		res.names, res.unlisted, res.err = listKESServer(ctx, srv.list)
	} else {
		res.inFlight = kesListInFlight(srv.listing, srv.roundTrip(ctx))
		res.names, res.unlisted, res.err = listKESServerGuided(ctx, srv.list, expected, res.inFlight)
	}
	res.took = time.Since(t0)
	return res
}

// wait returns the listing's answer, or ctx's error when ctx ends first.
func (l *servedListing) wait(ctx context.Context) servedNames {
	if err := waitClosed(ctx, l.done); err != nil {
		return servedNames{err: err}
	}
	return l.res
}

// freshServed returns the served names to judge against stored (the key
// store's names matching pattern) and, when it asked relist for a new
// listing, why. A listing the plan started is older than the store read it
// is judged against: a key deleted at KES since would look like a name the
// store lacks, and a listing that failed (KES restarted while the migration
// ran) says nothing of now; either is listed again. Names the server gained
// since the plan's listing are outside what it proves (the check's log line
// says when it listed), as a listing made at the end would miss those
// gained after it.
func freshServed(res servedNames, byPlan bool, stored []string, pattern string, relist func() servedNames) (servedNames, string) {
	if !byPlan {
		return res, ""
	}
	if res.err != nil {
		return relist(), fmt.Sprintf("the listing the plan started failed (%v)", res.err)
	}
	if _, onlyServer := keystore.Diff(stored, verifyMatch(res.names, pattern)); len(onlyServer) > 0 {
		return relist(), fmt.Sprintf("%d name(s) listed while the plan ran are not in the key store (%s)", len(onlyServer), keystore.NameList(onlyServer, verifyShown))
	}
	res.byPlan = true
	return res, ""
}

package steps

import (
	"cmp"
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// waitHealthy waits until every node is online, AIStor's KMS status names
// want with every endpoint online, and the default key passes a status
// check.
func (c *cutoverStep) waitHealthy(ctx context.Context, r *engine.Run, e *cutoverEnv, want string, seen *nodesReport) error {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, e.wait)
	defer cancel()
	start := time.Now()
	healthy := 0
	var last string
	for {
		why := healthCheck(wctx, r, e.a, admin, e.plat.Servers(), want, seen)
		if why != "" && wctx.Err() != nil && last != "" {
			// The wait's deadline cut this check short: the check before it
			// says what was wrong ("context deadline exceeded" says nothing).
			why = last
		}
		last = why
		if last == "" {
			healthy++
			last = fmt.Sprintf("healthy for %d check(s) in a row, not yet %d", healthy, stableHealthChecks)
		} else {
			healthy = 0
		}
		// Nodes restarted together can report healthy and lose write quorum
		// again a moment later while they reconnect to each other's drives:
		// only a health that holds for several checks in a row counts.
		if healthy >= stableHealthChecks {
			r.Logf("AIStor is healthy on %s after %s", want, time.Since(start).Round(time.Second))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wctx.Done():
			return fmt.Errorf("AIStor did not become healthy on %s within %s: %s; the nodes' logs:%s", want, e.wait, last, e.plat.Logs(ctx, r))
		case <-time.After(time.Second):
		}
	}
}

// stableHealthChecks is how many health checks, a second apart, must pass in
// a row before the object store counts as healthy.
const stableHealthChecks = 3

// healthCheck returns "" when healthy, else what is wrong.
// seen, when not nil, gathers what the nodes reported.
func healthCheck(ctx context.Context, r *engine.Run, a *aistorConnection, admin *madmin.AdminClient, nodes int, want string, seen *nodesReport) string {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	seen.check()
	info, err := admin.ServerInfo(cctx)
	if err != nil {
		return fmt.Sprintf("server info: %v", err)
	}
	var offline []string
	for _, s := range info.Servers {
		seen.server(s.Endpoint, s.State)
		if s.State != string(madmin.ItemOnline) {
			offline = append(offline, s.Endpoint+" "+s.State)
			continue
		}
		for _, d := range s.Disks {
			if d.State != madmin.DriveStateOk {
				offline = append(offline, fmt.Sprintf("%s drive %s %s", s.Endpoint, d.DrivePath, d.State))
			}
		}
	}
	if len(offline) > 0 {
		sort.Strings(offline)
		return "node(s) not online: " + strings.Join(offline, ", ")
	}
	if len(info.Servers) < nodes {
		return fmt.Sprintf("%d of %d nodes report", len(info.Servers), nodes)
	}
	if why := clusterWritable(cctx, r, a); why != "" {
		return why
	}
	st, err := admin.KMSStatus(cctx)
	switch {
	case err != nil && want == kmsNameKES && kmsStatusRefused(err):
		// MinIO asks KES /v1/status with its own KES identity, which may
		// encrypt and decrypt and still lack that path (docs/domain.md, "KES identities and policies"): no
		// status will ever name KES. Judge by what each server runs with
		// instead, then by the default key's round trip below.
		if why := runsOnKES(info); why != "" {
			return why
		}
		st = madmin.KMSStatus{Name: kmsNameKES} // DefaultKeyID "": MinIO's default key
	case err != nil:
		return fmt.Sprintf("KMS status: %v", err)
	}
	seen.kms(st.Name)
	if st.Name != want {
		return fmt.Sprintf("KMS status names %q, not %q", st.Name, want)
	}
	for ep, state := range st.Endpoints {
		if state != madmin.ItemOnline {
			return fmt.Sprintf("KMS endpoint %s is %s", ep, state)
		}
	}
	ks, err := admin.GetKeyStatus(cctx, st.DefaultKeyID)
	if err != nil {
		return fmt.Sprintf("status of default key %q: %v", st.DefaultKeyID, err)
	}
	if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
		return fmt.Sprintf("default key %q fails its round trip: %s %s", st.DefaultKeyID, ks.EncryptionErr, ks.DecryptionErr)
	}
	return ""
}

// nodesReport is what the nodes reported while a cutover waited for them
// after its restart into the Key Manager (journal item reported). A server
// that MinIO never listed online and a KMS status that never named the Key
// Manager mean no node ever served on the Key Manager: MinIO exits at
// start-up when it cannot reach its KMS, so nothing was sealed under it.
type nodesReport struct {
	Checks int      `json:"checks"`
	Online []string `json:"online,omitempty"` // servers listed online at least once
	KMS    []string `json:"kms,omitempty"`    // the KMS names the status gave
}

func (n *nodesReport) check() {
	if n != nil {
		n.Checks++
	}
}

func (n *nodesReport) server(endpoint, state string) {
	if n != nil && state == string(madmin.ItemOnline) && !slices.Contains(n.Online, endpoint) {
		n.Online = append(n.Online, endpoint)
		slices.Sort(n.Online)
	}
}

func (n *nodesReport) kms(name string) {
	if n != nil && !slices.Contains(n.KMS, name) {
		n.KMS = append(n.KMS, name)
	}
}

// neverServed reports whether no node was ever seen serving after the
// restart: none listed online, no KMS status at all.
func (n nodesReport) neverServed() bool { return n.Checks > 0 && len(n.Online) == 0 && len(n.KMS) == 0 }

// merge adds what an earlier run's wait saw.
func (n *nodesReport) merge(o nodesReport) {
	n.Checks += o.Checks
	for _, s := range o.Online {
		n.server(s, string(madmin.ItemOnline))
	}
	for _, k := range o.KMS {
		n.kms(k)
	}
}

// runsOnKES returns "" when every server's own environment (ServerInfo's
// MinioEnvVars) names a KES server and no Key Manager, else which server
// does not.
func runsOnKES(info madmin.InfoMessage) string {
	for _, s := range info.Servers {
		if srv := s.MinioEnvVars["MINIO_KMS_SERVER"]; srv != "" {
			return fmt.Sprintf("KES refuses /v1/status to MinIO's KES identity, and server %s runs with MINIO_KMS_SERVER=%s", s.Endpoint, srv)
		}
		if s.MinioEnvVars["MINIO_KMS_KES_ENDPOINT"] == "" {
			return fmt.Sprintf("the KMS status is refused, and server %s runs with no MINIO_KMS_KES_ENDPOINT", s.Endpoint)
		}
	}
	return ""
}

// clusterWritable asks MinIO's cluster health check (/minio/health/cluster:
// 200 once the erasure sets have write quorum). Nodes restarted together
// find each other's drives only at their next reconnect, so "online" alone
// does not mean writable.
func clusterWritable(ctx context.Context, r *engine.Run, a *aistorConnection) string {
	tlsCfg, err := tlsConfig(r, a.cfg.CAFile, a.cfg.Insecure)
	if err != nil {
		return err.Error()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	defer tr.CloseIdleConnections()
	resp, err := clusterHealth(ctx, &http.Client{Transport: tr}, strings.TrimSuffix(a.Endpoint(), "/"))
	if err != nil {
		return fmt.Sprintf("cluster health: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("the cluster has no write quorum yet (/minio/health/cluster: %s)", resp.Status)
	}
	return ""
}

// clusterHealth asks MinIO's cluster health check of base
// (scheme://host:port) and returns its answer, body closed: the status
// code, and the x-minio-server-status header MinIO sets while it starts
// (startupStatus).
func clusterHealth(ctx context.Context, hc *http.Client, base string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/minio/health/cluster", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

// restartAndConfirm is one restart of every node, in either direction:
// into the Key Manager (back = false) or onto KES again (back = true, the
// rollback). Each phase is checkpointed in attempt g, so a resume or a
// rollback never restarts again what was restarted and confirmed:
//
//	restart     recorded before the first node is restarted (cutoverRestart)
//	restarted   every node's restart returned
//	healthy     every node online, the KMS status names the KMS wanted
//	validated   the recorded sample reads byte for byte
//
// A restart begun but not recorded done (the runbook was killed) is done
// again: the nodes' state is unknown. Errors: the first phase that fails.
func (c *cutoverStep) restartAndConfirm(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool, s *cutoverSample) error {
	want := kmsNameKeyManager
	if back {
		want = kmsNameKES
	}
	it := restartItemsOf(g, back)
	// A recorded restart that does not decode is an error: read as
	// absent, its time and what it recorded before the restart are lost.
	rs, begun, err := it.restart.Get(r)
	if err != nil {
		return err
	}
	restart := !it.restarted.Done(r)
	if !restart && !it.healthy.Done(r) {
		// An earlier run restarted the nodes and stopped before they were
		// healthy (it failed, or was killed while waiting). If they become
		// healthy, go on; if they are down or stay unhealthy, that is cause
		// for one more restart, rather than waiting out wait_timeout on
		// nodes that failed.
		if why := c.needsRestart(ctx, r, e, want); why != "" {
			r.Logf("the object store is not healthy on %s after the restart begun at %s (%s): restarting the nodes again", want, rs.At.Format(time.RFC3339), why)
			restart = true
		}
	}
	var probe *unavailability
	if restart {
		if rs, probe, err = c.restartNodes(ctx, r, e, g, back, rs, begun); err != nil {
			return err
		}
	}
	if !back {
		r.SetOutput("restarted_at", cty.StringVal(rs.At.Format(time.RFC3339Nano)))
	}
	if !it.healthy.Done(r) {
		if err := c.awaitHealthy(ctx, r, e, g, back, want, probe); err != nil {
			return err
		}
	}
	// Healthy is not writable: every server must accept a write.
	if err := c.confirmWrites(ctx, r, e, g, back); err != nil {
		return err
	}
	if it.validated.Done(r) {
		return nil
	}
	return c.validateRestart(ctx, r, e, g, back, want, s)
}

// restartNodes records the restart's intent (first time: when it began,
// the store's clock, and into the Key Manager the IAM entries and bucket
// configurations it must keep), starts the unavailability probe and
// restarts every node, bounded by wait_timeout; the probe runs on until
// awaitHealthy stops it.
func (c *cutoverStep) restartNodes(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool, rs cutoverRestart, begun bool) (cutoverRestart, *unavailability, error) {
	it := restartItemsOf(g, back)
	if !begun {
		rs = cutoverRestart{At: time.Now().UTC(), StoreAt: c.storeClock(ctx, r, e), Mode: cmp.Or(e.a.RestartMode(), e.a.Platform())}
		if !back {
			rs.IAM, rs.Buckets = c.iamNames(ctx, r, e), c.bucketConfigs(ctx, r, e)
			rs.ServerConfig = c.serverConfigDigest(ctx, r, e)
		}
		if err := it.restart.Put(r, rs); err != nil {
			return rs, nil, err
		}
	} else if !it.restarted.Done(r) {
		r.Logf("the restart begun at %s was interrupted: restarting the nodes again", rs.At.Format(time.RFC3339))
	}
	probe := c.startProbe(ctx, r, e)
	// A restart that hangs (systemctl waits for MinIO's start-up)
	// counts against the same bound as the wait for health.
	rctx, cancel := context.WithTimeout(ctx, e.wait)
	err := e.plat.Restart(rctx, r, back)
	cancel()
	if err == nil {
		err = it.restarted.Put(r, restartedNodes{Nodes: e.plat.Servers()})
	}
	if err != nil {
		probe.stop()
		return rs, nil, err
	}
	return rs, probe, nil
}

// awaitHealthy waits until every node is healthy on want, records what the
// nodes reported on the way into the Key Manager (the rollback's evidence,
// whether the wait succeeded or not) and the window probe measured (nil:
// this run did not restart).
func (c *cutoverStep) awaitHealthy(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool, want string, probe *unavailability) error {
	var seen *nodesReport
	if !back {
		seen = &nodesReport{}
		// A recorded report that does not decode is an error: read as
		// absent, the evidence of a server that served would be lost.
		old, ok, err := reportedItem(g).Get(r)
		if err != nil {
			return err
		}
		if ok {
			seen.merge(old)
		}
	}
	err := c.waitHealthy(ctx, r, e, want, seen)
	window := probe.stop()
	if seen != nil {
		// Recorded whether the wait succeeded or not: a rollback reads
		// it as evidence (rollback, checkNoNewWrites).
		if cerr := reportedItem(g).Put(r, *seen); cerr != nil && err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	data := restartHealth{KMS: want}
	if probe != nil {
		ms := window.Milliseconds()
		data.UnavailableMS = &ms
		if at := probe.firstFailure(); !at.IsZero() {
			data.DownAt = at.UTC() // where the write probe's window starts
		}
		r.Logf("the object store answered nothing for %s (from its first failed probe to its first healthy answer)", window.Round(100*time.Millisecond))
		if !back {
			r.SetOutput("unavailable_seconds", cty.NumberFloatVal(window.Seconds()))
		}
	}
	return restartItemsOf(g, back).healthy.Put(r, data)
}

// validateRestart checks what the restart must have kept (IAM and bucket
// configurations) and reads the object sample back byte for byte, then
// records the attempt's restart as validated.
func (c *cutoverStep) validateRestart(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool, want string, s *cutoverSample) error {
	if err := c.checkIAMAfterRestart(ctx, r, e, g, back); err != nil {
		return err
	}
	n, err := c.validate(ctx, r, e, s)
	if err != nil {
		return err
	}
	if err := restartItemsOf(g, back).validated.Put(r, validatedSample{Objects: n}); err != nil {
		return err
	}
	if back {
		r.Logf("AIStor reports %s again; %d object(s) read back", want, n)
	} else {
		r.Logf("AIStor reports %s; %d object(s) read back", want, n)
	}
	return nil
}

// restartGrace bounds how long a resume watches nodes that an earlier run
// restarted before it decides they need restarting again.
const restartGrace = 30 * time.Second

// needsRestart decides whether nodes an earlier run restarted (and did not
// see healthy) must be restarted again: "" when they become healthy within
// restartGrace (at most wait_timeout; they may still be coming up), else
// why not. Nodes that answer nothing at all, three checks in a row, are
// down: no point waiting for them.
func (c *cutoverStep) needsRestart(ctx context.Context, r *engine.Run, e *cutoverEnv, want string) string {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err.Error()
	}
	deadline := time.Now().Add(min(e.wait, restartGrace))
	down := 0
	for {
		why := healthCheck(ctx, r, e.a, admin, e.plat.Servers(), want, nil)
		if why == "" {
			return ""
		}
		if strings.HasPrefix(why, "server info: ") && (strings.Contains(why, "connection refused") || strings.Contains(why, "no route to host")) {
			down++
		} else {
			down = 0
		}
		if down >= 3 || time.Now().After(deadline) || ctx.Err() != nil {
			return why
		}
		select {
		case <-ctx.Done():
			return ctx.Err().Error()
		case <-time.After(time.Second):
		}
	}
}

// probeInterval is how often the unavailability probe asks the object
// store's cluster health while the nodes restart.
const probeInterval = 250 * time.Millisecond

// unavailability measures how long the object store answered nothing:
// from the first failed probe of /minio/health/cluster to the first
// healthy answer after it.
type unavailability struct {
	cancel context.CancelFunc
	done   chan struct{}
	window time.Duration
	down   time.Time // the first failed probe (read after stop)
}

// firstFailure is when the probe first failed (zero: never), after stop.
func (u *unavailability) firstFailure() time.Time {
	if u == nil {
		return time.Time{}
	}
	return u.down
}

func (c *cutoverStep) startProbe(ctx context.Context, r *engine.Run, e *cutoverEnv) *unavailability {
	pctx, cancel := context.WithCancel(ctx)
	u := &unavailability{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(u.done)
		var down time.Time
		t := time.NewTicker(probeInterval)
		defer t.Stop()
		for {
			cctx, ccancel := context.WithTimeout(pctx, 2*time.Second)
			why := clusterWritable(cctx, r, e.a)
			ccancel()
			if pctx.Err() != nil {
				if !down.IsZero() {
					u.window = time.Since(down) // still down when stopped
				}
				return
			}
			switch {
			case why != "" && down.IsZero():
				down = time.Now()
				u.down = down
			case why == "" && !down.IsZero():
				u.window = time.Since(down)
				return
			}
			select {
			case <-pctx.Done():
				if !down.IsZero() {
					u.window = time.Since(down)
				}
				return
			case <-t.C:
			}
		}
	}()
	return u
}

// stop ends the probe and returns the window measured (zero if the
// object store never failed a probe). A nil probe measured nothing.
func (u *unavailability) stop() time.Duration {
	if u == nil {
		return 0
	}
	select {
	case <-u.done:
	default:
		u.cancel()
		<-u.done
	}
	u.cancel()
	return u.window
}

// storeClock is the object store's own time now, or the zero time when it
// does not answer. Its Date header counts whole seconds, so it asks until
// the second ticks over (at most about a second): the tick is then known to
// within one round trip, and the time returned errs early, never late, so
// the write check it anchors can report too much but never miss a write.
// Without a tick it returns the first Date advanced by the time since it
// came (early by less than a second).
func (c *cutoverStep) storeClock(ctx context.Context, r *engine.Run, e *cutoverEnv) time.Time {
	tlsCfg, err := tlsConfig(r, e.a.cfg.CAFile, e.a.cfg.Insecure)
	if err != nil {
		return time.Time{}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	date := func() (time.Time, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(e.a.Endpoint(), "/")+"/minio/health/live", nil)
		if err != nil {
			return time.Time{}, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return time.Time{}, err
		}
		resp.Body.Close()
		return http.ParseTime(resp.Header.Get("Date"))
	}
	first, err := date()
	if err != nil {
		return time.Time{}
	}
	firstAnswered := time.Now()
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		d, err := date()
		answered := time.Now()
		if err != nil {
			break
		}
		if d.After(first) {
			// The second ticked over at or before this answer arrived.
			return d.UTC().Add(time.Since(answered))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// No tick seen (a slow answer, or none): the first Date, advanced by
	// the time since it came, still errs early by less than a second.
	return first.UTC().Add(time.Since(firstAnswered))
}

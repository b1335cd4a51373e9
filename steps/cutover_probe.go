package steps

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// The write probe. Health is not writability: after a restart of every
// node at once, a node may refuse writes while /minio/health/cluster
// already answers 200 (docs/domain.md, "Restarting a cluster"). So a
// restart counts as done only once every server accepts a write of a small
// object through its own endpoint, into a bucket the cutover makes for it
// (probeBucketItem) and removes at its end and in its rollback; the write
// check before a rollback ignores that bucket. A server that still refuses
// once another accepts (so the erasure sets have write quorum: the fault is
// the node's) is restarted alone: its environment now equals its peers', so
// MinIO's start-up check passes (docs/domain.md, "Restarting a cluster").

// probeBucket is the bucket attempt g's write probes write in.
type probeBucket struct {
	Bucket string `json:"bucket"`
}

// writeProbeResult is what the write probe saw once every server accepted
// a write. The window runs from the first failed probe (the health probe
// during the restart, or a write probe) until every server accepted.
type writeProbeResult struct {
	Servers      []string  `json:"servers"`
	FirstFailed  time.Time `json:"first_failed_at,omitzero"`
	AllAccepted  time.Time `json:"all_accepted_at"`
	WindowMS     int64     `json:"window_ms"`
	LoneRestarts []string  `json:"lone_restarts,omitempty"`
}

// loneRestart is one server restarted alone: the intent (Why: its last
// refusal) before its restart command runs, then (Node: the env file or
// name the platform restarted it by) once it returned.
type loneRestart struct {
	At   time.Time `json:"at"`
	Why  string    `json:"why,omitempty"`
	Node string    `json:"node,omitempty"`
}

// serverRestarter is a platform that can restart the node of one server
// alone (linuxPlatform). On the others the probe writes through the
// object store's endpoint and restarts nothing alone.
type serverRestarter interface {
	// RestartServer restarts the node that serves server (host:port as
	// the object store lists it) and returns its name (its env file).
	RestartServer(ctx context.Context, r *engine.Run, server string) (string, error)
}

const (
	// writeProbeEvery is the pause between two rounds of write probes.
	writeProbeEvery = 500 * time.Millisecond
	// writeProbeTimeout bounds one probe's PUT (a node that hangs refuses).
	writeProbeTimeout = 5 * time.Second
	// loneRestartAfter is how long a server may refuse writes while another
	// accepts before it is restarted alone. MinIO itself may take up to
	// about 16 s to reconnect it (docs/domain.md), while a client with
	// minio-go's default retries gives up after about 4 s on average
	// (BENCHMARKS.md, cutover): waiting longer loses requests.
	loneRestartAfter = 3 * time.Second
	// loneRestartSettle is how long at least the probe waits for a node
	// restarted alone: a peer's drive it missed at start-up is tried again
	// after 0 to 1 s, then every 15 s (docs/domain.md, "Restarting a
	// cluster").
	loneRestartSettle = 20 * time.Second
)

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// probeTarget is one server the probe writes through.
type probeTarget struct {
	server string // host:port as the object store lists it, or the aistor endpoint's
	s3     *minio.Client
	base   string       // scheme://host:port of the server's own endpoint
	hc     *http.Client // for its cluster health check, over the S3 client's TLS settings
}

// confirmWrites returns once every server accepts a write through its own
// endpoint after attempt g's restart (back: the rollback's, onto KES) and
// has loaded its buckets' metadata, restarting alone, once each, a server
// that refuses while another accepts and is not still starting. It records
// the result (writableItem) and reports the window from the first failed
// probe until every server accepted. Errors: a server (or every one) still
// refusing after wait_timeout, named with its last refusal; one still
// loading its buckets then is a warning (removeProbeBucket waits again).
func (c *cutoverStep) confirmWrites(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool) error {
	done := writableItem(g, back)
	if done.Done(r) {
		return nil
	}
	deadline := time.Now().Add(e.wait)
	bucket, err := c.probeBucketName(r, g)
	if err != nil {
		return err
	}
	targets, err := c.probeTargets(ctx, r, e, deadline)
	if err != nil {
		return err
	}
	byServer := make(map[string]probeTarget, len(targets))
	for _, t := range targets {
		byServer[t.server] = t
	}
	restarter, _ := e.plat.(serverRestarter)
	var (
		firstFailed  time.Time
		acceptedAt   time.Time                // every server accepted, since
		refusedSince = map[string]time.Time{} // server → refusing while another accepts, since
		last         map[string]string
	)
	for {
		last = probeRound(ctx, targets, bucket)
		now := time.Now()
		var refused []string
		for _, t := range targets {
			if last[t.server] != "" {
				refused = append(refused, t.server)
			} else {
				delete(refusedSince, t.server)
			}
		}
		if len(refused) == 0 {
			if acceptedAt.IsZero() {
				acceptedAt = now
			}
			// A server serves S3 before it has loaded its buckets' metadata
			// (it serves no bucket notifications or replication targets
			// until then), and that load heals every bucket it listed at
			// start with Recreate: on every node, even one removed meanwhile
			// (minio cmd/bucket-metadata-sys.go, concurrentLoad). The probe
			// bucket is removed next: wait for the load.
			loading := loadingRound(ctx, targets)
			if len(loading) == 0 || time.Now().After(deadline) {
				if len(loading) > 0 {
					r.Warnf("every server accepts writes, but %s still loading its buckets' metadata after wait_timeout (%s): %s; it serves no bucket notifications or replication until it has (raise wait_timeout for an object store with many buckets)",
						plural(len(loading), "server is", "servers are"), e.wait, describeLoading(targets, loading))
				}
				return c.writesAccepted(r, e, g, back, targets, firstFailed, acceptedAt, len(loading) == 0)
			}
		} else {
			acceptedAt = time.Time{}
		}
		for _, s := range refused {
			if strings.HasPrefix(last[s], accessDenied) {
				// No wait or restart changes what the credentials may do.
				return engine.WithHint(fmt.Errorf("probe writes through server %s: %s", s, last[s]),
					"the aistor block's access key must be allowed to make, write, list and remove the buckets runbook-write-probe-* (s3:CreateBucket, s3:PutObject, s3:ListBucket, s3:DeleteObject, s3:DeleteBucket): the cutover proves each server writable with them after the restart")
			}
		}
		if firstFailed.IsZero() && len(refused) > 0 {
			firstFailed = now
		}
		if len(refused) < len(targets) && restarter != nil {
			// Another server accepted: the erasure sets have write quorum,
			// and the refusal is the node's own.
			for _, s := range refused {
				if refusedSince[s].IsZero() {
					refusedSince[s] = now
				}
				if now.Sub(refusedSince[s]) < loneRestartAfter || loneRestarted(g, back).Item(s).Done(r) {
					continue
				}
				if st := startupStatus(ctx, byServer[s]); st != "" {
					// Still starting (a key other than root's is refused
					// until its IAM is loaded): a restart would only start
					// it over. Its 3 s run from the end of its start-up.
					refusedSince[s] = time.Now()
					continue
				}
				if err := c.restartAlone(ctx, r, e, restarter, g, back, s, last[s]); err != nil {
					return err
				}
				refusedSince[s] = time.Now()
				// A node restarted alone may need MinIO's next drive check
				// to find its peers' drives: give it that much at least.
				deadline = later(deadline, time.Now().Add(loneRestartSettle))
				break // one at a time: the others keep the write quorum
			}
		}
		if len(refused) > 0 && time.Now().After(deadline) {
			return c.writesRefused(ctx, r, e, g, back, targets, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(writeProbeEvery):
		}
	}
}

// probeBucketName is attempt g's probe bucket, named (at random: a bucket
// of that name is the runbook's own) and recorded before it is made.
func (c *cutoverStep) probeBucketName(r *engine.Run, g int) (string, error) {
	it := probeBucketItem(g)
	if pb, ok, err := it.Get(r); err != nil || ok {
		return pb.Bucket, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	pb := probeBucket{Bucket: "runbook-write-probe-" + hex.EncodeToString(b)}
	return pb.Bucket, it.Put(r, pb)
}

// probeTargets lists every server (every pool, as the object store lists
// them) with an S3 client of its own endpoint; on a platform that cannot
// restart one node alone, the object store's endpoint alone. It asks
// until deadline while the object store does not answer.
func (c *cutoverStep) probeTargets(ctx context.Context, r *engine.Run, e *cutoverEnv, deadline time.Time) ([]probeTarget, error) {
	u, err := url.Parse(e.a.Endpoint())
	if err != nil {
		return nil, fmt.Errorf("parse endpoint: %w", err)
	}
	servers := []string{u.Host}
	if _, ok := e.plat.(serverRestarter); ok {
		admin, _, err := e.a.Clients(r)
		if err != nil {
			return nil, err
		}
		for {
			cctx, cancel := context.WithTimeout(ctx, checkTimeout)
			info, err := admin.ServerInfo(cctx)
			cancel()
			if err == nil {
				servers = servers[:0]
				for _, s := range storeServers(info) {
					servers = append(servers, s.Endpoint)
				}
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, fmt.Errorf("list the servers to probe their writes (admin server info): %w", err)
			}
			time.Sleep(time.Second)
		}
	}
	tlsCfg, err := tlsConfig(r, e.a.cfg.CAFile, e.a.cfg.Insecure)
	if err != nil {
		return nil, err
	}
	var targets []probeTarget
	for _, s := range servers {
		tr := probeTransport(tlsCfg)
		// One attempt per probe: the probe itself asks again.
		s3, err := minio.New(s, &minio.Options{Creds: credentials.NewStaticV4(e.a.cfg.AccessKey, e.a.cfg.SecretKey, ""), Secure: u.Scheme == "https", Transport: tr, MaxRetries: 1})
		if err != nil {
			return nil, fmt.Errorf("make S3 client of server %s: %w", s, err)
		}
		targets = append(targets, probeTarget{server: s, s3: s3, base: u.Scheme + "://" + s, hc: &http.Client{Transport: tr}})
	}
	return targets, nil
}

// probeTransport is the transport of one server's probes, with its own
// copy of tlsCfg: net/http's HTTP/2 set-up writes "h2" into the config's
// NextProtos at a transport's first request, so transports that shared one
// config wrote it at once when every server was asked at once (a cutover
// resumed after a kill crashed in http2configureTransports, SIGSEGV).
func probeTransport(tlsCfg *tls.Config) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg.Clone()
	return tr
}

// startupStatus is what server t's own cluster check says of its start-up
// (x-minio-server-status): "offline" before its object layer is up,
// "bucket-metadata-offline" until it has loaded its buckets' metadata,
// "iam-offline" until its IAM store exists (its users may load later);
// "" past these, and when the check does not answer: a server that is down
// makes no bucket again, and the write probe judges it (minio
// cmd/healthcheck-handler.go, checkHealth).
func startupStatus(ctx context.Context, t probeTarget) string {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	resp, err := clusterHealth(cctx, t.hc, t.base)
	if err != nil || resp.StatusCode == http.StatusOK {
		return ""
	}
	return resp.Header.Get("x-minio-server-status")
}

// loadingBuckets reports whether a start-up status means the server has
// yet to list and load its buckets.
func loadingBuckets(status string) bool {
	return status == "offline" || status == "bucket-metadata-offline"
}

// loadingRound asks every target's own cluster check at once and returns,
// by server, the status of each that has yet to load its buckets; empty
// once none has.
func loadingRound(ctx context.Context, targets []probeTarget) map[string]string {
	return askEach(targets, func(t probeTarget) string {
		if st := startupStatus(ctx, t); loadingBuckets(st) {
			return st
		}
		return ""
	})
}

// askEach asks every target at once and returns, by server, the answers
// that are not "".
func askEach(targets []probeTarget, ask func(probeTarget) string) map[string]string {
	out := make(map[string]string, len(targets))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Go(func() {
			if a := ask(t); a != "" {
				mu.Lock()
				out[t.server] = a
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
}

// probeRound writes one probe object through every target at once and
// returns, by server, why it refused (absent when it accepted). A bucket
// not there yet is made through the server that found it missing.
func probeRound(ctx context.Context, targets []probeTarget, bucket string) map[string]string {
	return askEach(targets, func(t probeTarget) string { return probeWrite(ctx, t, bucket) })
}

func probeWrite(ctx context.Context, t probeTarget, bucket string) string {
	cctx, cancel := context.WithTimeout(ctx, writeProbeTimeout)
	defer cancel()
	body := fmt.Appendf(nil, "runbook write probe through %s at %s\n", t.server, time.Now().UTC().Format(time.RFC3339Nano))
	put := func() error {
		_, err := t.s3.PutObject(cctx, bucket, "probe/"+t.server, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{})
		return err
	}
	err := put()
	if err != nil && minio.ToErrorResponse(err).Code == "NoSuchBucket" {
		if err = t.s3.MakeBucket(cctx, bucket, minio.MakeBucketOptions{}); err == nil || minio.ToErrorResponse(err).Code == "BucketAlreadyOwnedByYou" {
			err = put()
		}
	}
	if err != nil {
		if minio.ToErrorResponse(err).Code == "AccessDenied" {
			return accessDenied + err.Error()
		}
		return err.Error()
	}
	return ""
}

// accessDenied marks a probe refused for the credentials, not the node.
const accessDenied = "access denied: "

// restartAlone restarts server's node alone, recording the intent before
// and the return after (a resume after a kill in between restarts it again
// if it still refuses).
func (c *cutoverStep) restartAlone(ctx context.Context, r *engine.Run, e *cutoverEnv, p serverRestarter, g int, back bool, server, why string) error {
	r.Logf("server %s still refuses writes through its own endpoint while others accept (%s): restarting it alone", server, why)
	if err := loneRestarts(g, back).Item(server).Put(r, loneRestart{At: time.Now().UTC(), Why: why}); err != nil {
		return err
	}
	// Bounded as the restart of every node is.
	rctx, cancel := context.WithTimeout(ctx, e.wait)
	node, err := p.RestartServer(rctx, r, server)
	cancel()
	if err != nil {
		return err
	}
	return loneRestarted(g, back).Item(server).Put(r, loneRestart{At: time.Now().UTC(), Node: node})
}

// writesAccepted records and reports that every server accepted a write.
// loaded: every server has loaded its buckets' metadata.
func (c *cutoverStep) writesAccepted(r *engine.Run, e *cutoverEnv, g int, back bool, targets []probeTarget, firstFailed, at time.Time, loaded bool) error {
	res := writeProbeResult{AllAccepted: at.UTC(), FirstFailed: firstFailed}
	for _, t := range targets {
		res.Servers = append(res.Servers, t.server)
	}
	// The restart's health probe failed first, usually (its first failure,
	// recorded with the healthy phase). A healthy record that does not
	// decode is ignored, as before: it only widens the window reported.
	if h, ok, err := restartItemsOf(g, back).healthy.Get(r); err == nil && ok && !h.DownAt.IsZero() && (res.FirstFailed.IsZero() || h.DownAt.Before(res.FirstFailed)) {
		res.FirstFailed = h.DownAt
	}
	if !res.FirstFailed.IsZero() {
		res.FirstFailed = res.FirstFailed.UTC()
		res.WindowMS = at.Sub(res.FirstFailed).Milliseconds()
	}
	if lone, err := loneRestarted(g, back).All(r); err == nil {
		for s := range lone {
			res.LoneRestarts = append(res.LoneRestarts, s)
		}
		slices.Sort(res.LoneRestarts)
	}
	if err := writableItem(g, back).Put(r, res); err != nil {
		return err
	}
	window := time.Duration(res.WindowMS) * time.Millisecond
	alone := "no server restarted alone"
	if len(res.LoneRestarts) > 0 {
		alone = "restarted alone: " + strings.Join(res.LoneRestarts, ", ")
	}
	var note string
	if loaded {
		note = "; each has loaded its buckets (its own /minio/health/cluster says so)"
	}
	r.Logf("every server accepts writes (%d probed through its own endpoint); writes were refused for %s, from the first failed probe until every server accepted one (%s)%s", len(targets), window.Round(100*time.Millisecond), alone, note)
	if !back {
		r.SetOutput("unavailable_seconds", cty.NumberFloatVal(window.Seconds()))
	}
	return nil
}

// writesRefused is the error once wait_timeout ran out with servers still
// refusing writes.
func (c *cutoverStep) writesRefused(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool, targets []probeTarget, last map[string]string) error {
	var refused, accepted []string
	for _, t := range targets {
		why := last[t.server]
		if why == "" {
			accepted = append(accepted, t.server)
			continue
		}
		s := fmt.Sprintf("%s (%s", t.server, why)
		if lr, ok, _ := loneRestarted(g, back).Item(t.server).Get(r); ok {
			s += fmt.Sprintf("; restarted alone at %s, %s", lr.At.Format(time.RFC3339), lr.Node)
		}
		refused = append(refused, s+")")
	}
	kms := kmsNameKeyManager
	if back {
		kms = kmsNameKES
	}
	msg := fmt.Sprintf("after the restart onto %s, %d of %d server(s) still refuse writes through their own endpoint after wait_timeout (%s; at least %s after a lone restart): %s", kms, len(refused), len(targets), e.wait, loneRestartSettle, strings.Join(refused, ", "))
	if len(accepted) > 0 {
		msg += "; these accept: " + strings.Join(accepted, ", ")
	}
	return errors.New(msg + "; the nodes' logs:" + e.plat.Logs(ctx, r))
}

// removeProbeBucket removes attempt g's probe bucket with the objects the
// probes wrote; nothing recorded, or no such bucket, is nothing to remove.
// A server loading its buckets' metadata heals every bucket it listed at
// start with Recreate, on every node (minio cmd/bucket-metadata-sys.go,
// concurrentLoad): the bucket is removed only while no server is loading
// them, and must be found gone once none is again (a server that started
// meanwhile made it again: removed again). A server that is down is not
// waited for: it lists the buckets when it starts. It asks again while
// nodes reconnect, up to wait_timeout (at least restartGrace).
func (c *cutoverStep) removeProbeBucket(ctx context.Context, r *engine.Run, e *cutoverEnv, g int) error {
	pb, ok, err := probeBucketItem(g).Get(r)
	if err != nil || !ok {
		return err
	}
	fail := func(err error) error { return fmt.Errorf("remove the write probe's bucket %s: %w", pb.Bucket, err) }
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return fail(err)
	}
	deadline := time.Now().Add(max(e.wait, restartGrace))
	targets, err := c.probeTargets(ctx, r, e, deadline)
	if err != nil {
		return fail(err)
	}
	removed := 0
	for {
		err := awaitLoaded(ctx, targets, deadline)
		if err == nil {
			var existed bool
			if existed, err = removeBucket(ctx, s3, pb.Bucket); err == nil && !existed {
				break
			}
			if err == nil {
				// Removed: look again once no server is loading, even past
				// the deadline the first time.
				if removed++; removed == 1 || !time.Now().After(deadline) {
					continue
				}
				return fail(fmt.Errorf("it was there again after each of %d removals", removed))
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fail(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	switch {
	case removed == 1:
		r.Logf("removed the write probe's bucket %s", pb.Bucket)
	case removed > 1:
		r.Logf("removed the write probe's bucket %s (%d times: a server that started meanwhile made it again)", pb.Bucket, removed)
	}
	return nil
}

// awaitLoaded returns once no target is loading its buckets' metadata;
// past deadline (one round at least), which still are.
func awaitLoaded(ctx context.Context, targets []probeTarget, deadline time.Time) error {
	for {
		loading := loadingRound(ctx, targets)
		if len(loading) == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return errors.New("servers still loading their buckets: " + describeLoading(targets, loading))
		}
		select {
		case <-ctx.Done():
		case <-time.After(writeProbeEvery):
		}
	}
}

// describeLoading names each server still loading its buckets with its
// start-up status, in the targets' order.
func describeLoading(targets []probeTarget, loading map[string]string) string {
	var names []string
	for _, t := range targets {
		if st, ok := loading[t.server]; ok {
			names = append(names, fmt.Sprintf("%s (%s)", t.server, st))
		}
	}
	return strings.Join(names, ", ")
}

// removeBucket empties and removes bucket; existed is false when there
// was no such bucket.
func removeBucket(ctx context.Context, s3 *minio.Client, bucket string) (existed bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	for obj := range s3.ListObjects(cctx, bucket, minio.ListObjectsOptions{Recursive: true}) {
		if obj.Err != nil {
			if minio.ToErrorResponse(obj.Err).Code == "NoSuchBucket" {
				return false, nil
			}
			return true, obj.Err
		}
		if err := s3.RemoveObject(cctx, bucket, obj.Key, minio.RemoveObjectOptions{}); err != nil {
			return true, err
		}
	}
	if err := s3.RemoveBucket(cctx, bucket); err != nil {
		if minio.ToErrorResponse(err).Code == "NoSuchBucket" {
			return false, nil
		}
		return true, err
	}
	return true, nil
}

package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"

	"github.com/runbook-dev/runbook/engine"
)

// Rollback undoes the cutover's last attempt: every node's environment
// restored, the nodes restarted onto KES, the recorded sample read back. It
// is idempotent and resumable from the journal: a node already restored is
// not written again, and a restart done and confirmed is not done again. It
// refuses (engine.ErrRefused) when the object store changed after the
// cutover's restart, unless forced.
func (c *cutoverStep) Rollback(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.plat.Close()
	g := cutoverGen(r)
	if g > 0 && !settingsItem(g).Done(r) {
		// The last attempt was rolled back completely and none was begun
		// since: confirm it is still so (each move is checkpointed, so
		// nothing is done twice).
		g--
		r.Logf("attempt %d was rolled back when it failed: confirming every node is as it was", g+1)
	}
	return c.rollback(ctx, r, e, g)
}

// rollbackBegun reports whether a rollback of attempt g began restoring or
// restarting without finishing (no rolled-back mark).
func (c *cutoverStep) rollbackBegun(r *engine.Run, g int) bool {
	return restoreItem(g).Done(r) || restartItemsOf(g, true).restart.Done(r)
}

// rollback restores attempt g's environment, restarts if the nodes were
// restarted, and confirms AIStor reads the sample through KES again. Each
// move is checkpointed, so running it again after a failure restarts
// nothing it already restarted. It refuses when the object store changed
// after the restart, unless forced.
func (c *cutoverStep) rollback(ctx context.Context, r *engine.Run, e *cutoverEnv, g int) error {
	if !settingsItem(g).Done(r) {
		r.Logf("nothing to undo: no node's environment was changed")
		return nil
	}
	// A recorded restart or sample that does not decode is an error: read
	// as absent, the rollback would restart nothing and check no write.
	rs, restarted, err := restartItemsOf(g, false).restart.Get(r)
	if err != nil {
		return err
	}
	backBegun := restartItemsOf(g, true).restart.Done(r)
	if restarted && !backBegun && !c.neverServed(ctx, r, e, g, rs) {
		// Once the rollback's own restart began, the object store runs on
		// KES again: what it writes from then on, KES sealed.
		if err := c.checkNoNewWrites(ctx, r, e, g, rs); err != nil {
			return err
		}
	}
	if !restoreItem(g).Done(r) {
		if err := restoreItem(g).Put(r, markNow()); err != nil {
			return err
		}
	}
	if err := e.plat.Restore(ctx, r, g); err != nil {
		return err
	}
	if !restarted {
		r.Logf("the nodes were not restarted by the cutover: restoring their environment is all")
		return nil
	}
	s, _, err := sampleItem.Get(r)
	if err != nil {
		return err
	}
	if err := c.restartAndConfirm(ctx, r, e, g, true, &s); err != nil {
		return fmt.Errorf("after restoring the nodes' environment: %w", err)
	}
	return c.removeProbeBucket(ctx, r, e, g)
}

// neverServed reports whether the evidence says no node served on the Key
// Manager after attempt g's restart, so nothing can have been sealed under
// it and the write check (which cannot list an object store that is down)
// is not needed: the journal's report of the cutover's wait (reportedItem)
// saw no server online and no KMS status, the attempt was never healthy,
// and no server answers online now. Anything else leaves the judgement to
// checkNoNewWrites.
func (c *cutoverStep) neverServed(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, rs cutoverRestart) bool {
	// A report that does not decode is no evidence: the write check judges,
	// as before.
	rep, ok, err := reportedItem(g).Get(r)
	if err != nil || !ok || !rep.neverServed() || restartItemsOf(g, false).healthy.Done(r) {
		return false
	}
	if admin, _, err := e.a.Clients(r); err == nil {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		info, err := admin.ServerInfo(cctx)
		cancel()
		if err == nil {
			for _, s := range info.Servers {
				if s.State == string(madmin.ItemOnline) {
					return false // it serves now: the write check can list it
				}
			}
		}
	}
	r.Logf("no node served on the Key Manager after the cutover's restart at %s: in %d health check(s) MinIO listed no server online and reported no KMS status, and none is online now; MinIO exits at start-up when it cannot reach its KMS, so nothing can have been sealed under the Key Manager: rolling back without the write check", rs.At.Format(time.RFC3339), rep.Checks)
	return true
}

// writeCheckMargin widens the window of the write check before a rollback
// for clock differences between the object store's hosts: the host that
// stamped a write may run a little behind the one whose clock was read
// (storeClock, itself read to within a round trip, erring early). Nodes on
// one host share its clock and get no margin. Erring early only reports
// too much.
const writeCheckMargin = 250 * time.Millisecond

// checkNoNewWrites refuses a rollback once the object store may hold data
// sealed by the Key Manager: any bucket created, object version written,
// IAM user or group changed, or config changed since the restart
// began, judged by the object store's own clock (cutoverRestart.StoreAt,
// less writeCheckMargin; this host's clock when the store did not answer).
// A listing of buckets, objects or config history that fails refuses too:
// what cannot be seen cannot be excluded. An IAM entry or bucket
// configuration recorded before the restart that vanished or does not read
// is reported, not counted (iamWrites): the rollback's restart checks that
// they read on KES again (checkIAMAfterRestart). With rollback --force it
// lists what it found and goes on.
func (c *cutoverStep) checkNoNewWrites(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, rs cutoverRestart) error {
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	since, clock := rs.StoreAt, "the object store's clock"
	if since.IsZero() {
		since, clock = rs.At, "this host's clock (the object store did not tell its time)"
	}
	margin := time.Duration(0)
	if e.plat.Hosts() > 1 {
		margin = writeCheckMargin
	}
	since = since.Add(-margin)
	probe, _, _ := probeBucketItem(g).Get(r)
	w := writesSince(ctx, admin, s3, rs, since, probe.Bucket)
	found, failed, reported := w.found, w.failed, w.reported
	when := fmt.Sprintf("%s (%s)", since.Add(margin).Format(time.RFC3339Nano), clock)
	if margin > 0 {
		when = fmt.Sprintf("%s (%s, less %s for the clocks of %d hosts)", since.Add(margin).Format(time.RFC3339Nano), clock, margin, e.plat.Hosts())
	}
	if len(reported) > 0 {
		r.Warnf("since the cutover's restart at %s, not counted as writes (a vanished or unreadable entry is none; the rollback checks after its restart that MinIO's IAM and bucket configurations read on KES): %s", when, strings.Join(shortList(reported, 20), "; "))
	}
	if len(failed) > 0 {
		msg := fmt.Sprintf("cannot check whether the object store changed since the cutover's restart at %s: %s", when, strings.Join(failed, "; "))
		if r.Forced() {
			r.Warnf("rolling back although %s (forced)", msg)
		} else {
			healthy := "it never became healthy on the Key Manager, but it may have answered writes all the same"
			if restartItemsOf(g, false).healthy.Done(r) {
				healthy = "it was healthy on the Key Manager after the restart"
			}
			return engine.Refusef("%s (%s). KES may not read what the Key Manager sealed, so the rollback stops: bring the object store up (the nodes' logs say why it is not) and run rollback again, or, if you know nothing was written, force it with runbook rollback --force", msg, healthy)
		}
	}
	if len(found) == 0 {
		if len(failed) == 0 {
			r.Logf("no object was written and no bucket created since the restart at %s; no IAM or config change either", when)
		}
		return nil
	}
	slices.Sort(found)
	found = slices.Compact(found)
	msg := fmt.Sprintf("the object store was written after the cutover's restart at %s, so the Key Manager may have sealed data that KES cannot read: %s", when, strings.Join(shortList(found, 50), ", "))
	if r.Forced() {
		r.Warnf("rolling back although %s (forced)", msg)
		return nil
	}
	return engine.Refusef("%s. Rolling back would make those unreadable: copy the objects off (and write them again after the rollback), note the IAM and config changes, or force it with runbook rollback --force", msg)
}

// storeWrites is what changed in an object store since a time.
type storeWrites struct {
	found    []string // objects, buckets, bucket configurations, IAM entries and config changes written since
	failed   []string // listings that failed: nothing can be said of what they cover
	reported []string // entries that vanished or do not read: reported, never counted as writes
}

// writesSince lists what the object store holds that changed after since:
// every bucket (but skip, the write probe's own) and its objects with
// their versions, the bucket configurations recorded in rs, the IAM
// entries and the config history.
func writesSince(ctx context.Context, admin *madmin.AdminClient, s3 *minio.Client, rs cutoverRestart, since time.Time, skip string) storeWrites {
	var w storeWrites
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		w.failed = append(w.failed, fmt.Sprintf("list buckets: %v", err))
	}
	for _, b := range buckets {
		if b.Name == skip {
			continue // the write probe's own (cutover_probe.go)
		}
		if b.CreationDate.After(since) {
			w.found = append(w.found, b.Name+"/ (bucket created)")
		} else if d, ok := rs.Buckets[b.Name]; ok {
			if now, err := bucketConfigDigest(ctx, s3, admin, b.Name); err != nil {
				w.reported = append(w.reported, err.Error())
			} else if now != d {
				w.found = append(w.found, b.Name+"/ (bucket configuration changed)")
			}
		}
		w.objectsSince(ctx, s3, b.Name, since)
	}
	iamFound, iamReported := iamWrites(ctx, admin, rs, since)
	w.found, w.reported = append(w.found, iamFound...), append(w.reported, iamReported...)
	if hist, err := admin.ListConfigHistoryKV(ctx, 10); err != nil {
		w.failed = append(w.failed, fmt.Sprintf("list config history: %v", err))
	} else {
		for _, h := range hist {
			if h.CreateTime.After(since) {
				w.found = append(w.found, "config change "+h.RestoreID)
			}
		}
	}
	return w
}

// objectsSince adds bucket's objects (every version) modified after since.
func (w *storeWrites) objectsSince(ctx context.Context, s3 *minio.Client, bucket string, since time.Time) {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for obj := range s3.ListObjects(lctx, bucket, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
		if obj.Err != nil {
			w.failed = append(w.failed, fmt.Sprintf("list objects of %s: %v", bucket, obj.Err))
			return
		}
		if obj.LastModified.After(since) {
			w.found = append(w.found, bucket+"/"+obj.Key)
		}
	}
}

// bucketConfigs digests each bucket's configuration as the S3 and admin
// APIs show it (policy, encryption, versioning, tagging, lifecycle, object
// lock, notification, replication, quota: MinIO keeps them in the bucket's
// metadata, sealed with the default key), bucket name → SHA-256;
// nil when the object store does not answer. S3 reports no time for these,
// so the write check compares them with the digests taken before the
// restart.
func (c *cutoverStep) bucketConfigs(ctx context.Context, r *engine.Run, e *cutoverEnv) map[string]string {
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return nil
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, b := range buckets {
		d, err := bucketConfigDigest(ctx, s3, admin, b.Name)
		if err != nil {
			return nil
		}
		out[b.Name] = d
	}
	return out
}

// bucketConfigDigest is the SHA-256 of one bucket's configuration; a
// configuration that is not set (404) counts as empty.
func bucketConfigDigest(ctx context.Context, s3 *minio.Client, admin *madmin.AdminClient, bucket string) (string, error) {
	h := sha256.New()
	part := func(what string, v any, err error) error {
		if err != nil {
			if minio.ToErrorResponse(err).StatusCode == http.StatusNotFound || madmin.ToErrorResponse(err).Code == "XMinioAdminNoSuchQuotaConfiguration" {
				v = nil
			} else {
				return fmt.Errorf("read the %s of bucket %s: %w", what, bucket, err)
			}
		}
		b, _ := json.Marshal(v)
		fmt.Fprintf(h, "%s %s\n", what, b)
		return nil
	}
	reads := []struct {
		what string
		read func() (any, error)
	}{
		{"policy", func() (any, error) { return s3.GetBucketPolicy(ctx, bucket) }},
		{"encryption", func() (any, error) { return s3.GetBucketEncryption(ctx, bucket) }},
		{"versioning", func() (any, error) { return s3.GetBucketVersioning(ctx, bucket) }},
		{"tagging", func() (any, error) {
			tg, err := s3.GetBucketTagging(ctx, bucket)
			if tg == nil {
				return nil, err
			}
			return tg.ToMap(), err
		}},
		{"lifecycle", func() (any, error) { return s3.GetBucketLifecycle(ctx, bucket) }},
		{"object lock", func() (any, error) {
			mode, validity, unit, err := s3.GetBucketObjectLockConfig(ctx, bucket)
			var lock []string
			if mode != nil {
				lock = append(lock, string(*mode))
			}
			if validity != nil && unit != nil {
				lock = append(lock, fmt.Sprint(*validity), string(*unit))
			}
			return lock, err
		}},
		{"notification", func() (any, error) { return s3.GetBucketNotification(ctx, bucket) }},
		{"replication", func() (any, error) { return s3.GetBucketReplication(ctx, bucket) }},
		{"quota", func() (any, error) { return admin.GetBucketQuota(ctx, bucket) }},
	}
	for _, rd := range reads {
		v, err := rd.read()
		if err := part(rd.what, v, err); err != nil {
			return "", err
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

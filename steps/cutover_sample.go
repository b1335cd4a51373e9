package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/runbook-dev/runbook/engine"
)

// sampleRetryWindow bounds how long validation asks again for a sampled
// object that does not read (at most wait_timeout).
const sampleRetryWindow = time.Minute

// maxSampleScan bounds how many objects of one bucket the sample lists to
// classify them (SSE-S3, SSE-KMS, SSE-C, none).
const maxSampleScan = 10000

// sampledObject is one object of the validation sample.
type sampledObject struct {
	Bucket string `json:"bucket"`
	Key    string `json:"key"`
	SSE    string `json:"sse"`               // "SSE-S3", "SSE-KMS" or "none" (validate_objects only)
	KMSKey string `json:"kms_key,omitempty"` // an SSE-KMS object's key, as the listing shows it
	// SHA256 is the hex digest of the object's content read through KES
	// before any change (never the content itself: objects may be secret).
	SHA256 string `json:"sha256,omitempty"`
	Size   int64  `json:"size"`
}

func (o sampledObject) name() string { return o.Bucket + "/" + o.Key }

// cutoverSample is the object sample, chosen at plan time (and bound into
// the plan's fingerprint), read and digested before any change, and read
// again byte for byte after each restart: SSE-S3 and SSE-KMS objects of
// every bucket that has any (sample_per_bucket each, or all with
// validate_all), plus validate_objects, less exclude_objects. SSE-C
// objects are counted and left out: their keys are the clients' own.
type cutoverSample struct {
	Objects []sampledObject `json:"objects"`
	// SSEC counts the SSE-C objects seen per bucket.
	SSEC map[string]int `json:"ssec,omitempty"`
	// Truncated names the buckets listed only up to maxSampleScan objects.
	Truncated []string `json:"truncated,omitempty"`
	// Excluded are the exclude_objects that the sample left out.
	Excluded []string `json:"excluded,omitempty"`
	Buckets  int      `json:"buckets"`
	// BucketKeys are the SSE-KMS keys the buckets' encryption
	// configurations name, by bucket: MinIO seals new objects under them.
	BucketKeys map[string][]string `json:"bucket_keys,omitempty"`
}

// sampleFault is an object of the sample that does not read through KES
// before any change: a fault that predates the cutover.
type sampleFault struct {
	Object string
	Key    string // the KMS key it was sealed with, as far as the API shows
	Reason string
}

func metaGet(m map[string]string, name string) string {
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// listedSSE classifies an object from a listing with metadata (MinIO's
// metadata=true extension, cmd/api-response.go): "SSE-S3", "SSE-KMS" (with
// its key name), "SSE-C", or "" when it is not encrypted.
func listedSSE(meta map[string]string) (kind, kmsKey string) {
	switch {
	case metaGet(meta, "X-Amz-Server-Side-Encryption-Customer-Algorithm") != "":
		return "SSE-C", ""
	case metaGet(meta, "X-Amz-Server-Side-Encryption") == "AES256":
		return "SSE-S3", ""
	case metaGet(meta, "X-Amz-Server-Side-Encryption") == "aws:kms":
		return "SSE-KMS", strings.TrimPrefix(metaGet(meta, "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"), kmsARNPrefix)
	}
	return "", ""
}

// chooseSample lists every bucket and picks the sample: up to e.sample
// encrypted objects of each bucket (every one with validate_all), then each
// object validate_objects names. Errors: a listing that fails, or a
// validate_objects entry that does not exist.
func (c *cutoverStep) chooseSample(ctx context.Context, r *engine.Run, e *cutoverEnv) (*cutoverSample, error) {
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return nil, err
	}
	excluded := map[string]bool{}
	for _, o := range c.cfg.ExcludeObjects {
		excluded[o] = true
	}
	s := &cutoverSample{SSEC: map[string]int{}}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return nil, fmt.Errorf("list buckets of %s: %w", hostOf(e.a.Endpoint()), err)
	}
	s.Buckets = len(buckets)
	seen := map[string]bool{}
	for _, b := range buckets {
		if err := c.sampleBucket(ctx, s3, b.Name, e.sample, excluded, s, seen); err != nil {
			return nil, err
		}
	}
	if s.BucketKeys, err = bucketKeysOf(ctx, s3, buckets); err != nil {
		return nil, err
	}
	for _, name := range c.cfg.ValidateObjects {
		if seen[name] || excluded[name] {
			continue
		}
		o, ok, err := statNamedObject(ctx, r, s3, name)
		if err != nil {
			return nil, err
		}
		if !ok {
			s.SSEC[o.Bucket]++
			continue
		}
		s.Objects = append(s.Objects, o)
		seen[name] = true
	}
	for _, name := range c.cfg.ExcludeObjects {
		if !envContains(s.Excluded, name) {
			r.Warnf("exclude_objects names %s, which the sample would not have read (no such encrypted object)", name)
		}
	}
	return s, nil
}

// sampleBucket adds up to limit of bucket's encrypted objects to s (every
// one with validate_all), scanning at most maxSampleScan: SSE-C objects
// are counted, unencrypted ones skipped (they prove nothing about a KMS),
// excluded ones listed.
func (c *cutoverStep) sampleBucket(ctx context.Context, s3 *minio.Client, bucket string, limit int, excluded map[string]bool, s *cutoverSample, seen map[string]bool) error {
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n, scanned := 0, 0
	for obj := range s3.ListObjects(lctx, bucket, minio.ListObjectsOptions{Recursive: true, WithMetadata: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list objects of %s: %w", bucket, obj.Err)
		}
		if scanned++; scanned > maxSampleScan {
			s.Truncated = append(s.Truncated, bucket)
			return nil
		}
		o := sampledObject{Bucket: bucket, Key: obj.Key, Size: obj.Size}
		o.SSE, o.KMSKey = listedSSE(obj.UserMetadata)
		switch o.SSE {
		case "SSE-C":
			s.SSEC[bucket]++
			continue
		case "":
			continue // not encrypted: proves nothing about a KMS
		}
		if excluded[o.name()] {
			s.Excluded = append(s.Excluded, o.name())
			continue
		}
		if c.cfg.ValidateAll || n < limit {
			s.Objects = append(s.Objects, o)
			seen[o.name()] = true
			n++
		}
	}
	return nil
}

// bucketKeysOf are the SSE-KMS keys the buckets' encryption configurations
// name, by bucket (nil when none names one).
func bucketKeysOf(ctx context.Context, s3 *minio.Client, buckets []minio.BucketInfo) (map[string][]string, error) {
	var out map[string][]string
	for _, b := range buckets {
		keys, err := bucketKMSKeys(ctx, s3, b.Name)
		if err != nil {
			return nil, err
		}
		if len(keys) > 0 {
			if out == nil {
				out = map[string][]string{}
			}
			out[b.Name] = keys
		}
	}
	return out, nil
}

// currentBucketKeys reads the buckets' encryption configurations again
// (bucketKeysOf): what a recorded sample says of them may have changed
// since, as an operator fixes what a refusal named.
func (c *cutoverStep) currentBucketKeys(ctx context.Context, r *engine.Run, e *cutoverEnv) (map[string][]string, error) {
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return nil, err
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return nil, fmt.Errorf("list buckets of %s: %w", hostOf(e.a.Endpoint()), err)
	}
	return bucketKeysOf(ctx, s3, buckets)
}

// bucketKMSKeys are the SSE-KMS keys bucket's encryption configuration
// names (none without one, or with SSE-S3).
func bucketKMSKeys(ctx context.Context, s3 *minio.Client, bucket string) ([]string, error) {
	cfg, err := s3.GetBucketEncryption(ctx, bucket)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "ServerSideEncryptionConfigurationNotFoundError" {
			return nil, nil
		}
		return nil, fmt.Errorf("read encryption configuration of bucket %s: %w", bucket, err)
	}
	var keys []string
	for _, rule := range cfg.Rules {
		if id := strings.TrimPrefix(rule.Apply.KmsMasterKeyID, kmsARNPrefix); id != "" {
			keys = append(keys, id)
		}
	}
	return keys, nil
}

// statNamedObject reads what validate_objects' BUCKET/KEY is. ok is false
// for an SSE-C object, which never touches a KMS and is left out (with a
// warning); an object that does not exist is an error.
func statNamedObject(ctx context.Context, r *engine.Run, s3 *minio.Client, name string) (o sampledObject, ok bool, err error) {
	b, k, _ := strings.Cut(name, "/")
	st, err := s3.StatObject(ctx, b, k, minio.StatObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).StatusCode == http.StatusBadRequest {
			// MinIO answers a HEAD of an SSE-C object without its key with 400.
			r.Warnf("validate_objects names %s, which is encrypted with a customer key (SSE-C): it never touches a KMS and cannot be read without the client's key; left out of the sample", name)
			return sampledObject{Bucket: b, Key: k}, false, nil
		}
		return o, false, fmt.Errorf("validate_objects names %s: %w", name, err)
	}
	o = sampledObject{Bucket: b, Key: k, Size: st.Size, SSE: "none"}
	switch st.Metadata.Get("X-Amz-Server-Side-Encryption") {
	case "AES256":
		o.SSE = "SSE-S3"
	case "aws:kms":
		o.SSE = "SSE-KMS"
		o.KMSKey = strings.TrimPrefix(st.Metadata.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"), kmsARNPrefix)
	}
	return o, true, nil
}

// proveSample reads every sampled object in full through the object
// store as it runs today and records its SHA-256. An object that does not
// read is a pre-existing fault: the cutover refuses, naming each with its
// key and the reason, until it is fixed or listed in exclude_objects.
// defaultKey names the key of SSE-S3 objects, which the API does not show.
func (c *cutoverStep) proveSample(ctx context.Context, r *engine.Run, e *cutoverEnv, s *cutoverSample, defaultKey string) error {
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	var faults []sampleFault
	for i := range s.Objects {
		o := &s.Objects[i]
		sum, n, err := readObjectDigest(ctx, s3, o.Bucket, o.Key)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			key := o.KMSKey
			if o.SSE == "SSE-S3" {
				key = fmt.Sprintf("the default key at the time it was written (SSE-S3 does not show its key; the default key now is %q)", defaultKey)
			}
			faults = append(faults, sampleFault{Object: o.name(), Key: key, Reason: err.Error()})
			continue
		}
		o.SHA256, o.Size = sum, n
		r.Progress(int64(i+1), int64(len(s.Objects)))
	}
	if len(faults) == 0 {
		return nil
	}
	var lines []string
	for _, f := range faults {
		lines = append(lines, fmt.Sprintf("%s (key %s): %s", f.Object, f.Key, f.Reason))
	}
	quoted := make([]string, len(faults))
	for i, f := range faults {
		quoted[i] = fmt.Sprintf("%q", f.Object)
	}
	return engine.Refusef("%d object(s) of the sample do not read through KES today, before any change: a pre-existing fault, not the cutover's: %s. The cutover refuses, since it could not tell such a fault from one it caused: restore the object's key at KES or rewrite the object, or leave it out explicitly with exclude_objects = [%s] on the cutover block", len(faults), strings.Join(lines, "; "), strings.Join(quoted, ", "))
}

// lines describe the sample for the plan and the log.
func (s *cutoverSample) lines() []string {
	kinds := map[string]int{}
	buckets := map[string]bool{}
	for _, o := range s.Objects {
		kinds[o.SSE]++
		buckets[o.Bucket] = true
	}
	out := []string{fmt.Sprintf("object sample: %d object(s) of %d bucket(s) (SSE-S3 %d, SSE-KMS %d), each read in full through KES now; its SHA-256 is recorded and read again after the restart", len(s.Objects), len(buckets), kinds["SSE-S3"], kinds["SSE-KMS"])}
	var bs []string
	for b := range s.SSEC {
		if s.SSEC[b] > 0 {
			bs = append(bs, b)
		}
	}
	sort.Strings(bs)
	for _, b := range bs {
		out = append(out, fmt.Sprintf("bucket %s: %d SSE-C object(s) left out of the sample: they are encrypted with the clients' own keys, never touch a KMS, and cannot be read without those keys", b, s.SSEC[b]))
	}
	for _, x := range s.Excluded {
		out = append(out, fmt.Sprintf("%s left out of the sample (exclude_objects)", x))
	}
	for _, b := range s.Truncated {
		out = append(out, fmt.Sprintf("bucket %s: only its first %d objects were listed to choose the sample", b, maxSampleScan))
	}
	return out
}

func (s *cutoverSample) summary() string { return strings.Join(s.lines(), "; ") }

// validate reads the recorded sample back byte for byte (its SHA-256
// against the one recorded before the change) and checks that every
// bucket's encryption key still resolves at the KMS. It returns how many
// objects it read.
func (c *cutoverStep) validate(ctx context.Context, r *engine.Run, e *cutoverEnv, s *cutoverSample) (int, error) {
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return 0, err
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return 0, fmt.Errorf("list buckets: %w", err)
	}
	for _, b := range buckets {
		keys, err := bucketKMSKeys(ctx, s3, b.Name)
		if err != nil {
			return 0, err
		}
		for _, id := range keys {
			ks, err := admin.GetKeyStatus(ctx, id)
			if err != nil {
				return 0, fmt.Errorf("bucket %s's encryption key %q: %w", b.Name, id, err)
			}
			if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
				return 0, fmt.Errorf("bucket %s's encryption key %q fails its round trip: %s %s", b.Name, id, ks.EncryptionErr, ks.DecryptionErr)
			}
		}
	}
	if s == nil {
		return 0, nil
	}
	// Nodes restarted together can answer "not found" for an object for a
	// while after they report healthy, until each has reconnected to the
	// others' drives (seen on a 4-node cluster under load, bench/cutover):
	// an object that does not read is asked again until the deadline.
	deadline := time.Now().Add(min(e.wait, sampleRetryWindow))
	var failed []string
	retried := 0
	for i, o := range s.Objects {
		for attempt := 0; ; attempt++ {
			why := ""
			sum, _, err := readObjectDigest(ctx, s3, o.Bucket, o.Key)
			switch {
			case err != nil:
				why = fmt.Sprintf("%s: %v", o.name(), err)
			case o.SHA256 != "" && sum != o.SHA256:
				why = fmt.Sprintf("%s: its content differs from the one read before the change (sha256 %s, was %s)", o.name(), sum, o.SHA256)
			}
			if why == "" {
				if attempt > 0 {
					retried++
				}
				break
			}
			if ctx.Err() != nil || time.Now().After(deadline) {
				failed = append(failed, why)
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
		r.Progress(int64(i+1), int64(len(s.Objects)))
	}
	if retried > 0 {
		r.Logf("%d object(s) of the sample read only when asked again (nodes still reconnecting)", retried)
	}
	if len(failed) > 0 {
		return 0, fmt.Errorf("%d object(s) of the recorded sample do not read back: %s", len(failed), strings.Join(shortList(failed, 10), "; "))
	}
	return len(s.Objects), nil
}

// readObjectDigest reads an object in full (a HEAD proves nothing for SSE:
// only a GET decrypts) and returns its SHA-256 and length.
func readObjectDigest(ctx context.Context, s3 *minio.Client, bucket, key string) (string, int64, error) {
	obj, err := s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return "", 0, err
	}
	defer obj.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

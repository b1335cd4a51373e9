package steps

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/minio/minio-go/v7"

	"github.com/runbook-dev/runbook/engine"
)

// validate reads back the named objects, a sample of every bucket (or all
// objects) and checks every bucket's encryption configuration.
func (c *cutoverStep) validate(ctx context.Context, r *engine.Run, e *cutoverEnv) (int, error) {
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return 0, err
	}
	var objects [][2]string
	for _, o := range c.cfg.ValidateObjects {
		b, k, _ := strings.Cut(o, "/")
		objects = append(objects, [2]string{b, k})
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return 0, fmt.Errorf("list buckets: %w", err)
	}
	for _, b := range buckets {
		n := 0
		lctx, cancel := context.WithCancel(ctx)
		for obj := range s3.ListObjects(lctx, b.Name, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err != nil {
				cancel()
				return 0, fmt.Errorf("list objects of %s: %w", b.Name, obj.Err)
			}
			if !c.cfg.ValidateAll && n >= e.sample {
				break
			}
			objects = append(objects, [2]string{b.Name, obj.Key})
			n++
		}
		cancel()
		cfg, err := s3.GetBucketEncryption(ctx, b.Name)
		if err != nil {
			if minio.ToErrorResponse(err).Code == "ServerSideEncryptionConfigurationNotFoundError" {
				continue
			}
			return 0, fmt.Errorf("read encryption configuration of bucket %s: %w", b.Name, err)
		}
		for _, rule := range cfg.Rules {
			if id := strings.TrimPrefix(rule.Apply.KmsMasterKeyID, "arn:aws:kms:"); id != "" {
				ks, err := admin.GetKeyStatus(ctx, id)
				if err != nil {
					return 0, fmt.Errorf("bucket %s's encryption key %q: %w", b.Name, id, err)
				}
				if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
					return 0, fmt.Errorf("bucket %s's encryption key %q fails its round trip: %s %s", b.Name, id, ks.EncryptionErr, ks.DecryptionErr)
				}
			}
		}
	}
	seen := map[[2]string]bool{}
	var failed []string
	total := int64(len(objects))
	for i, o := range objects {
		if seen[o] {
			continue
		}
		seen[o] = true
		if err := readObjectFully(ctx, s3, o[0], o[1]); err != nil {
			failed = append(failed, fmt.Sprintf("%s/%s: %v", o[0], o[1], err))
		}
		r.Progress(int64(i+1), total)
	}
	if len(failed) > 0 {
		if len(failed) > 10 {
			failed = append(failed[:10], fmt.Sprintf("and %d more", len(failed)-10))
		}
		return 0, fmt.Errorf("%d object(s) do not read back: %s", len(failed), strings.Join(failed, "; "))
	}
	return len(seen), nil
}

func readObjectFully(ctx context.Context, s3 *minio.Client, bucket, key string) error {
	obj, err := s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer obj.Close()
	_, err = io.Copy(io.Discard, obj)
	return err
}

// Package s3bucket makes the buckets of the demo, the tests and the
// benchmarks (the product's write probe keeps its own check, inside its
// retry loop over servers).
package s3bucket

import (
	"context"

	"github.com/minio/minio-go/v7"
)

// Make makes bucket. minio-go retries a request whose answer was lost; when
// the first try made the bucket (a cluster of several nodes just started,
// or a loaded machine, can be slow to answer), the retry is told
// BucketAlreadyOwnedByYou: the bucket is there, and ours (earlier).
func Make(ctx context.Context, c *minio.Client, bucket string) (earlier bool, err error) {
	err = c.MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
	if minio.ToErrorResponse(err).Code == "BucketAlreadyOwnedByYou" {
		return true, nil
	}
	return false, err
}

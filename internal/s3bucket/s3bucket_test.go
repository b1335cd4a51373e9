package s3bucket_test

import (
	"context"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/s3bucket"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// TestMake: a bucket made by an earlier try (what minio-go's retry of a
// request whose answer was lost meets) is reported as earlier, not as an
// error; any other refusal stays an error.
func TestMake(t *testing.T) {
	m := testenv.StartMinIO(t, testenv.MinIOOptions{})
	c := m.Client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if earlier, err := s3bucket.Make(ctx, c, "sample"); err != nil || earlier {
		t.Fatalf("first make: earlier %v, %v; want a new bucket", earlier, err)
	}
	if earlier, err := s3bucket.Make(ctx, c, "sample"); err != nil || !earlier {
		t.Fatalf("second make: earlier %v, %v; want the bucket reported as made earlier", earlier, err)
	}
	if ok, err := c.BucketExists(ctx, "sample"); err != nil || !ok {
		t.Fatalf("BucketExists: %v, %v", ok, err)
	}
	if earlier, err := s3bucket.Make(ctx, c, "Not_A_Bucket"); err == nil {
		t.Fatalf("an invalid bucket name was made (earlier %v)", earlier)
	}
}

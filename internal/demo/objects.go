package demo

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"
	"github.com/minio/minio-go/v7/pkg/sse"

	"github.com/runbook-dev/runbook/internal/s3bucket"
)

// SampleObject is one object the demo wrote before the cutover.
type SampleObject struct {
	Bucket string `json:"bucket"`
	Name   string `json:"name"`
	SSE    string `json:"sse"` // how it is sealed: "SSE-S3 (default key NAME)", "SSE-KMS KEY", "SSE-KMS KEY (bucket default)"
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// sampleBuckets are the demo's buckets: SSE-KMS under keys in both formats
// of the bundled store (finance-key-00 was written by KES v0.24, hr-key-01
// by v0.23), a bucket whose default encryption seals with a third key, and
// SSE-S3 under MinIO's default key.
var sampleBuckets = []struct {
	bucket, kmsKey string
	bucketDefault  bool
}{
	{"finance", "finance-key-00", false},
	{"people", "hr-key-01", false},
	{"media", "media-key-04", true},
	{"logs", "", false},
}

const sampleFile = "sample.json"

// WriteSample writes the sample objects through node 1 (three per bucket,
// random content of 1 KiB to 1 MiB) and records them in sample.json.
func (s *Servers) WriteSample(ctx context.Context) ([]SampleObject, error) {
	c, err := s.MinIO.s3(s.MinIO.Nodes[0])
	if err != nil {
		return nil, err
	}
	var sample []SampleObject
	for _, b := range sampleBuckets {
		if _, err := s3bucket.Make(ctx, c, b.bucket); err != nil {
			return nil, fmt.Errorf("make bucket %s: %w", b.bucket, err)
		}
		var (
			put  minio.PutObjectOptions
			kind string
		)
		switch {
		case b.bucketDefault:
			if err := c.SetBucketEncryption(ctx, b.bucket, sse.NewConfigurationSSEKMS(b.kmsKey)); err != nil {
				return nil, fmt.Errorf("set default encryption of bucket %s: %w", b.bucket, err)
			}
			kind = "SSE-KMS " + b.kmsKey + " (bucket default)"
		case b.kmsKey != "":
			if put.ServerSideEncryption, err = encrypt.NewSSEKMS(b.kmsKey, nil); err != nil {
				return nil, err
			}
			kind = "SSE-KMS " + b.kmsKey
		default:
			put.ServerSideEncryption = encrypt.NewSSE()
			kind = "SSE-S3 (default key " + DefaultKey + ")"
		}
		for i, size := range []int{1 << 10, 64 << 10, 1 << 20} {
			data := make([]byte, size)
			_, _ = rand.Read(data)
			name := fmt.Sprintf("2025/q%d/report-%d.bin", i+1, i+1)
			if _, err := c.PutObject(ctx, b.bucket, name, bytes.NewReader(data), int64(size), put); err != nil {
				return nil, fmt.Errorf("put %s/%s: %w", b.bucket, name, err)
			}
			sum := sha256.Sum256(data)
			sample = append(sample, SampleObject{Bucket: b.bucket, Name: name, SSE: kind, Size: size, SHA256: hex.EncodeToString(sum[:])})
		}
	}
	raw, _ := json.MarshalIndent(sample, "", "  ")
	if err := os.WriteFile(filepath.Join(s.Dir, sampleFile), append(raw, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", sampleFile, err)
	}
	return sample, nil
}

// ReadSample reads back what WriteSample recorded in dir.
func ReadSample(dir string) ([]SampleObject, error) {
	raw, err := os.ReadFile(filepath.Join(dir, sampleFile))
	if err != nil {
		return nil, fmt.Errorf("read the demo's sample: %w", err)
	}
	var sample []SampleObject
	if err := json.Unmarshal(raw, &sample); err != nil {
		return nil, fmt.Errorf("read the demo's sample: %w", err)
	}
	return sample, nil
}

// NodeReport is what one node says after a restart: the KMS it runs on
// (madmin KMSStatus, asked of that node) and how many sample objects it
// read back byte for byte.
type NodeReport struct {
	Node       string
	URL        string
	KMS        string // "MinIO KMS" (the Key Manager) or "MinIO KES"
	DefaultKey string
	Endpoints  []string // the KMS endpoints and their state: "https://…: online"
	Read       int      // sample objects read back with the recorded SHA-256
}

func (r NodeReport) String() string {
	return fmt.Sprintf("%s %s: %s (default key %s; %s); %d object(s) read back byte for byte",
		r.Node, strings.TrimPrefix(r.URL, "https://"), r.KMS, r.DefaultKey, strings.Join(r.Endpoints, ", "), r.Read)
}

// Check asks every node for its KMS status and reads every sample object
// through it, comparing size and SHA-256. It fails, naming the node and
// the object, unless every node reports kms and reads every object.
func (s *Servers) Check(ctx context.Context, kms string, sample []SampleObject) ([]NodeReport, error) {
	var reports []NodeReport
	for _, n := range s.MinIO.Nodes {
		adm, err := s.MinIO.admin(n)
		if err != nil {
			return nil, err
		}
		st, err := adm.KMSStatus(ctx)
		if err != nil {
			return nil, fmt.Errorf("KMS status of %s: %w", n.Name, err)
		}
		r := NodeReport{Node: n.Name, URL: n.URL, KMS: st.Name, DefaultKey: st.DefaultKeyID}
		for ep, state := range st.Endpoints {
			r.Endpoints = append(r.Endpoints, fmt.Sprintf("%s %s", ep, state))
		}
		slices.Sort(r.Endpoints)
		if st.Name != kms {
			return nil, fmt.Errorf("%s reports its KMS as %q, not %q", n.Name, st.Name, kms)
		}
		c, err := s.MinIO.s3(n)
		if err != nil {
			return nil, err
		}
		for _, o := range sample {
			if err := readBack(ctx, c, o); err != nil {
				return nil, fmt.Errorf("%s: %w", n.Name, err)
			}
			r.Read++
		}
		reports = append(reports, r)
	}
	return reports, nil
}

func readBack(ctx context.Context, c *minio.Client, o SampleObject) error {
	obj, err := c.GetObject(ctx, o.Bucket, o.Name, minio.GetObjectOptions{})
	if err != nil {
		return fmt.Errorf("read %s/%s: %w", o.Bucket, o.Name, err)
	}
	defer obj.Close()
	h := sha256.New()
	n, err := io.Copy(h, obj)
	if err != nil {
		return fmt.Errorf("read %s/%s (%s): %w", o.Bucket, o.Name, o.SSE, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); int(n) != o.Size || got != o.SHA256 {
		return fmt.Errorf("%s/%s reads %d bytes with SHA-256 %s, written were %d bytes with %s", o.Bucket, o.Name, n, got, o.Size, o.SHA256)
	}
	return nil
}

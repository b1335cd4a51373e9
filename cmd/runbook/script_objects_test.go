package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"aead.dev/mtls"
	kes "github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"
	"github.com/minio/minio-go/v7/pkg/sse"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/internal/s3bucket"
)

// Script commands that set up what verification and cutover scripts check:
// encrypted objects in the script's MinIO, keys created at the script's KES,
// and keys changed behind the runbook's back in the script's Key Manager.
//
//	put-objects -bucket B [-sse none|s3|kms|c] [-kms KEY] [-n N] [-prefix P]
//	    creates bucket B if missing and writes N small objects, encrypted
//	    as -sse says (none: as the bucket's default encryption says; c:
//	    SSE-C, with a customer key of the script's own, over TLS).
//	bucket-encryption -bucket B (-kms KEY | -s3)
//	    sets bucket B's default encryption.
//	kes-create-key NAME
//	    creates a key at the script's KES server (KES_SERVER, KES_API_KEY,
//	    KES_CA).
//	kes-delete-key NAME
//	    deletes a key at the script's KES server.
//	get-object [-sse c] BUCKET/KEY
//	    reads an object in full (-sse c: with put-objects' customer key);
//	    with '!', expects the read to fail.
//	km-import-key -enclave E NAME
//	    imports fresh random material under NAME into enclave E of the
//	    script's Key Manager (KM_SERVER, KM_CA, KM_API_KEY).
//	km-delete-key -enclave E NAME
//	    deletes key NAME from enclave E.
func init() {
	moreScriptCmds["put-objects"] = cmdPutObjects
	moreScriptCmds["bucket-encryption"] = cmdBucketEncryption
	moreScriptCmds["kes-create-key"] = cmdKESCreateKey
	moreScriptCmds["kes-delete-key"] = cmdKESDeleteKey
	moreScriptCmds["get-object"] = cmdGetObject
	moreScriptCmds["km-import-key"] = cmdKMImportKey
	moreScriptCmds["km-delete-key"] = cmdKMDeleteKey
}

func scriptFlags(ts *testscript.TestScript, name string, neg bool) *flag.FlagSet {
	if neg {
		ts.Fatalf("%s cannot be negated", name)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(ts.Stderr())
	return fs
}

func scriptCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Minute)
}

// scriptTLS trusts the CA in the file that the environment variable names.
func scriptTLS(ts *testscript.TestScript, caEnv string) *tls.Config {
	pem, err := os.ReadFile(ts.Getenv(caEnv))
	ts.Check(err)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		ts.Fatalf("%s: no certificate in %s", caEnv, ts.Getenv(caEnv))
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

func scriptMinIO(ts *testscript.TestScript) *minio.Client {
	if ts.Getenv("MINIO_ENDPOINT") == "" {
		ts.Fatalf("run minio-server first")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = scriptTLS(ts, "MINIO_CA")
	c, err := minio.New(ts.Getenv("MINIO_ENDPOINT"), &minio.Options{
		Creds:     credentials.NewStaticV4(ts.Getenv("MINIO_ROOT_USER"), ts.Getenv("MINIO_ROOT_PASSWORD"), ""),
		Secure:    true,
		Transport: tr,
	})
	ts.Check(err)
	return c
}

func cmdPutObjects(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "put-objects", neg)
	bucket := fs.String("bucket", "", "bucket")
	kind := fs.String("sse", "kms", "none, s3 or kms")
	key := fs.String("kms", "", "SSE-KMS key name")
	n := fs.Int("n", 1, "number of objects")
	prefix := fs.String("prefix", "obj-", "object name prefix")
	ts.Check(fs.Parse(args))
	if *bucket == "" {
		ts.Fatalf("usage: put-objects -bucket B [-sse none|s3|kms] [-kms KEY] [-n N] [-prefix P]")
	}
	var enc encrypt.ServerSide
	switch *kind {
	case "none":
	case "s3":
		enc = encrypt.NewSSE()
	case "kms":
		if *key == "" {
			ts.Fatalf("put-objects -sse kms needs -kms KEY")
		}
		var err error
		enc, err = encrypt.NewSSEKMS(*key, nil)
		ts.Check(err)
	case "c":
		enc = scriptSSECKey(ts)
	default:
		ts.Fatalf("put-objects: -sse is none, s3, kms or c")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	c := scriptMinIO(ts)
	ensureBucket(ctx, ts, c, *bucket)
	for i := range *n {
		body := fmt.Appendf(nil, "object %d of %s", i, *bucket)
		name := fmt.Sprintf("%s%04d", *prefix, i)
		// A cluster whose nodes just restarted together can refuse writes
		// for a moment while they reconnect to each other's drives
		// ("Resource requested is unwritable"): a client waits that out.
		var err error
		for attempt := 0; attempt < 60; attempt++ {
			_, err = c.PutObject(ctx, *bucket, name, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{ServerSideEncryption: enc})
			if err == nil || !strings.Contains(err.Error(), "unwritable") {
				break
			}
			ts.Logf("put-objects: %s: %v; trying again", name, err)
			time.Sleep(500 * time.Millisecond)
		}
		if err != nil {
			ts.Fatalf("put-objects: %v", err)
		}
	}
	// The cutover's write check before a rollback anchors on the object
	// store's clock (whole seconds, read to err early) less a margin: it
	// rightly counts a write in the last second or so before the restart
	// as a possible write after it. A script that writes and then cuts
	// over means its objects to come before the restart.
	time.Sleep(writeCheckSlack)
}

// writeCheckSlack exceeds how early the cutover's write check may place the
// restart (the Date header's second plus its margin).
const writeCheckSlack = 1500 * time.Millisecond

// ensureBucket makes bucket unless it exists.
func ensureBucket(ctx context.Context, ts *testscript.TestScript, c *minio.Client, bucket string) {
	exists, err := c.BucketExists(ctx, bucket)
	ts.Check(err)
	if exists {
		return
	}
	earlier, err := s3bucket.Make(ctx, c, bucket)
	ts.Check(err)
	if earlier {
		ts.Logf("put-objects: bucket %s made by an earlier try of the request", bucket)
	}
}

func cmdBucketEncryption(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "bucket-encryption", neg)
	bucket := fs.String("bucket", "", "bucket")
	key := fs.String("kms", "", "SSE-KMS key name")
	s3 := fs.Bool("s3", false, "SSE-S3")
	ts.Check(fs.Parse(args))
	if *bucket == "" || (*key == "") == !*s3 {
		ts.Fatalf("usage: bucket-encryption -bucket B (-kms KEY | -s3)")
	}
	cfg := sse.NewConfigurationSSES3()
	if *key != "" {
		cfg = sse.NewConfigurationSSEKMS(*key)
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	c := scriptMinIO(ts)
	ensureBucket(ctx, ts, c, *bucket)
	ts.Check(c.SetBucketEncryption(ctx, *bucket, cfg))
}

// scriptKESClient is a client of the script's KES server PREFIX (kes-server
// -env PREFIX), as its admin.
func scriptKESClient(ts *testscript.TestScript, prefix string) *kes.Client {
	key, err := kes.ParseAPIKey(ts.Getenv(prefix + "_API_KEY"))
	ts.Check(err)
	cert, err := kes.GenerateCertificate(key)
	ts.Check(err)
	conf := scriptTLS(ts, prefix+"_CA")
	conf.Certificates = []tls.Certificate{cert}
	return kes.NewClientWithConfig(ts.Getenv(prefix+"_SERVER"), conf)
}

func cmdKESCreateKey(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "kes-create-key", neg)
	ts.Check(fs.Parse(args))
	if fs.NArg() != 1 {
		ts.Fatalf("usage: kes-create-key NAME")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	if err := scriptKESClient(ts, "KES").CreateKey(ctx, fs.Arg(0)); err != nil {
		ts.Fatalf("kes-create-key: %v", err)
	}
}

// scriptSSECKey is the customer key of put-objects -sse c.
func scriptSSECKey(ts *testscript.TestScript) encrypt.ServerSide {
	enc, err := encrypt.NewSSEC(bytes.Repeat([]byte{0x5c}, 32))
	ts.Check(err)
	return enc
}

func cmdGetObject(ts *testscript.TestScript, neg bool, args []string) {
	fs := flag.NewFlagSet("get-object", flag.ContinueOnError)
	fs.SetOutput(ts.Stderr())
	kind := fs.String("sse", "", "c: read with put-objects' customer key")
	ts.Check(fs.Parse(args))
	bucket, key, ok := strings.Cut(fs.Arg(0), "/")
	if fs.NArg() != 1 || !ok {
		ts.Fatalf("usage: get-object [-sse c] BUCKET/KEY")
	}
	var opts minio.GetObjectOptions
	if *kind == "c" {
		opts.ServerSideEncryption = scriptSSECKey(ts)
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	o, err := scriptMinIO(ts).GetObject(ctx, bucket, key, opts)
	if err == nil {
		_, err = io.Copy(io.Discard, o)
		o.Close()
	}
	switch {
	case err != nil && !neg:
		ts.Fatalf("get-object %s: %v", fs.Arg(0), err)
	case err == nil && neg:
		ts.Fatalf("get-object %s: read, but expected to fail", fs.Arg(0))
	case err != nil:
		fmt.Fprintf(ts.Stdout(), "get-object %s: %v\n", fs.Arg(0), err)
	}
}

func cmdKESDeleteKey(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "kes-delete-key", neg)
	ts.Check(fs.Parse(args))
	if fs.NArg() != 1 {
		ts.Fatalf("usage: kes-delete-key NAME")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	if err := scriptKESClient(ts, "KES").DeleteKey(ctx, fs.Arg(0)); err != nil {
		ts.Fatalf("kes-delete-key: %v", err)
	}
}

func scriptKMS(ts *testscript.TestScript) *kms.Client {
	key, err := mtls.ParsePrivateKey(ts.Getenv("KM_API_KEY"))
	ts.Check(err)
	c, err := kms.NewClient(&kms.Config{Endpoints: []string{strings.TrimPrefix(ts.Getenv("KM_SERVER"), "https://")}, APIKey: key, TLS: scriptTLS(ts, "KM_CA")})
	ts.Check(err)
	return c
}

func cmdKMImportKey(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "km-import-key", neg)
	enclave := fs.String("enclave", "", "enclave")
	ts.Check(fs.Parse(args))
	if *enclave == "" || fs.NArg() != 1 {
		ts.Fatalf("usage: km-import-key -enclave E NAME")
	}
	material := make([]byte, 32)
	rand.Read(material)
	ctx, cancel := scriptCtx()
	defer cancel()
	if err := scriptKMS(ts).ImportKey(ctx, *enclave, &kms.ImportKeyRequest{Name: fs.Arg(0), Type: kms.AES256, Key: material}); err != nil {
		ts.Fatalf("km-import-key: %v", err)
	}
}

func cmdKMDeleteKey(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "km-delete-key", neg)
	enclave := fs.String("enclave", "", "enclave")
	ts.Check(fs.Parse(args))
	if *enclave == "" || fs.NArg() != 1 {
		ts.Fatalf("usage: km-delete-key -enclave E NAME")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	if err := scriptKMS(ts).DeleteKey(ctx, *enclave, &kms.DeleteKeyRequest{Name: fs.Arg(0), AllVersions: true}); err != nil {
		ts.Fatalf("km-delete-key: %v", err)
	}
}

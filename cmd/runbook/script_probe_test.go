package main

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/sync/errgroup"

	"github.com/runbook-dev/runbook/internal/s3bucket"
)

// Script command of the write probe scripts
// (testdata/scripts/cutover_write_probe_*.txtar):
//
//	minio-buckets
//	    prints the script's MinIO's buckets, one name a line, sorted
//	    (an empty bucket shows here, not in objects-snapshot).
//	make-buckets -n N -prefix P
//	    makes the empty buckets P0000 to P(N-1), N at once at most 8.
//	minio-loaded [-now]
//	    waits (up to a minute) until every node of the cluster
//	    (MINIO_SERVER_i) has loaded its buckets' metadata: its own
//	    /minio/health/cluster answers, and not with x-minio-server-status
//	    offline or bucket-metadata-offline (MinIO's start-up statuses
//	    before that load ends); -now fails at once on a node that has not.
func init() {
	moreScriptCmds["minio-buckets"] = cmdMinIOBuckets
	moreScriptCmds["make-buckets"] = cmdMakeBuckets
	moreScriptCmds["minio-loaded"] = cmdMinIOLoaded
}

func cmdMakeBuckets(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "make-buckets", neg)
	n := fs.Int("n", 1, "number of buckets")
	prefix := fs.String("prefix", "bucket-", "bucket name prefix")
	ts.Check(fs.Parse(args))
	ctx, cancel := scriptCtx()
	defer cancel()
	c := scriptMinIO(ts)
	var g errgroup.Group
	g.SetLimit(8)
	var earlier atomic.Int64
	for i := range *n {
		g.Go(func() error {
			name := fmt.Sprintf("%s%04d", *prefix, i)
			e, err := s3bucket.Make(ctx, c, name)
			if err != nil {
				return fmt.Errorf("make bucket %s: %w", name, err)
			}
			if e {
				earlier.Add(1)
			}
			return nil
		})
	}
	ts.Check(g.Wait())
	if n := earlier.Load(); n > 0 {
		ts.Logf("make-buckets: %d bucket(s) made by an earlier try of the request", n)
	}
}

func cmdMinIOLoaded(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "minio-loaded", neg)
	now := fs.Bool("now", false, "fail at once on a node still loading")
	ts.Check(fs.Parse(args))
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = scriptTLS(ts, "MINIO_CA")
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	deadline := time.Now().Add(time.Minute)
	if *now {
		deadline = time.Now()
	}
	for i := 1; ts.Getenv("MINIO_SERVER_"+strconv.Itoa(i)) != ""; i++ {
		server := ts.Getenv("MINIO_SERVER_" + strconv.Itoa(i))
		for {
			var why string
			resp, err := hc.Get("https://" + server + "/minio/health/cluster")
			if err != nil {
				why = err.Error()
			} else {
				resp.Body.Close()
				switch st := resp.Header.Get("x-minio-server-status"); st {
				case "offline", "bucket-metadata-offline":
					why = resp.Status + ", " + st
				}
			}
			if why == "" {
				break
			}
			if time.Now().After(deadline) {
				ts.Fatalf("minio-loaded: server %s has not loaded its buckets: %s", server, why)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func cmdMinIOBuckets(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: minio-buckets")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	buckets, err := scriptMinIO(ts).ListBuckets(ctx)
	ts.Check(err)
	var names []string
	for _, b := range buckets {
		names = append(names, b.Name)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintln(ts.Stdout(), n)
	}
}

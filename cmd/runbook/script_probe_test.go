package main

import (
	"fmt"
	"sort"

	"github.com/rogpeppe/go-internal/testscript"
)

// Script command of the write probe scripts
// (testdata/scripts/cutover_write_probe_*.txtar):
//
//	minio-buckets
//	    prints the script's MinIO's buckets, one name a line, sorted
//	    (an empty bucket shows here, not in objects-snapshot).
func init() {
	moreScriptCmds["minio-buckets"] = cmdMinIOBuckets
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

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func init() {
	moreScriptCmds["km-prove"] = cmdKMProve
}

// pairwiseReadings covers every pair of values of the four readings
// (docs/emulator.md) in five runs: the defaults, then each reading alone at
// its default with the three others at their alternative.
var pairwiseReadings = []emulator.Readings{
	{},
	{WriteAnswer: emulator.WriteEmpty, Mixed: emulator.MixedAccept, Batch: emulator.BatchAtomic, DeletedNames: emulator.DeletedReusable},
	{WriteAnswer: emulator.WriteFrames, Mixed: emulator.MixedRefuse, Batch: emulator.BatchAtomic, DeletedNames: emulator.DeletedReusable},
	{WriteAnswer: emulator.WriteFrames, Mixed: emulator.MixedAccept, Batch: emulator.BatchPartial, DeletedNames: emulator.DeletedReusable},
	{WriteAnswer: emulator.WriteFrames, Mixed: emulator.MixedAccept, Batch: emulator.BatchAtomic, DeletedNames: emulator.DeletedTombstoned},
}

// TestReadings runs the scripts that pin the key steps' correctness and the
// migration's request count against a Key Manager emulator in each of
// pairwiseReadings (the script's key-manager command takes them from
// KM_READINGS; a script that pins one reading on its key-manager line keeps
// it). migration_readings.txtar injects faults and kills the apply mid-way.
func TestReadings(t *testing.T) {
	for _, r := range pairwiseReadings {
		r, err := r.Normalized()
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Join([]string{r.WriteAnswer, r.Mixed, r.Batch, r.DeletedNames}, "-")
		t.Run(name, func(t *testing.T) {
			testscript.Run(t, testscript.Params{
				Files: []string{
					"../../testdata/scripts/migration_readings.txtar",
					"../../testdata/scripts/migration_large_store.txtar",
					"../../testdata/scripts/migration_deleted_names.txtar",
					"../../testdata/scripts/verification_passes.txtar",
					"../../testdata/scripts/enclave_identity_rollback.txtar",
				},
				RequireExplicitExec: true,
				RequireUniqueNames:  true,
				Cmds:                scriptCmds(),
				Setup: func(e *testscript.Env) error {
					testenv.ScriptSetup(e)
					e.Setenv("KM_READINGS", strings.Join(r.Args(), " "))
					d, err := filepath.Abs("../../runbooks")
					if err != nil {
						return err
					}
					e.Setenv("RUNBOOKS", d)
					return nil
				},
			})
		})
	}
}

// km-prove ENCLAVE STOREDIR: the enclave holds exactly the keys of the fs
// key store STOREDIR, and each is proven by a round trip made here,
// independently of runbook's code: a random plaintext sealed under the
// store's material (KES's raw format) decrypts at the Key Manager to the
// same bytes. Requests are retried through injected faults.
func cmdKMProve(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: km-prove ENCLAVE STOREDIR")
	}
	enclave, dir := args[0], ts.MkAbs(args[1])
	c := kmClient(ts)
	ctx := context.Background()
	retry := func(fn func() error) error {
		var err error
		for range 50 {
			if err = fn(); err == nil {
				return nil
			}
			if ke, ok := errors.AsType[kms.Error](err); ok && ke.Code < 500 {
				return err
			}
			time.Sleep(20 * time.Millisecond)
		}
		return err
	}

	var target []string
	req := &kms.ListRequest{Enclave: enclave}
	for {
		var page *kms.Page[kms.KeyStatusResponse]
		ts.Check(retry(func() (err error) { page, err = c.ListKeys(ctx, req); return err }))
		for _, k := range page.Items {
			target = append(target, k.Name)
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			break
		}
		req = &kms.ListRequest{Enclave: enclave, ContinueAt: page.ContinueAt}
	}
	entries, err := os.ReadDir(dir)
	ts.Check(err)
	var source []string
	for _, e := range entries {
		source = append(source, e.Name())
	}
	slices.Sort(source)
	slices.Sort(target)
	if !slices.Equal(source, target) {
		ts.Fatalf("km-prove: enclave %s holds %d keys, the store %d; they differ", enclave, len(target), len(source))
	}
	// 64 keys a request (read-only Decrypt frames); a batch that fails is
	// proven key by key to name the culprit.
	for i := 0; i < len(source); i += 64 {
		names := source[i:min(i+64, len(source))]
		reqs := make([]*kms.DecryptRequest, len(names))
		pts := make([][]byte, len(names))
		for j, name := range names {
			raw, err := os.ReadFile(filepath.Join(dir, name))
			ts.Check(err)
			k, err := kescrypto.ParseKey(raw)
			ts.Check(err)
			pts[j] = make([]byte, 32)
			rand.Read(pts[j])
			ct, err := kescrypto.Seal(k, pts[j], []byte("km-prove"))
			ts.Check(err)
			reqs[j] = &kms.DecryptRequest{Name: name, Ciphertext: ct, AssociatedData: []byte("km-prove")}
		}
		var resp []*kms.DecryptResponse
		err := retry(func() (err error) { resp, err = c.Decrypt(ctx, enclave, reqs...); return err })
		if err == nil && len(resp) == len(names) {
			for j, r := range resp {
				if !bytes.Equal(r.Plaintext, pts[j]) {
					ts.Fatalf("km-prove: key %s decrypts to other bytes", names[j])
				}
			}
			continue
		}
		for j, name := range names {
			err := retry(func() (err error) { resp, err = c.Decrypt(ctx, enclave, reqs[j]); return err })
			if err != nil || len(resp) != 1 || !bytes.Equal(resp[0].Plaintext, pts[j]) {
				ts.Fatalf("km-prove: key %s fails its round trip: %v", name, err)
			}
		}
		ts.Fatalf("km-prove: a batch failed (%v) but each of its keys passed alone", err)
	}
	ts.Logf("km-prove: the %d keys of enclave %s are exactly the store's, each proven by round trip", len(source), enclave)
}

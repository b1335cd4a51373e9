package steps

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
)

func TestImportBatchSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ par, batch int }{{1, 1}, {4, 1}, {8, 1}, {16, 2}, {64, 8}, {100, 12}, {128, 16}, {256, 32}, {512, 64}, {1024, 64}} {
		b := importBatchSize(tc.par)
		if b != tc.batch {
			t.Errorf("importBatchSize(%d) = %d, want %d", tc.par, b, tc.batch)
		}
		// workers*batch, the keys in flight, never exceeds the parallelism
		if w := max(1, tc.par/b); w*b > tc.par {
			t.Errorf("parallelism %d: %d workers of %d keys", tc.par, w, b)
		}
	}
}

// A batch in which one key is already at the target with the same material
// and one with different material (both appeared after the listing), under
// every reading of a failed request: the keys the failed requests imported
// and the identical one are proven by round trip, only the different one is
// a conflict, and the request count stays logarithmic.
func TestImportKeysFallback(t *testing.T) {
	t.Parallel()
	for _, r := range []emulator.Readings{
		{},
		{Batch: emulator.BatchAtomic},
		{WriteAnswer: emulator.WriteFrames, Mixed: emulator.MixedAccept},
	} {
		t.Run(r.Batch+"-"+r.WriteAnswer, func(t *testing.T) {
			env := newMigrationEnv(t, 16, r)
			ctx := context.Background()
			es := env.entries(t)
			env.put(t, "key-002", env.keys["key-002"])
			env.put(t, "key-009", randomKey())
			rep := &report{}
			im := &importer{c: env.c, enclave: env.enclave, rep: rep}
			ok, conflicts, err := im.importAll(ctx, es)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(ok)
			var want []string
			for _, n := range env.src.names {
				if n != "key-009" {
					want = append(want, n)
				}
			}
			if !slices.Equal(ok, want) {
				t.Errorf("imported %v, want %v", ok, want)
			}
			if !slices.Equal(conflicts, []string{"key-009"}) {
				t.Errorf("conflicts %v, want [key-009]", conflicts)
			}
			// key-002 at least, and under partial key-000 and key-001 (imported
			// by the failed request), were proven by round trip, not taken on
			// trust.
			if n := rep.inflight.Load(); n < 1 || (r.Batch != emulator.BatchAtomic && n < 3) {
				t.Errorf("%d keys proven by round trip", n)
			}
			// halving finds the two failing keys in about 2×2×log2(16)
			// requests; importing and reading back key by key would take 32
			if n := rep.requestCount.Load() + rep.readbacks.Load(); n > 24 {
				t.Errorf("%d requests for 16 keys with two that fail", n)
			}
			for _, n := range want {
				same, err := sameMaterial(ctx, env.c, env.enclave, n, env.keys[n])
				if err != nil || !same {
					t.Errorf("%s at the target: same=%v, %v", n, same, err)
				}
			}
		})
	}
}

// A crash mid-way with several keys per request: checkpoints are made only
// for keys the target confirmed, the resume sends no import for
// checkpointed keys, proves the keys in flight by round trip, and at most
// the parallelism were in flight.
func TestMigrateResumeInFlightBatched(t *testing.T) {
	t.Parallel()
	env := newMigrationEnv(t, 300)
	const par = 32 // 8 workers of 4 keys
	m := &migrationStep{cfg: migrationConfig{Parallelism: par}}
	j := &fakeJournal{}
	var n int
	var mu sync.Mutex
	errCrash := errors.New("crash")
	j.fail = func(item string) error { // the "crash": checkpoints stop after 100 keys
		mu.Lock()
		defer mu.Unlock()
		if _, ok := migratedKeys.Key(item); ok {
			n++
			if n > 100 {
				return errCrash
			}
		}
		return nil
	}
	if _, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave); !errors.Is(err, errCrash) {
		t.Fatalf("first attempt: %v, want the crash", err)
	}
	// The Key Manager may still finish a request the crashed attempt gave
	// up on: wait until the enclave stops changing, as after a real crash.
	for n := -1; ; time.Sleep(50 * time.Millisecond) {
		if m := len(env.targetNames(t)); m == n {
			break
		} else {
			n = m
		}
	}
	j.fail = nil
	res, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave)
	if err != nil {
		t.Fatal(err)
	}
	if res.Earlier != 100 || res.InFlight+res.Commands != 200 {
		t.Fatalf("resume: earlier %d, in flight %d, keys sent %d; want 100 earlier and 200 = in flight + sent", res.Earlier, res.InFlight, res.Commands)
	}
	if res.Requests > 200/4 { // one request per run of 4 keys at parallelism 32
		t.Fatalf("%d import requests for 200 keys", res.Requests)
	}
	if res.InFlight == 0 {
		t.Fatal("no key was imported without a checkpoint: the test proves nothing")
	}
	if res.InFlight > par {
		t.Fatalf("%d keys were imported without a checkpoint, more than the parallelism %d", res.InFlight, par)
	}
	if res.Imported != 300 || len(env.targetNames(t)) != 300 {
		t.Fatalf("imported %d, enclave holds %d; want 300", res.Imported, len(env.targetNames(t)))
	}
	if len(j.cps) != 301 { // 300 keys and the preflight
		t.Fatalf("%d checkpoints, want 301", len(j.cps))
	}
}

// Keys the Key Manager refuses, in the middle of a batch: one whose name
// it does not take (an empty one, the only name the emulator refuses) and
// one whose name was deleted (tombstoned). Every other key is imported,
// each refused key is named with its reason, and none is an error.
func TestImportRefusedKeysAreNamed(t *testing.T) {
	t.Parallel()
	for _, r := range []emulator.Readings{{Batch: emulator.BatchPartial}, {Batch: emulator.BatchAtomic}} {
		t.Run(r.Batch, func(t *testing.T) {
			env := newMigrationEnv(t, 8, r)
			ctx := context.Background()
			es := env.entries(t)
			env.put(t, "key-005", env.keys["key-005"])
			if err := env.c.DeleteKey(ctx, env.enclave, &kms.DeleteKeyRequest{Name: "key-005", AllVersions: true}); err != nil {
				t.Fatal(err)
			}
			es = slices.Insert(es, 3, &sourceEntry{name: "", key: randomKey()})
			rep := &report{}
			im := &importer{c: env.c, enclave: env.enclave, rep: rep}
			ok, conflicts, err := im.importAll(ctx, es)
			if err != nil || len(conflicts) != 0 {
				t.Fatalf("err %v, conflicts %v", err, conflicts)
			}
			slices.Sort(ok)
			if want := []string{"key-000", "key-001", "key-002", "key-003", "key-004", "key-006", "key-007"}; !slices.Equal(ok, want) {
				t.Fatalf("imported %v, want %v", ok, want)
			}
			rep.sort()
			if len(rep.rejected) != 2 || rep.rejected[0].Name != "" || !strings.Contains(rep.rejected[0].Reason, "refused to import it: invalid key name") ||
				rep.rejected[1].Name != "key-005" || !strings.Contains(rep.rejected[1].Reason, "does not give a deleted name out again") {
				t.Fatalf("rejected %+v", rep.rejected)
			}
		})
	}
}

package steps

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// The target: round trips, retries.

// sameMaterial proves, without exporting anything from the Key Manager,
// whether the enclave's key name holds the material of k: a random
// plaintext sealed locally in KES's raw format under k must decrypt at the
// Key Manager (version 0: as MinIO asks) to the same bytes. kms.ErrDecrypt
// means different material (or algorithm).
func sameMaterial(ctx context.Context, c *kms.Client, enclave, name string, k kescrypto.Key) (bool, error) {
	same, err := sealedRoundTrip(ctx, c, enclave, name, k, roundTripAAD)
	if err != nil {
		return false, fmt.Errorf("round trip key %q: %w", name, err)
	}
	return same, nil
}

// permanentHint turns the Key Manager's permanent errors into what the
// operator must fix.
func permanentHint(err error, enclave string) error {
	switch {
	case errors.Is(err, kms.ErrPermission):
		return fmt.Errorf("%w (the key_manager's API key lacks permission in enclave %s: use the SysAdmin key or an enclave admin)", err, enclave)
	case errors.Is(err, kms.ErrEnclaveNotFound):
		return fmt.Errorf("%w (enclave %s: the enclave step creates it; was it deleted?)", err, enclave)
	}
	return err
}

// listTarget lists the enclave's key names. A missing enclave is reported
// with exists=false (not an error) so that plan can say so.
func listTarget(ctx context.Context, c *kms.Client, enclave string) (names map[string]bool, exists bool, err error) {
	var list []string
	err = withRetry(ctx, func() error {
		var err error
		list, err = listEnclaveKeys(ctx, c, enclave)
		return err
	})
	if errors.Is(err, kms.ErrEnclaveNotFound) {
		return map[string]bool{}, false, nil
	}
	if err != nil {
		return nil, false, permanentHint(err, enclave)
	}
	names = make(map[string]bool, len(list))
	for _, n := range list {
		names[n] = true
	}
	return names, true, nil
}

func kmsType(a kescrypto.Algorithm) kms.SecretKeyType {
	if a == kescrypto.ChaCha20 {
		return kms.ChaCha20
	}
	return kms.AES256
}

// forEach calls fn for 0..n-1 on par goroutines. The first error cancels the
// others and is returned.
func forEach(ctx context.Context, par, n int, fn func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range min(par, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(ctx, i); err != nil {
					once.Do(func() { first = err; cancel(err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// actionOf is what the step recorded for key name in family f (apply's
// migratedKeys, rollback's undoneKeys); "" when nothing.
func actionOf(c engine.Checkpoints, f engine.Family[keyCheckpoint], name string) string {
	kc, _, _ := f.Item(name).Get(c)
	return kc.Action
}

// migrate is Apply without the engine: h carries the journal.
func (m *migrationStep) migrate(ctx context.Context, h runHooks, src *sourceSet, c *kms.Client, enclave string) (*migrationResult, error) {
	start := time.Now()
	present, exists, err := listTarget(ctx, c, enclave)
	if err != nil {
		return nil, fmt.Errorf("list enclave %s: %w", enclave, err)
	}
	if !exists {
		return nil, fmt.Errorf("import keys: %w", permanentHint(kms.ErrEnclaveNotFound, enclave))
	}

	// Pre-flight, once per run: judge the keys already in the enclave
	// before anything is imported, so that a conflict changes nothing.
	pre, ok, err := migrationPreflight.Get(h)
	if err != nil {
		return nil, fmt.Errorf("read the migration's preflight checkpoint: %w", err)
	}
	if ok {
		if pre.NamesSHA256 != src.digest {
			h.warnf("the key store's names changed since this step first ran (SHA-256 %s, now %s): keys created since are imported now; halt key creation at KES", pre.NamesSHA256[:16], src.digest[:16])
		}
	} else {
		pre, err = m.preflight(ctx, h, src, c, enclave, present)
		if err != nil {
			return nil, err
		}
		if err := migrationPreflight.Put(h, pre); err != nil {
			return nil, err
		}
	}
	identical := setOf(pre.Identical)
	overwrite := setOf(pre.Overwrite)

	res := &migrationResult{}
	rep := &report{notKeys: src.notKeys}
	var todo []string
	for _, n := range src.names {
		if identical[n] {
			res.Skipped++
			continue
		}
		switch actionOf(h, migratedKeys, n) {
		case actionImported:
			res.Imported++
			res.Earlier++
			continue
		case actionOverwritten:
			res.Overwritten++
			res.Earlier++
			continue
		case actionOverwriting:
			overwrite[n] = true // interrupted between delete and import: finish it
		}
		todo = append(todo, n)
	}
	total := int64(len(src.names))
	var done atomic.Int64
	done.Store(total - int64(len(todo)))
	h.progress(done.Load(), total)
	if res.Earlier > 0 || res.Skipped > 0 {
		h.logf("%d keys done earlier (journal) or already present with identical material; %d to go", total-int64(len(todo)), len(todo))
	}

	var imported, overwritten atomic.Int64
	var journalNanos, busyNanos atomic.Int64 // time workers wait for durable checkpoints / work in total
	var conflictMu sync.Mutex
	var lateConflicts []string
	conflict := func(names ...string) {
		conflictMu.Lock()
		lateConflicts = append(lateConflicts, names...)
		conflictMu.Unlock()
	}
	// A worker takes a run of up to batch consecutive keys: it reads them,
	// imports those that are not at the target in one request, and then
	// checkpoints each of them. At most workers*batch <= parallelism keys
	// are in flight (read, or imported without a durable checkpoint).
	batch := importBatchSize(m.parallelism())
	workers := max(1, m.parallelism()/batch)
	runs := (len(todo) + batch - 1) / batch
	err = forEach(ctx, workers, runs, func(ctx context.Context, ri int) error {
		t0 := time.Now()
		defer func() { busyNanos.Add(int64(time.Since(t0))) }()
		var finished []keyDone // confirmed by the target, to be checkpointed
		skipped := 0
		err := func() error {
			// fresh: not at the target at the listing, imported together;
			// there: at the target at the listing without a checkpoint (in
			// flight at an interruption), proven together.
			var fresh, there []*sourceEntry
			defer func() {
				for _, e := range append(fresh, there...) {
					e.wipe()
				}
			}()
			for _, name := range todo[ri*batch : min(len(todo), (ri+1)*batch)] {
				e, err := src.readEntry(ctx, name)
				if err != nil {
					return err
				}
				rep.add(e)
				switch {
				case e.class != entryOK:
					skipped++
					continue
				case overwrite[name]:
				case present[name]:
					there = append(there, e)
					continue
				default:
					fresh = append(fresh, e)
					continue
				}
				action, err := m.overwriteKey(ctx, h, c, enclave, e, present[name])
				e.wipe()
				if errors.Is(err, errConflict) {
					conflict(name)
					continue
				}
				if err != nil {
					return permanentHint(err, enclave)
				}
				finished = append(finished, keyDone{name, action})
			}
			im := &importer{c: c, enclave: enclave, rep: rep}
			if len(there) > 0 {
				same, differ, err := im.prove(ctx, there)
				if err != nil {
					return permanentHint(err, enclave)
				}
				rep.inflight.Add(int64(len(same)))
				for _, name := range same {
					finished = append(finished, keyDone{name, actionImported})
				}
				conflict(differ...)
			}
			if len(fresh) == 0 {
				return nil
			}
			ok, conflicts, err := im.importAll(ctx, fresh)
			for _, name := range ok {
				finished = append(finished, keyDone{name, actionImported})
			}
			conflict(conflicts...)
			return permanentHint(err, enclave)
		}()
		// Keys confirmed by the target are checkpointed even when a later
		// key of the run failed.
		t := time.Now()
		cerr := checkpointKeys(h, finished)
		journalNanos.Add(int64(time.Since(t)))
		if cerr != nil {
			return errors.Join(err, cerr)
		}
		for _, k := range finished {
			if k.action == actionOverwritten {
				overwritten.Add(1)
			} else {
				imported.Add(1)
			}
		}
		h.progress(done.Add(int64(len(finished)+skipped)), total)
		return err
	})
	res.Imported += int(imported.Load())
	res.Overwritten += int(overwritten.Load())
	res.Requests = rep.requestCount.Load()
	res.Commands = rep.commandCount.Load()
	res.InFlight = rep.inflight.Load()
	rep.sort()
	res.NotMigrated = len(rep.unparsable) + len(rep.rejected)
	if err != nil {
		return res, err
	}

	elapsed := time.Since(start)
	rate := float64(imported.Load()+overwritten.Load()) / max(elapsed.Seconds(), 1e-9)
	h.logf("imported %d keys this attempt (%d import requests carrying %d keys, %d found already imported after an interruption or a lost answer, %d done by earlier attempts; %d requests read back what failed requests did) in %s (%.0f keys/s)",
		imported.Load()+overwritten.Load(), res.Requests, res.Commands, res.InFlight, res.Earlier, rep.readbacks.Load(), elapsed.Round(time.Millisecond), rate)
	if b := busyNanos.Load(); b > 0 && len(todo) > 0 {
		h.logf("journal: waiting for durable per-key checkpoints took %.0f%% of the workers' time", 100*float64(journalNanos.Load())/float64(b))
	}
	left := ""
	if n := len(rep.unparsable) + len(rep.rejected); n > 0 {
		left = fmt.Sprintf(" (%d do not parse, %d names the Key Manager refuses)", len(rep.unparsable), len(rep.rejected))
	}
	if n := len(rep.notKeys); n > 0 {
		left += fmt.Sprintf("; %d entries that are not keys left out", n)
	}
	if n := len(src.foreign); n > 0 {
		left += fmt.Sprintf("; %d %s left out, never copied", n, groupForeign)
	}
	h.logf("enclave %s holds %d of the %d source keys: %d imported, %d already present (identical), %d overwritten, %d not migrated%s",
		enclave, res.Imported+res.Skipped+res.Overwritten, len(src.names)-len(rep.unparsable), res.Imported, res.Skipped, res.Overwritten,
		len(rep.unparsable)+len(rep.rejected), left)
	for _, p := range rep.notKeys {
		h.logf("left out: %s: %s", p.Name, p.Reason)
	}
	for _, p := range rep.unparsable {
		h.warnf("not migrated: %s: does not parse: %s", p.Name, p.Reason)
	}
	for _, p := range rep.rejected {
		h.warnf("not migrated: %s: %s", p.Name, p.Reason)
	}
	if s := rep.hmacRisk(); s != "" {
		h.warnf("%s", s)
	}
	if len(lateConflicts) > 0 {
		sort.Strings(lateConflicts)
		return res, fmt.Errorf("import keys: %d keys appeared at the target with different material while the migration ran (something else writes to enclave %s): %s", len(lateConflicts), enclave, strings.Join(lateConflicts, ", "))
	}
	if bl := rep.blocking(); len(bl) > 0 && !m.cfg.SkipUnparsable {
		return res, fmt.Errorf("import keys: %d entries cannot be carried (every other key is imported): %s; fix them in the key store and resume, or set skip_unparsable = true to leave them behind", len(bl), strings.Join(describeProblems(bl), "; "))
	}
	return res, nil
}

func setOf(names []string) map[string]bool {
	s := make(map[string]bool, len(names))
	for _, n := range names {
		s[n] = true
	}
	return s
}

// preflight judges the source keys already present in the enclave, by round
// trip, before anything is imported.
func (m *migrationStep) preflight(ctx context.Context, h runHooks, src *sourceSet, c *kms.Client, enclave string, present map[string]bool) (preflightCheckpoint, error) {
	pre := preflightCheckpoint{NamesSHA256: src.digest, Identical: []string{}, Overwrite: []string{}}
	var both []string
	for _, n := range src.names {
		if present[n] {
			both = append(both, n)
		}
	}
	if len(both) == 0 {
		return pre, nil
	}
	h.logf("%d source keys are already in enclave %s: proving their material by round trip", len(both), enclave)
	identical, overwrite, conflicts, err := m.judgePresent(ctx, c, enclave, src, both)
	if err != nil {
		return pre, err
	}
	pre.Identical = append(pre.Identical, identical...)
	pre.Overwrite = append(pre.Overwrite, overwrite...)
	sort.Strings(pre.Identical)
	sort.Strings(pre.Overwrite)
	sort.Strings(conflicts)
	if len(conflicts) > 0 {
		return pre, fmt.Errorf("import keys: %d keys already exist in enclave %s with different material (conflict; nothing was imported): %s", len(conflicts), enclave, strings.Join(conflicts, ", "))
	}
	if m.onConflict() == conflictFail && len(pre.Identical) > 0 {
		return pre, fmt.Errorf("import keys: %d keys already exist in enclave %s (identical material) and on_conflict = \"fail\" (nothing was imported): %s; use on_conflict = \"skip_identical\" to count them as done", len(pre.Identical), enclave, strings.Join(pre.Identical, ", "))
	}
	if len(pre.Overwrite) > 0 {
		h.warnf("%d keys in enclave %s hold different material and will be overwritten (on_conflict = \"overwrite\"): %s", len(pre.Overwrite), enclave, strings.Join(pre.Overwrite, ", "))
	}
	return pre, nil
}

// errConflict marks a key found at the target with different material
// after the preflight (something else writes to the enclave).
var errConflict = errors.New("different material at the target")

// keyDone is a key whose import (or overwrite) is confirmed by the target
// and is to be checkpointed.
type keyDone struct {
	name, action string
}

// checkpointKeys makes the migratedKeys item of each key durable before it
// returns, in one journal write under one fsync.
func checkpointKeys(w engine.CheckpointWriter, keys []keyDone) error {
	if len(keys) == 0 {
		return nil
	}
	items := make([]engine.CheckpointItem, len(keys))
	for i, k := range keys {
		items[i] = migratedKeys.Item(k.name).With(keyCheckpoint{Action: k.action})
	}
	return w.CheckpointAll(items)
}

// maxImportBatch bounds the keys imported by one request (about 4 KiB of
// request body at 64).
const maxImportBatch = 64

// importBatchSize is how many keys one import request carries. A request
// costs far more than the import it carries (TLS records, HTTP/2 frames, a
// handler at the Key Manager; on loopback the emulator spent about three
// times less CPU per key with 8 keys per request), so keys travel several
// per request as the protocol allows (one command frame per key), while
// about 8 requests stay in flight to keep both ends and the journal's
// group commit busy: parallelism/8, from 1 to 64.
func importBatchSize(parallelism int) int {
	return min(maxImportBatch, max(1, parallelism/8))
}

// overwriteKey replaces the target's key by the source material.
//
// Decision: the protocol has no "replace", and the Key Manager cannot export
// the key it holds, so an overwrite must delete, then import. kes migrate
// --force does the same and loses the key when the import fails. Here:
//   - a checkpoint "overwriting" is made durable before the delete, so a
//     crash or a failed import in between is finished by resume (the source
//     still holds the material; resume imports it), never forgotten;
//   - the import after the delete is retried like every other request;
//   - an identical key is never deleted (the preflight's round trip);
//   - the plan lists every key to be overwritten as a risk, by name, since
//     the target's old material (and anything sealed under it) is lost; and
//     rollback does not delete overwritten keys (it cannot restore the old
//     material, and deleting would leave the name without any key).
func (m *migrationStep) overwriteKey(ctx context.Context, h runHooks, c *kms.Client, enclave string, e *sourceEntry, present bool) (string, error) {
	if present {
		same, err := sameMaterial(ctx, c, enclave, e.name, e.key)
		if err != nil {
			return "", err
		}
		if same { // finished before an interruption
			return actionOverwritten, nil
		}
		if err := migratedKeys.Item(e.name).Put(h, keyCheckpoint{Action: actionOverwriting}); err != nil {
			return "", err
		}
		err = withRetry(ctx, func() error {
			return c.DeleteKey(ctx, enclave, &kms.DeleteKeyRequest{Name: e.name, AllVersions: true})
		})
		if err != nil && !errors.Is(err, kms.ErrKeyNotFound) {
			return "", fmt.Errorf("delete key %q to overwrite it: %w", e.name, err)
		}
	}
	err := withRetry(ctx, func() error {
		return c.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: e.name, Type: kmsType(e.key.Algorithm), Key: e.key.Material})
	})
	if errors.Is(err, kms.ErrKeyExists) {
		im := &importer{c: c, enclave: enclave, rep: &report{}}
		if there, rerr := im.present(ctx, []*sourceEntry{e}); rerr != nil {
			return "", rerr
		} else if !there {
			return "", fmt.Errorf("import key %q after deleting the target's different key: the Key Manager answers that the name is taken while no key of that name exists: it does not give a deleted name out again (the vendor's client: \"Once a key version has been removed it cannot be added again\"), so this name cannot be overwritten in enclave %s; its old material is deleted", e.name, enclave)
		}
		same, rerr := sameMaterial(ctx, c, enclave, e.name, e.key)
		if rerr != nil {
			return "", rerr
		}
		if !same {
			return "", errConflict
		}
		err = nil
	}
	if err != nil {
		return "", fmt.Errorf("import key %q after deleting the target's different key (the key is missing at the target until resume imports it): %w", e.name, err)
	}
	return actionOverwritten, nil
}

// deletedEarlier returns the key names that an earlier rollback of this
// migration step deleted from its enclave (undoneKeys.EverRecorded: a
// rollback clears the step's checkpoints for the next apply). A Key
// Manager that does not give a deleted name out again (the vendor's
// client: "Once a key version has been removed it cannot be added again")
// refuses to import them, so the plan names them before anything is done.
// Only the current journal counts: a later apply archives it (runs/), and
// the names then show up as refused, one by one, at import.
func deletedEarlier(r *engine.Run) (map[string]bool, error) {
	undone, err := undoneKeys.EverRecorded(r)
	if err != nil {
		return nil, fmt.Errorf("read the journal for keys deleted by an earlier rollback: %w", err)
	}
	var gone map[string]bool
	for name, kc := range undone {
		if kc.Action == actionDeleted {
			if gone == nil {
				gone = map[string]bool{}
			}
			gone[name] = true
		}
	}
	return gone, nil
}

// proveNames proves by round trip which of names (keys present at the
// target) hold the source's material, proveBatch keys a read-only request,
// up to parallelism keys at a time. Entries that are not keys are left out
// (the import pass reports them).
func proveNames(ctx context.Context, c *kms.Client, enclave string, src *sourceSet, names []string, parallelism int) (same, differ []string, err error) {
	const proveBatch = 64
	var mu sync.Mutex
	chunks := (len(names) + proveBatch - 1) / proveBatch
	err = forEach(ctx, max(1, parallelism/proveBatch), chunks, func(ctx context.Context, i int) error {
		var es []*sourceEntry
		defer func() {
			for _, e := range es {
				e.wipe()
			}
		}()
		for _, n := range names[i*proveBatch : min(len(names), (i+1)*proveBatch)] {
			e, err := src.readEntry(ctx, n)
			if err != nil {
				return err
			}
			if e.class != entryOK {
				continue
			}
			es = append(es, e)
		}
		im := &importer{c: c, enclave: enclave, rep: &report{}}
		s, d, err := im.prove(ctx, es)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		same, differ = append(same, s...), append(differ, d...)
		return nil
	})
	sort.Strings(same)
	sort.Strings(differ)
	return same, differ, err
}

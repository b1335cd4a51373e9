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
	"github.com/runbook-dev/runbook/internal/parallel"
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

// planListTarget is listTarget in a plan, asked once per enclave
// (planOnce): the enclave step's plan lists the enclave beside its status
// (enclaveStep.observe), and the migration's plan, which the graph puts
// after it, takes that listing instead of a round trip of its own. The
// names are shared: callers do not change them.
func planListTarget(ctx context.Context, r *engine.Run, c *kms.Client, enclave string) (names map[string]bool, exists bool, err error) {
	l, err := planOnce(r, enclaveListingKey{c, enclave}, func() (enclaveListing, error) {
		names, exists, err := listTarget(ctx, c, enclave)
		return enclaveListing{names, exists}, err
	})
	return l.names, l.exists, err
}

// enclaveListingKey keeps a plan's listing of an enclave per client.
type enclaveListingKey struct {
	c       *kms.Client
	enclave string
}

// enclaveListing is what listTarget found.
type enclaveListing struct {
	names  map[string]bool
	exists bool
}

func kmsType(a kescrypto.Algorithm) kms.SecretKeyType {
	if a == kescrypto.ChaCha20 {
		return kms.ChaCha20
	}
	return kms.AES256
}

// actionOf is what the step recorded for key name in family f (apply's
// migratedKeys, rollback's undoneKeys); "" when nothing.
func actionOf(c engine.Checkpoints, f engine.Family[keyCheckpoint], name string) string {
	kc, _, _ := f.Item(name).Get(c)
	return kc.Action
}

// migrate is Apply without the engine: h carries the journal. It judges
// the keys already in the enclave (once per run), sorts the source's keys
// into done and to do, imports the rest, and reports.
func (m *migrationStep) migrate(ctx context.Context, h runHooks, src *sourceSet, c *kms.Client, enclave string) (*migrationResult, error) {
	start := time.Now()
	present, exists, err := listTarget(ctx, c, enclave)
	if err != nil {
		return nil, fmt.Errorf("list enclave %s: %w", enclave, err)
	}
	if !exists {
		return nil, fmt.Errorf("import keys: %w", permanentHint(kms.ErrEnclaveNotFound, enclave))
	}
	pre, err := m.judgeOnce(ctx, h, src, c, enclave, present)
	if err != nil {
		return nil, err
	}
	ki := &keyImport{m: m, h: h, src: src, c: c, enclave: enclave, present: present, overwrite: setOf(pre.Overwrite),
		rep: &report{notKeys: src.notKeys}, res: &migrationResult{}, total: int64(len(src.names))}
	// What a rollback of this run that did not finish recorded: read once,
	// not per key (a first apply has none).
	undone, err := undoneKeys.All(h)
	if err != nil {
		return nil, fmt.Errorf("read the migration's rollback checkpoints: %w", err)
	}
	if gone := ki.sortDone(setOf(pre.Identical), undone); len(gone) > 0 {
		return nil, goneError(enclave, gone, undone)
	}
	err = ki.importAll(ctx)
	ki.count()
	if err != nil {
		return ki.res, err
	}
	ki.report(time.Since(start))
	return ki.res, ki.outcome()
}

// judgeOnce is the pre-flight, once per run: the keys already in the
// enclave are judged before anything is imported, so that a conflict
// changes nothing. A resume reads the judgement from the journal.
func (m *migrationStep) judgeOnce(ctx context.Context, h runHooks, src *sourceSet, c *kms.Client, enclave string, present map[string]bool) (preflightCheckpoint, error) {
	pre, ok, err := migrationPreflight.Get(h)
	if err != nil {
		return pre, fmt.Errorf("read the migration's preflight checkpoint: %w", err)
	}
	if ok {
		if pre.NamesSHA256 != src.digest {
			h.warnf("the key store's names changed since this step first ran (SHA-256 %s, now %s): keys created since are imported now; halt key creation at KES", pre.NamesSHA256[:16], src.digest[:16])
		}
		return pre, nil
	}
	if pre, err = m.preflight(ctx, h, src, c, enclave, present); err != nil {
		return pre, err
	}
	return pre, migrationPreflight.Put(h, pre)
}

// keyImport is one attempt's import of the source's keys into the enclave.
type keyImport struct {
	m         *migrationStep
	h         runHooks
	src       *sourceSet
	c         *kms.Client
	enclave   string
	present   map[string]bool // at the target when the attempt began
	overwrite map[string]bool // to replace with the source's material
	rep       *report
	res       *migrationResult
	todo      []string

	total, done           int64 // keys of the source; done or given up (atomic)
	imported, overwritten atomic.Int64
	journalNanos          atomic.Int64 // time workers waited for durable checkpoints
	busyNanos             atomic.Int64 // time workers worked in all

	conflictMu    sync.Mutex
	lateConflicts []string
}

// sortDone counts the keys done already (identical at the target, or
// checkpointed by an earlier attempt and still at the target) and lists
// the rest in ki.todo. It returns the keys the target no longer holds that
// an earlier attempt checkpointed as imported or this run's rollback as
// deleted (gone): the journal says done, or says deleted, and either way
// the Key Manager will not take the name again.
func (ki *keyImport) sortDone(identical map[string]bool, undone map[string]keyCheckpoint) (gone []string) {
	res := ki.res
	for _, n := range ki.src.names {
		if identical[n] {
			res.Skipped++
			continue
		}
		if !ki.present[n] && undone[n].Action == actionDeleted {
			gone = append(gone, n) // deleted by this run's rollback, in flight or not
			continue
		}
		switch a := actionOf(ki.h, migratedKeys, n); a {
		case actionImported, actionOverwritten:
			if !ki.present[n] {
				gone = append(gone, n)
				continue
			}
			if a == actionImported {
				res.Imported++
			} else {
				res.Overwritten++
			}
			res.Earlier++
			continue
		case actionOverwriting:
			ki.overwrite[n] = true // interrupted between delete and import: finish it
		}
		ki.todo = append(ki.todo, n)
	}
	ki.done = ki.total - int64(len(ki.todo))
	ki.h.progress(ki.done, ki.total)
	if res.Earlier > 0 || res.Skipped > 0 {
		ki.h.logf("%d keys done earlier (journal) or already present with identical material; %d to go", ki.done, len(ki.todo))
	}
	return gone
}

// goneError refuses a migration whose run imported keys the enclave no
// longer holds: deleted by a rollback of this run that was interrupted
// (its undoneKeys record most; a kill between a delete and its record
// leaves one unrecorded), or at the Key Manager by hand. The vendor's Key
// Manager does not give a deleted key name out again (its client: "Once a
// key version has been removed it cannot be added again"), so they cannot
// be imported again into this enclave; nothing is imported.
func goneError(enclave string, gone []string, undone map[string]keyCheckpoint) error {
	recorded := 0
	for _, n := range gone {
		if undone[n].Action == actionDeleted {
			recorded++
		}
	}
	return engine.RefuseWithHint("if a rollback of this run was interrupted, finish it with runbook rollback; then migrate into a new enclave",
		"%d key(s) this run imported are no longer in enclave %s (%d of them recorded as deleted by a rollback of this run that did not finish): %s; the Key Manager does not take a deleted key name again, so they cannot be migrated into this enclave; nothing was imported",
		len(gone), enclave, recorded, strings.Join(shortList(gone, 10), ", "))
}

// importAll imports ki.todo: a worker takes a run of up to batch
// consecutive keys, reads them, imports those that are not at the target
// in one request, and then checkpoints each of them. At most
// workers*batch <= parallelism keys are in flight (read, or imported
// without a durable checkpoint).
func (ki *keyImport) importAll(ctx context.Context) error {
	batch := importBatchSize(ki.m.parallelism())
	workers := max(1, ki.m.parallelism()/batch)
	runs := (len(ki.todo) + batch - 1) / batch
	return parallel.ForEach(ctx, workers, runs, func(ctx context.Context, ri int) error {
		t0 := time.Now()
		defer func() { ki.busyNanos.Add(int64(time.Since(t0))) }()
		finished, skipped, err := ki.importRun(ctx, ki.todo[ri*batch:min(len(ki.todo), (ri+1)*batch)])
		// Keys confirmed by the target are checkpointed even when a later
		// key of the run failed.
		t := time.Now()
		cerr := checkpointKeys(ki.h, finished)
		ki.journalNanos.Add(int64(time.Since(t)))
		if cerr != nil {
			return errors.Join(err, cerr)
		}
		for _, k := range finished {
			if k.action == actionOverwritten {
				ki.overwritten.Add(1)
			} else {
				ki.imported.Add(1)
			}
		}
		ki.h.progress(atomic.AddInt64(&ki.done, int64(len(finished)+skipped)), ki.total)
		return err
	})
}

// importRun reads a run of keys and carries each to the target: keys not
// there at the listing are imported together; keys there without a
// checkpoint (in flight at an interruption) are proven together; keys to
// overwrite one by one. It returns the keys the target confirmed, and how
// many entries were given up (not keys, or unparsable: reported).
func (ki *keyImport) importRun(ctx context.Context, names []string) (finished []keyDone, skipped int, err error) {
	var fresh, there []*sourceEntry
	defer func() {
		for _, e := range append(fresh, there...) {
			e.wipe()
		}
	}()
	for _, name := range names {
		e, err := ki.src.takeEntry(ctx, name)
		if err != nil {
			return finished, skipped, err
		}
		ki.rep.add(e)
		switch {
		case e.class != entryOK:
			skipped++
			continue
		case ki.overwrite[name]:
		case ki.present[name]:
			there = append(there, e)
			continue
		default:
			fresh = append(fresh, e)
			continue
		}
		action, err := ki.m.overwriteKey(ctx, ki.h, ki.c, ki.enclave, e, ki.present[name])
		e.wipe()
		if errors.Is(err, errConflict) {
			ki.conflict(name)
			continue
		}
		if err != nil {
			return finished, skipped, permanentHint(err, ki.enclave)
		}
		finished = append(finished, keyDone{name, action})
	}
	im := &importer{c: ki.c, enclave: ki.enclave, rep: ki.rep}
	if len(there) > 0 {
		same, differ, err := im.prove(ctx, there)
		if err != nil {
			return finished, skipped, permanentHint(err, ki.enclave)
		}
		ki.rep.inflight.Add(int64(len(same)))
		for _, name := range same {
			finished = append(finished, keyDone{name, actionImported})
		}
		ki.conflict(differ...)
	}
	if len(fresh) == 0 {
		return finished, skipped, nil
	}
	ok, conflicts, err := im.importAll(ctx, fresh)
	for _, name := range ok {
		finished = append(finished, keyDone{name, actionImported})
	}
	ki.conflict(conflicts...)
	return finished, skipped, permanentHint(err, ki.enclave)
}

// conflict records keys that appeared at the target with other material
// while the migration ran.
func (ki *keyImport) conflict(names ...string) {
	ki.conflictMu.Lock()
	defer ki.conflictMu.Unlock()
	ki.lateConflicts = append(ki.lateConflicts, names...)
}

// count adds this attempt's work to the result.
func (ki *keyImport) count() {
	res, rep := ki.res, ki.rep
	res.Imported += int(ki.imported.Load())
	res.Overwritten += int(ki.overwritten.Load())
	res.Requests = rep.requestCount.Load()
	res.Commands = rep.commandCount.Load()
	res.InFlight = rep.inflight.Load()
	rep.sort()
	res.NotMigrated = len(rep.unparsable) + len(rep.rejected)
}

// report logs what the attempt did and what the enclave now holds, and
// names every entry left behind.
func (ki *keyImport) report(elapsed time.Duration) {
	h, res, rep := ki.h, ki.res, ki.rep
	carried := ki.imported.Load() + ki.overwritten.Load()
	h.logf("imported %d keys this attempt (%d import requests carrying %d keys, %d found already imported after an interruption or a lost answer, %d done by earlier attempts; %d requests read back what failed requests did) in %s (%.0f keys/s)",
		carried, res.Requests, res.Commands, res.InFlight, res.Earlier, rep.readbacks.Load(), elapsed.Round(time.Millisecond), float64(carried)/max(elapsed.Seconds(), 1e-9))
	if b := ki.busyNanos.Load(); b > 0 && len(ki.todo) > 0 {
		h.logf("journal: waiting for durable per-key checkpoints took %.0f%% of the workers' time", 100*float64(ki.journalNanos.Load())/float64(b))
	}
	left := ""
	if n := len(rep.unparsable) + len(rep.rejected); n > 0 {
		left = fmt.Sprintf(" (%d do not parse, %d names the Key Manager refuses)", len(rep.unparsable), len(rep.rejected))
	}
	if n := len(rep.notKeys); n > 0 {
		left += fmt.Sprintf("; %d entries that are not keys left out", n)
	}
	if n := len(ki.src.foreign); n > 0 {
		left += fmt.Sprintf("; %d %s left out, never copied", n, groupForeign)
	}
	h.logf("enclave %s holds %d of the %d source keys: %d imported, %d already present (identical), %d overwritten, %d not migrated%s",
		ki.enclave, res.Imported+res.Skipped+res.Overwritten, len(ki.src.names)-len(rep.unparsable), res.Imported, res.Skipped, res.Overwritten,
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
}

// outcome fails the attempt for keys another writer changed meanwhile, and
// for entries that cannot be carried unless the runbook leaves them behind.
func (ki *keyImport) outcome() error {
	if len(ki.lateConflicts) > 0 {
		sort.Strings(ki.lateConflicts)
		return fmt.Errorf("import keys: %d keys appeared at the target with different material while the migration ran (something else writes to enclave %s): %s", len(ki.lateConflicts), ki.enclave, strings.Join(ki.lateConflicts, ", "))
	}
	if bl := ki.rep.blocking(); len(bl) > 0 && !ki.m.cfg.SkipUnparsable {
		return engine.WithHint(fmt.Errorf("import keys: %d entries cannot be carried (every other key is imported): %s", len(bl), strings.Join(describeProblems(bl), "; ")),
			"fix them in the key store and resume, or set skip_unparsable = true to leave them behind")
	}
	return nil
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
		return pre, engine.WithHint(fmt.Errorf("import keys: %d keys already exist in enclave %s (identical material) and on_conflict = \"fail\" (nothing was imported): %s", len(pre.Identical), enclave, strings.Join(pre.Identical, ", ")),
			`use on_conflict = "skip_identical" to count them as done`)
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
	err = parallel.ForEach(ctx, max(1, parallelism/proveBatch), chunks, func(ctx context.Context, i int) error {
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

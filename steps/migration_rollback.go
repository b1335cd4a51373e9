package steps

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/parallel"
)

// Rollback deletes the keys this run imported: those checkpointed as
// imported, and those in flight at an interruption (present at the target,
// not there at the preflight, and proven identical to the source by a round
// trip). Keys that were already there are never touched; overwritten keys
// are kept (their old material cannot be restored) and named. Each deletion
// is checkpointed; ErrKeyNotFound counts as deleted, so it is idempotent.
// Refused once a cutover has been applied: the object store may then have
// sealed data under these keys; and refused while the object store runs on
// the enclave however it got there (refuseWhileInUse).
func (m *migrationStep) Rollback(ctx context.Context, r *engine.Run) error {
	if addr, state, err := cutoverApplied(r); err != nil {
		return err
	} else if addr != "" {
		return engine.RefuseWithHint("roll back the cutover first", "%s is %s: the object store may already seal data under the migrated keys, so deleting them could lose data", addr, state)
	}
	to, err := enclaveFrom(m.cfg.To)
	if err != nil {
		return err
	}
	c, err := to.KM.Client(r)
	if err != nil {
		return err
	}
	pre, ok, err := migrationPreflight.Get(r)
	if err != nil {
		return fmt.Errorf("read the migration's preflight checkpoint: %w", err)
	}
	if !ok {
		r.Logf("nothing to undo: no key was imported (the step stopped before its preflight)")
		return nil
	}
	if err := refuseWhileInUse(ctx, r, to, "the keys this run imported"); err != nil {
		return err
	}
	kept := setOf(pre.Identical)
	for _, n := range pre.Overwrite {
		kept[n] = true
	}
	del, overwritten, err := m.importedKeys(ctx, r, c, to.Name, kept)
	if err != nil {
		return err
	}
	var todo []string
	for _, n := range del {
		if !undoneKeys.Item(n).Done(r) {
			todo = append(todo, n)
		}
	}
	r.Logf("deleting %d keys this run imported into enclave %s (%d deleted by an earlier rollback attempt); %d keys that were there before are kept", len(todo), to.Name, len(del)-len(todo), len(kept))
	if err := m.deleteKeys(ctx, r, c, to.Name, todo); err != nil {
		return err
	}
	if len(overwritten) > 0 {
		r.Warnf("kept %d keys this run overwrote, with the source's material: their earlier material was deleted at overwrite and cannot be restored (the Key Manager exports nothing): %s", len(overwritten), strings.Join(overwritten, ", "))
	}
	return nil
}

// importedKeys returns, sorted, the keys this run imported (checkpointed
// as imported, or in flight at an interruption) and those it overwrote.
// kept are the keys that were there before the run.
func (m *migrationStep) importedKeys(ctx context.Context, r *engine.Run, c *kms.Client, enclave string, kept map[string]bool) (imported, overwritten []string, err error) {
	migrated, err := migratedKeys.All(r)
	if err != nil {
		return nil, nil, err
	}
	for name, kc := range migrated {
		switch kc.Action {
		case actionImported:
			imported = append(imported, name)
		case actionOverwritten, actionOverwriting:
			overwritten = append(overwritten, name)
		}
	}
	checked := setOf(imported)
	for _, n := range overwritten {
		checked[n] = true
	}
	inFlight, err := m.inFlightKeys(ctx, r, c, enclave, func(n string) bool { return kept[n] || checked[n] })
	if err != nil {
		return nil, nil, err
	}
	imported = append(imported, inFlight...)
	sort.Strings(imported)
	sort.Strings(overwritten)
	return imported, overwritten, nil
}

// inFlightKeys returns the keys imported without a checkpoint (in flight
// at an interruption): in the enclave now, not known, and proven
// identical to the source by a round trip. A key store that cannot be read
// is warned about: only the checkpointed keys are then deleted.
func (m *migrationStep) inFlightKeys(ctx context.Context, r *engine.Run, c *kms.Client, enclave string, known func(string) bool) ([]string, error) {
	from, _, err := engine.ConnectionFrom[*kesConnection](m.cfg.From, "kes")
	if err != nil {
		return nil, nil
	}
	src, err := openSource(ctx, r, from, m.pattern())
	if err != nil {
		r.Warnf("cannot read the key store to find keys that were in flight at an interruption (%v): only the checkpointed keys are deleted", err)
		return nil, nil
	}
	defer src.ks.Close()
	present, _, err := listTarget(ctx, c, enclave)
	if err != nil {
		return nil, fmt.Errorf("list enclave %s: %w", enclave, err)
	}
	var maybe, same []string
	for _, n := range src.names {
		if present[n] && !known(n) {
			maybe = append(maybe, n)
		}
	}
	var mu sync.Mutex
	err = parallel.ForEach(ctx, m.parallelism(), len(maybe), func(ctx context.Context, i int) error {
		e, err := src.readEntry(ctx, maybe[i])
		if err != nil || e.class != entryOK {
			return err
		}
		defer e.wipe()
		ok, err := sameMaterial(ctx, c, enclave, e.name, e.key)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if ok {
			same = append(same, e.name)
		} else {
			r.Warnf("kept key %s in enclave %s: it was not there before this run, but its material differs from the source's, so this run did not import it", e.name, enclave)
		}
		return nil
	})
	if err != nil {
		return nil, permanentHint(err, enclave)
	}
	return same, nil
}

// deleteKeys deletes names from the enclave, each checkpointed once gone
// (ErrKeyNotFound counts as gone).
func (m *migrationStep) deleteKeys(ctx context.Context, r *engine.Run, c *kms.Client, enclave string, names []string) error {
	var done atomic.Int64
	total := int64(len(names))
	return parallel.ForEach(ctx, m.parallelism(), len(names), func(ctx context.Context, i int) error {
		name := names[i]
		err := withRetry(ctx, func() error {
			return c.DeleteKey(ctx, enclave, &kms.DeleteKeyRequest{Name: name, AllVersions: true})
		})
		if err != nil && !errors.Is(err, kms.ErrKeyNotFound) {
			return fmt.Errorf("delete key %q: %w", name, permanentHint(err, enclave))
		}
		if err := undoneKeys.Item(name).Put(r, keyCheckpoint{Action: actionDeleted}); err != nil {
			return err
		}
		r.Progress(done.Add(1), total)
		return nil
	})
}

// cutoverApplied returns a cutover step of this run that may have taken
// effect (any state but pending or rolled back). The engine rolls back in
// reverse dependency order, so with cutover depending on the migration (as
// in migrate.hcl) this check is a second line of defence.
func cutoverApplied(r *engine.Run) (addr string, state engine.State, err error) {
	states, err := r.StepStates("cutover")
	if err != nil {
		return "", "", fmt.Errorf("read the journal to check for a cutover: %w", err)
	}
	for _, a := range slices.Sorted(maps.Keys(states)) {
		switch st := states[a]; st {
		case engine.StatePending, engine.StateRolledBack:
		default:
			return a, st, nil
		}
	}
	return "", "", nil
}

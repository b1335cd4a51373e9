package steps

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"

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

func actionOf(raw json.RawMessage) string {
	var kc keyCheckpoint
	if json.Unmarshal(raw, &kc) != nil {
		return ""
	}
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
	var pre preflightCheckpoint
	if raw, ok := h.checkpoints[itemPreflight]; ok {
		if err := json.Unmarshal(raw, &pre); err != nil {
			return nil, fmt.Errorf("read the migration's preflight checkpoint: %w", err)
		}
		if pre.NamesSHA256 != src.digest {
			h.warnf("the key store's names changed since this step first ran (SHA-256 %s, now %s): keys created since are imported now; halt key creation at KES", pre.NamesSHA256[:16], src.digest[:16])
		}
	} else {
		pre, err = m.preflight(ctx, h, src, c, enclave, present)
		if err != nil {
			return nil, err
		}
		if err := h.checkpoint(itemPreflight, pre); err != nil {
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
		switch actionOf(h.checkpoints[itemKeyPrefix+n]) {
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
			var fresh []*sourceEntry // not at the target: imported together
			defer func() {
				for _, e := range fresh {
					e.wipe()
				}
			}()
			for _, name := range todo[ri*batch : min(len(todo), (ri+1)*batch)] {
				e, err := src.readEntry(ctx, name)
				if err != nil {
					return err
				}
				rep.add(e)
				if e.class != entryOK {
					skipped++
					continue
				}
				if !overwrite[name] && !present[name] {
					fresh = append(fresh, e)
					continue
				}
				var action string
				if overwrite[name] {
					action, err = m.overwriteKey(ctx, h, c, enclave, e, present[name])
				} else {
					action, err = importKey(ctx, c, enclave, e, true, rep)
				}
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
			if len(fresh) == 0 {
				return nil
			}
			ok, conflicts, err := importKeys(ctx, c, enclave, fresh, rep)
			for _, name := range ok {
				finished = append(finished, keyDone{name, actionImported})
			}
			conflict(conflicts...)
			return permanentHint(err, enclave)
		}()
		// Keys confirmed by the target are checkpointed even when a later
		// key of the run failed.
		t := time.Now()
		cerr := checkpointKeys(h.checkpoint, finished)
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
	res.InFlight = rep.inflight.Load()
	rep.sort()
	res.NotMigrated = len(rep.unparsable) + len(rep.rejected)
	if err != nil {
		return res, err
	}

	elapsed := time.Since(start)
	rate := float64(imported.Load()+overwritten.Load()) / max(elapsed.Seconds(), 1e-9)
	h.logf("imported %d keys this attempt (%d import requests, %d found already imported after an interruption, %d done by earlier attempts) in %s (%.0f keys/s)",
		imported.Load()+overwritten.Load(), res.Requests, res.InFlight, res.Earlier, elapsed.Round(time.Millisecond), rate)
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
	var mu sync.Mutex
	var conflicts []string
	err := forEach(ctx, m.parallelism(), len(both), func(ctx context.Context, i int) error {
		e, err := src.readEntry(ctx, both[i])
		if err != nil {
			return err
		}
		defer e.wipe()
		if e.class != entryOK {
			return nil // reported by the import pass
		}
		verdict, err := m.judgePresent(ctx, c, enclave, e)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		switch verdict {
		case verdictIdentical:
			pre.Identical = append(pre.Identical, e.name)
		case verdictOverwrite:
			pre.Overwrite = append(pre.Overwrite, e.name)
		default:
			conflicts = append(conflicts, e.name)
		}
		return nil
	})
	if err != nil {
		return pre, err
	}
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

// importKey imports one key. A key that is already there (in flight at an
// interruption, or imported by a request whose answer was lost) is accepted
// only when a round trip proves the same material.
func importKey(ctx context.Context, c *kms.Client, enclave string, e *sourceEntry, present bool, rep *report) (string, error) {
	var err error
	if !present {
		err = withRetry(ctx, func() error {
			rep.requestCount.Add(1)
			return c.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: e.name, Type: kmsType(e.key.Algorithm), Key: e.key.Material})
		})
		if err == nil {
			return actionImported, nil
		}
		if !errors.Is(err, kms.ErrKeyExists) {
			return "", fmt.Errorf("import key %q: %w", e.name, err)
		}
	}
	same, err := sameMaterial(ctx, c, enclave, e.name, e.key)
	if err != nil {
		return "", err
	}
	if !same {
		return "", errConflict
	}
	rep.inflight.Add(1)
	return actionImported, nil
}

// keyDone is a key whose import (or overwrite) is confirmed by the target
// and is to be checkpointed.
type keyDone struct {
	name, action string
}

// checkpointKeys makes a "key/NAME" checkpoint of each key durable before
// it returns. The checkpoints are appended concurrently so that they share
// the journal's group commit (one fsync for the lot, not one per key).
func checkpointKeys(checkpoint func(item string, data any) error, keys []keyDone) error {
	switch len(keys) {
	case 0:
		return nil
	case 1:
		return checkpoint(itemKeyPrefix+keys[0].name, keyCheckpoint{Action: keys[0].action})
	}
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys[1:] {
		wg.Go(func() { errs[i+1] = checkpoint(itemKeyPrefix+k.name, keyCheckpoint{Action: k.action}) })
	}
	errs[0] = checkpoint(itemKeyPrefix+keys[0].name, keyCheckpoint{Action: keys[0].action})
	wg.Wait()
	return errors.Join(errs...)
}

// maxImportBatch bounds the keys imported by one request.
const maxImportBatch = 16

// importBatchSize is how many keys one import request carries. A request
// costs far more than the import it carries (TLS records, HTTP/2 frames, a
// handler at the Key Manager; on loopback the emulator spent about three
// times less CPU per key with 8 keys per request), so keys travel several
// per request as the protocol allows (one command frame per key), while
// about 8 requests stay in flight to keep both ends and the journal's
// group commit busy: parallelism/8, from 1 to 16.
func importBatchSize(parallelism int) int {
	return min(maxImportBatch, max(1, parallelism/8))
}

// importKeys imports keys that were not at the target at the listing, in
// one request of one KEY:IMPORT frame per key (the Key Manager answers with
// one frame per command, or with the error of the first command that
// failed). It returns the names confirmed imported and those found at the
// target with different material (with an error: those confirmed before
// it). A request that fails for any reason
// other than the context (after retries of transient errors) is not
// interpreted: every key of it is then imported on its own, and a key that
// the failed request did import is proven by a round trip.
func importKeys(ctx context.Context, c *kms.Client, enclave string, es []*sourceEntry, rep *report) (ok, conflicts []string, err error) {
	if len(es) > 1 {
		body := make([]byte, 0, 64*len(es))
		for _, e := range es {
			if body, err = cmds.Encode(body, cmds.KeyImport, &kms.ImportKeyRequest{Name: e.name, Type: kmsType(e.key.Algorithm), Key: e.key.Material}); err != nil {
				clear(body)
				return nil, nil, fmt.Errorf("import keys: encode request: %w", err)
			}
		}
		answered := false
		err = withRetry(ctx, func() error {
			rep.requestCount.Add(int64(len(es)))
			resp, err := c.Send(ctx, &kms.Request{Enclave: enclave, Body: body})
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			out, err := io.ReadAll(io.LimitReader(resp.Body, int64(64*len(es))))
			if err != nil {
				return err
			}
			answered = countFrames(out, cmds.KeyImport) == len(es)
			return nil
		})
		clear(body)
		if err == nil && answered {
			for _, e := range es {
				ok = append(ok, e.name)
			}
			return ok, nil, nil
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
	}
	for _, e := range es {
		_, err := importKey(ctx, c, enclave, e, false, rep)
		if errors.Is(err, errConflict) {
			conflicts = append(conflicts, e.name)
			continue
		}
		if err != nil {
			return ok, conflicts, err
		}
		ok = append(ok, e.name)
	}
	return ok, conflicts, nil
}

// countFrames counts the response frames of body (uint16 command, uint32
// length, message), or returns -1 if body is not a sequence of frames of
// command cmd.
func countFrames(body []byte, cmd cmds.Command) int {
	n := 0
	for len(body) > 0 {
		if len(body) < 6 || cmds.Command(binary.BigEndian.Uint16(body)) != cmd {
			return -1
		}
		l := binary.BigEndian.Uint32(body[2:])
		if uint64(l) > uint64(len(body)-6) {
			return -1
		}
		body = body[6+l:]
		n++
	}
	return n
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
		if err := h.checkpoint(itemKeyPrefix+e.name, keyCheckpoint{Action: actionOverwriting}); err != nil {
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

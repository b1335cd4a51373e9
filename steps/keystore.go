package steps

import (
	"context"
	"fmt"
	"strings"
	"sync"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
)

// What a key-store entry is, for every step. Prerequisites, migration and
// verification all take the store from listKeyStore, so they agree. The
// listing itself (complete, cross-checked) and the classification of a
// value live in internal/keystore; this file is the steps' view of them.
//
// The groups (docs/domain.md, "KES stored keys"):
//   - Keys: entries KES can serve as keys: valid KES names, and a stored
//     value that KES's own parser accepts. A symlink to a key file is one
//     (KES's fs store reads through it).
//   - Keys that are broken ("entries that look like keys but do not
//     parse"): the value has the shape of a format KES writes, and KES's
//     parser refuses it, or KES's own reading of the entry fails because
//     of the entry (a Vault transit key the config lacks). KES wrote it and
//     it was damaged, so KES cannot serve it either and nothing readable is
//     sealed under it: named with the reason, never migrated, a risk in the
//     plan.
//   - Not keys ("entries that are not keys"): a directory such as
//     lost+found, a dot-file, an editor backup, a name KES refuses, a
//     symlink that leads nowhere: artifacts of KES's own directory or
//     prefix, each named with the reason and left out by every step.
//   - Not KES keys ("entries that are not KES keys"): other applications'
//     secrets, in a store KES shares with them (an AWS account, a GCP
//     project, an Azure vault, a Vault kv path). Their value is read once,
//     to tell, and never kept, copied (not in backups/, not in the
//     journal) or shown; their names appear only as a count, unless the
//     kes block sets show_other_secrets = true.
//
// The boundary between "a broken KES key" and "not a KES key" is the value's
// shape (keystore.Classify). A value is a broken KES key when
//   - it is JSON with a top-level member "bytes" (KES v0.22/v0.23 wrote
//     {"version","bytes","algorithm","created_at","created_by"}), or text
//     that starts with '{' and holds "bytes" but is not JSON (cut short):
//     {"bytes": …} of the wrong length, a legacy algorithm KES does not
//     know, a truncated file;
//   - or its first four bytes are base64 decoding to 0x0a, the first byte
//     KES v0.24 writes (the protobuf tag of KeyVersion.SecretKey): a v0.24
//     key cut short or altered after its start;
//   - or it is empty (an fs key file whose creation was cut short).
//
// Anything else is not a KES key: JSON without "bytes" ({"username": …,
// "password": …}), plain text, a binary blob, a Vault entry without the
// field KES writes (named after the key), a GCP secret whose version 1 is
// disabled or destroyed. In a shared store (keystore.Shared) a name KES
// refuses ("prod/db-password") is not a KES key either, and its value is
// never read. An AWS secret KES's credentials may not decrypt is named as
// a broken key: its format cannot be seen, and it may be KES's.

type (
	problem      = keystore.Problem
	storeListing = keystore.Listing
)

// listKeyStore lists every entry of the store completely, checks the
// listing by a second means (keystore.List), and reads every candidate key
// once to leave out the entries that are not KES keys (keystore.Classify),
// but for those judged already in this process (judged; r may be nil).
func listKeyStore(ctx context.Context, r *engine.Run, k *kesConnection, ks kesserver.KeyStore, conf *kesconf.File) (*storeListing, error) {
	l, err := planList(ctx, r, k, ks, conf)
	if err != nil {
		return nil, err
	}
	err = l.Classify(ctx, func(ctx context.Context, name string) (raw []byte, err error) {
		err = withRetry(ctx, func() error {
			raw, err = ks.Get(ctx, name)
			return err
		})
		return raw, err
	}, readParallelismOf(ks), judged(r, k, conf))
	if err != nil {
		return nil, fmt.Errorf("list key store: %w (was an entry deleted while it was read? halt key changes at KES first)", err)
	}
	return l, nil
}

// The names of the groups, as plans and logs show them.
const (
	groupNotKeys    = "entries that are not keys"
	groupUnparsable = "entries that look like keys but do not parse"
	groupForeign    = "entries that are not KES keys"
)

// Stored-key formats, as KES wrote them (docs/domain.md, "KES stored keys").
const (
	formatV024 = keystore.FormatV024 // base64 protobuf
	formatV023 = keystore.FormatV023 // JSON, written by KES v0.22/v0.23
)

// parseEntry parses a value of an entry the listing took for a key. A value
// that does not parse is an "unparsable" entry: reason says why, never with
// material. A value that has become another application's since the
// listing is unparsable too, named as the key it was listed as.
func parseEntry(raw []byte) (k kescrypto.Key, format, reason string) {
	e := keystore.Classify(raw)
	switch e.Class {
	case keystore.ClassKey:
		return e.Key, e.Format, ""
	case keystore.ClassForeign:
		return kescrypto.Key{}, formatV024, "no longer in a KES key format: it changed after the store was listed"
	}
	return kescrypto.Key{}, e.Format, e.Reason
}

// unreadableEntryReason says why a key store read failed because of the
// entry itself, or "" for any other failure, which stops the step.
func unreadableEntryReason(err error) string {
	if class, why := keystore.Unreadable(err); class != keystore.ClassKey {
		return why
	}
	return ""
}

// verdictsKey keys the session's memory of a key store's entries: the
// KES config's path and the store it names.
type verdictsKey struct{ config, store string }

func verdictsKeyOf(r *engine.Run, k *kesConnection, conf *kesconf.File) verdictsKey {
	return verdictsKey{config: r.Path(k.cfg.Config), store: keystore.Describe(conf)}
}

// listingKey keeps a plan's listing of a key store (planList).
type listingKey verdictsKey

// planList is keystore.List, listed once per plan (planOnce; r may be
// nil): a plan's every step lists the store at about the same moment (the
// verification's early start, the prerequisites, the migration, the
// verification: four listings and cross-checks, 0.3-0.5 s each at 100,000
// keys), and each gets a copy of the first listing that succeeded. An
// apply lists afresh each time it acts.
func planList(ctx context.Context, r *engine.Run, k *kesConnection, ks kesserver.KeyStore, conf *kesconf.File) (*storeListing, error) {
	list := func() (*storeListing, error) { return keystore.List(ctx, ks, conf) }
	if r == nil || k == nil || conf == nil || !r.Planning() {
		return list() // the caller's own: no copy
	}
	l, err := planOnce(r, listingKey(verdictsKeyOf(r, k, conf)), list)
	if err != nil {
		return nil, err
	}
	return l.Clone(), nil
}

// planOnce is observe's answer, asked once per plan (engine.Run.Planning)
// under key (engine.Run.Memo): the first answer that succeeded is kept for
// the plan's other steps, which ask at about the same moment; concurrent
// callers wait for the one under way; one that fails is asked again by the
// next caller. Outside a plan (r nil, or an apply, which checks what it
// acts on) observe is asked every time. What is kept is shared: a caller
// that changes it copies it first.
func planOnce[T any](r *engine.Run, key any, observe func() (T, error)) (T, error) {
	if r == nil || !r.Planning() {
		return observe()
	}
	return r.Memo(key, func() any { return new(keptResult[T]) }).(*keptResult[T]).get(observe)
}

// keptResult is the first result of an observation that succeeded
// (planOnce).
type keptResult[T any] struct {
	mu sync.Mutex
	v  T
	ok bool
}

func (k *keptResult[T]) get(observe func() (T, error)) (T, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ok {
		return k.v, nil
	}
	v, err := observe()
	if err == nil {
		k.v, k.ok = v, true
	}
	return v, err
}

// judged is the session's memory of the entries of k's key store judged
// so far (nil for none): kept across the quiet plan and the apply of one
// process (engine.Run.Memo), so that each value is classified once. In the
// quiet plan an apply makes first it also holds the values of the keys it
// reads and the keys parsed from them (keystore.Verdicts.Hold), which the
// snapshot (takeValue) and the migration (sourceSet.entry) of that apply
// copy instead of reading and parsing each key again; the verification
// always reads the store itself, and parses only a value that differs
// from the held one. The engine releases them when the apply ends
// (engine.Releaser).
func judged(r *engine.Run, k *kesConnection, conf *kesconf.File) *keystore.Verdicts {
	if r == nil || k == nil || conf == nil {
		return nil
	}
	v := r.Memo(verdictsKeyOf(r, k, conf), func() any { return new(keystore.Verdicts) }).(*keystore.Verdicts)
	if r.BeforeApply() {
		v.Hold()
	}
	return v
}

// takeValue is name's value as the quiet plan of this apply read it (held,
// and then a KES key by the plan's verdict), else as ks reads it now: for
// the snapshot, milliseconds to seconds after that read. KES creates a key
// once and never rewrites it; only a deletion, or a deletion and a new key
// of the same name, in between could make the store differ from the copy
// (the name checks see a name come or go, not a value). The copy is then of
// a key the store held at the plan, and the verification, which reads the
// store itself and proves every copy against it, fails the run naming the
// key, as a read failing in the copying step would have failed it sooner.
// The migration takes the key the plan parsed (Verdicts.HeldKey) on the
// same grounds.
func takeValue(ctx context.Context, held *keystore.Verdicts, ks kesserver.KeyStore, name string) (raw []byte, isHeld bool, err error) {
	if raw := held.Held(name); raw != nil {
		return raw, true, nil
	}
	raw, err = ks.Get(ctx, name)
	return raw, false, err
}

// foreignObserved is the plan's line on the entries that are not KES keys,
// or "": a count, and the names only when the kes block asks for them.
func foreignObserved(k *kesConnection, foreign []string) string {
	if len(foreign) == 0 {
		return ""
	}
	what := fmt.Sprintf("%s (%d): other applications' secrets in the store (neither KES's JSON nor its protobuf key format, or a name KES refuses in a shared store), left out by every step; their values are never copied", groupForeign, len(foreign))
	if k.cfg.ShowOtherSecrets {
		return what + ": " + strings.Join(foreign, ", ")
	}
	return what + "; their names are not shown (show_other_secrets = true in the kes block lists them)"
}

// foreignRisk is the plan's warning when KES's credentials can read more
// than its keys, or "".
func foreignRisk(conf *kesconf.File, l *storeListing) string {
	switch {
	case len(l.Foreign) > 0:
		return fmt.Sprintf("KES's credentials for its %s store can read %d secret(s) that are not KES keys: whoever holds the KES config holds them too; the runbook reads each once to tell it apart and copies none, but consider credentials that reach KES's keys only", keystore.Kind(conf), len(l.Foreign))
	case l.Shared:
		return fmt.Sprintf("KES's %s store lists every secret its credentials can see (KES keeps no place of its own there): today they see only KES keys; a secret another application adds there later is left out as not a KES key", keystore.Kind(conf))
	}
	return ""
}

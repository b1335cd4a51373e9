package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
)

// sourceSet is the listing of the key store, filtered by the pattern.
type sourceSet struct {
	ks      kesserver.KeyStore
	conf    *kesconf.File
	listing *storeListing
	where   string    // e.g. "fs key store /var/kes/keys"
	total   int       // entries in the store
	names   []string  // sorted names of the keys that match the pattern
	notKeys []problem // entries matching the pattern that are not keys (listKeyStore)
	foreign []string  // entries matching the pattern that are not KES keys: counted, never read again
	digest  string    // SHA-256 of names, one per line
	// facts is what this process's listings found of each entry
	// (listKeyStore), which a plan counts instead of reading again; nil
	// for none.
	facts *keystore.Verdicts
}

func namesDigest(names []string) string {
	h := sha256.New()
	for _, n := range names {
		h.Write([]byte(n))
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func openSource(ctx context.Context, r *engine.Run, from *kesConnection, pattern string) (*sourceSet, error) {
	ks, conf, err := from.OpenKeyStore(ctx, r)
	if err != nil {
		return nil, err
	}
	l, err := listKeyStore(ctx, r, from, ks, conf)
	if err != nil {
		ks.Close()
		return nil, err
	}
	s, err := newSourceSet(ks, conf, l, pattern)
	if err != nil {
		return nil, err
	}
	s.facts = judged(r, from, conf)
	return s, nil
}

func newSourceSet(ks kesserver.KeyStore, conf *kesconf.File, l *storeListing, pattern string) (*sourceSet, error) {
	s := &sourceSet{ks: ks, conf: conf, listing: l, total: len(l.All)}
	for _, n := range l.Keys {
		ok, err := path.Match(pattern, n)
		if err != nil {
			return nil, fmt.Errorf("match key names against pattern %q: %w", pattern, err)
		}
		if ok {
			s.names = append(s.names, n)
		}
	}
	for _, p := range l.NotKeys {
		if ok, _ := path.Match(pattern, p.Name); ok {
			s.notKeys = append(s.notKeys, p)
		}
	}
	for _, n := range l.Foreign {
		if ok, _ := path.Match(pattern, n); ok {
			s.foreign = append(s.foreign, n)
		}
	}
	s.digest = namesDigest(s.names)
	s.where = "key store"
	if conf != nil {
		if fs, ok := conf.KeyStore.(*kesconf.FSKeyStore); ok {
			s.where = "fs key store " + fs.Path
		} else {
			s.where = keystore.Kind(conf) + " key store"
		}
	}
	return s, nil
}

// entryClass says what kind of problem an entry has, if any.
type entryClass int

const (
	entryOK entryClass = iota
	// entryUnparsable: looks like a key (listKeyStore), but its value does
	// not parse: KES cannot serve it either. Named, never migrated; does
	// not fail the step.
	entryUnparsable
	// entryRejectedName: a key whose name the Key Manager would reject.
	// Fails the step unless skip_unparsable.
	entryRejectedName
)

// sourceEntry is one read entry. Material is only held while the key is in
// flight; wipe() drops it.
type sourceEntry struct {
	name   string
	key    kescrypto.Key // its Algorithm only, when observed from facts
	hmac   bool          // the key has an HMAC key
	format string        // "v0.24" (protobuf) or "v0.23" (JSON)
	class  entryClass
	reason string // why it is not OK; never holds material
}

func (e *sourceEntry) wipe() {
	clear(e.key.Material)
	clear(e.key.HMAC)
	e.key.Material, e.key.HMAC = nil, nil
}

// kmNameProblem says why a key name cannot be sent to the Key Manager, or
// "". Only what the protocol fixes: the name is a protobuf string
// (kms-go protobuf ImportKeyRequest), which must be valid UTF-8 to be
// encoded at all, and an empty one is the protobuf default. The vendor
// states no other rule, so none is guessed here: a name the Key Manager
// refuses is refused per key at import, and the report names it.
func kmNameProblem(name string) string {
	switch {
	case name == "":
		return "the name is empty"
	case !utf8.ValidString(name):
		return "the name is not valid UTF-8, which the Key Manager's protocol cannot carry"
	}
	return ""
}

// readEntry reads and classifies one entry. A non-nil error is a failure to
// read the store (not a property of the entry) and stops the step.
func (s *sourceSet) readEntry(ctx context.Context, name string) (*sourceEntry, error) {
	return s.entry(ctx, name, nil)
}

// takeEntry is readEntry of the key this apply's quiet plan parsed, when it
// holds it (Verdicts.HeldKey): for the import, which copies the key.
func (s *sourceSet) takeEntry(ctx context.Context, name string) (*sourceEntry, error) {
	return s.entry(ctx, name, s.facts)
}

func (s *sourceSet) entry(ctx context.Context, name string, held *keystore.Verdicts) (*sourceEntry, error) {
	e := &sourceEntry{name: name}
	// The key the plan of this apply parsed from the value it read, if it
	// holds it (takeValue says why that copy is safe); else read now.
	k, format, ok := held.HeldKey(name)
	if !ok {
		raw, err := s.ks.Get(ctx, name)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			if why := unreadableEntryReason(err); why != "" {
				e.class, e.reason = entryUnparsable, why
				return e, nil
			}
			return nil, fmt.Errorf("read key %q from the %s: %w (was it deleted since the listing? halt key changes at KES first)", name, s.where, err)
		}
		var reason string
		k, format, reason = parseEntry(raw)
		clear(raw)
		if reason != "" {
			e.class, e.format, e.reason = entryUnparsable, format, reason
			return e, nil
		}
	}
	e.format = format
	e.key, e.hmac = k, k.HMAC != nil
	if p := kmNameProblem(name); p != "" {
		e.wipe()
		e.class = entryRejectedName
		e.reason = "the Key Manager rejects this name: " + p
	}
	return e, nil
}

// knownEntry is what readEntry would find of name, without its material,
// from what this process's listing found of it (facts) when it read it;
// ok is false when name must be read (observeEntry). For a plan, which
// counts and names entries.
func (s *sourceSet) knownEntry(name string) (e *sourceEntry, ok bool) {
	f, ok := s.facts.Facts(name)
	if !ok || f.Class == keystore.ClassForeign {
		return nil, false
	}
	e = &sourceEntry{name: name, format: f.Format}
	switch {
	case f.Class == keystore.ClassBroken:
		e.class, e.reason = entryUnparsable, f.Reason
	case kmNameProblem(name) != "":
		e.class, e.reason = entryRejectedName, "the Key Manager rejects this name: "+kmNameProblem(name)
	default:
		e.key.Algorithm, e.hmac = f.Algorithm, f.HMAC
	}
	return e, true
}

// observeEntry reads name (readEntry) and wipes its material: for the
// entries knownEntry does not know.
func (s *sourceSet) observeEntry(ctx context.Context, name string) (*sourceEntry, error) {
	e, err := s.readEntry(ctx, name)
	if err == nil {
		e.wipe()
	}
	return e, err
}

// report gathers what a pass over the source found. Safe for concurrent use.
type report struct {
	mu           sync.Mutex
	notKeys      []problem // entries that are not keys: left out (listKeyStore)
	unparsable   []problem
	rejected     []problem
	conflicts    []string // different material at the target
	identical    []string // already present, same material
	overwrite    []string // different material, to be overwritten
	hmac         int
	aes, chacha  int
	v023, v024   int
	importCount  int
	requestCount atomic.Int64 // import requests sent (this attempt)
	commandCount atomic.Int64 // KEY:IMPORT commands those requests carried
	readbacks    atomic.Int64 // read-only requests that found out what a failed import request did
	inflight     atomic.Int64 // keys found already imported without a checkpoint
}

func (rep *report) add(e *sourceEntry) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	switch e.class {
	case entryUnparsable:
		rep.unparsable = append(rep.unparsable, problem{Name: e.name, Reason: e.reason})
	case entryRejectedName:
		rep.rejected = append(rep.rejected, problem{Name: e.name, Reason: e.reason})
	default:
		if e.hmac {
			rep.hmac++
		}
		if e.key.Algorithm == kescrypto.ChaCha20 {
			rep.chacha++
		} else {
			rep.aes++
		}
		if e.format == formatV023 {
			rep.v023++
		} else {
			rep.v024++
		}
	}
}

// refuse reports a key the Key Manager refused to import, by name.
func (rep *report) refuse(name, reason string) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	rep.rejected = append(rep.rejected, problem{Name: name, Reason: reason})
}

func (rep *report) sort() {
	byName := func(a, b problem) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(rep.notKeys, byName)
	slices.SortFunc(rep.unparsable, byName)
	slices.SortFunc(rep.rejected, byName)
	sort.Strings(rep.conflicts)
	sort.Strings(rep.identical)
	sort.Strings(rep.overwrite)
}

// blocking lists the entries that fail the step unless skip_unparsable:
// keys the Key Manager refuses. Unparsable entries do not block: KES cannot
// serve them either, so nothing is sealed under them; they are named.
func (rep *report) blocking() []problem {
	return append([]problem(nil), rep.rejected...)
}

func (rep *report) hmacRisk() string {
	if rep.hmac == 0 {
		return ""
	}
	return fmt.Sprintf("%d keys have an HMAC key that the Key Manager import cannot carry; KES's /v1/key/hmac for them will not exist at the Key Manager", rep.hmac)
}

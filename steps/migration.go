package steps

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
)

func init() {
	engine.Register(engine.BlockType{
		Name: "migration",
		Kind: engine.KindStep,
		New:  func() engine.Block { return &migrationStep{} },
		Outputs: map[string]cty.Type{
			"keys":         cty.Number, // source keys now in the enclave (imported + skipped + overwritten)
			"imported":     cty.Number,
			"skipped":      cty.Number, // already present with identical material (round trip)
			"overwritten":  cty.Number,
			"not_migrated": cty.Number, // entries reported by name and left behind
		},
		Doc: "imports every key of the KES key store into a Key Manager enclave, checkpointed per key",
	})
}

var (
	_ engine.Step       = (*migrationStep)(nil)
	_ engine.Planner    = (*migrationStep)(nil)
	_ engine.Rollbacker = (*migrationStep)(nil)
	_ engine.Validator  = (*migrationStep)(nil)
)

// estimatedImportsPerSecond sizes the duration estimate of a change request.
const estimatedImportsPerSecond = 2000

const (
	conflictSkipIdentical = "skip_identical"
	conflictFail          = "fail"
	conflictOverwrite     = "overwrite"

	defaultMigrationParallelism = 128
	maxMigrationParallelism     = 256

	// Checkpoint items: "key/NAME" per key, "preflight" once the keys
	// already present at the target have been judged, "rollback/NAME" per
	// key deleted by a rollback.
	itemPreflight = "preflight"
	itemKeyPrefix = "key/"
	itemRBPrefix  = "rollback/"

	actionImported     = "imported"
	actionOverwriting  = "overwriting" // written before the target's key is deleted
	actionOverwritten  = "overwritten"
	actionDeleted      = "deleted"
	actionNotOurs      = "kept" // rollback left it: not proven to be this run's
	roundTripAADString = "runbook migration round trip"
)

// roundTripAAD binds round-trip ciphertexts to their purpose.
var roundTripAAD = []byte(roundTripAADString)

type migrationConfig struct {
	From cty.Value `hcl:"from"`
	To   cty.Value `hcl:"to"`
	// Pattern is a glob over key names (path.Match), "*" by default.
	Pattern string `hcl:"pattern,optional"`
	// OnConflict says what to do with a key already present at the target:
	// "skip_identical" (default), "fail" or "overwrite".
	OnConflict string `hcl:"on_conflict,optional"`
	// Parallelism bounds the keys in flight: read, or imported and not yet
	// durably checkpointed (default 128, at most 256).
	Parallelism int `hcl:"parallelism,optional"`
	// SkipUnparsable lets the step succeed although some entries could not
	// be carried (unparsable, or a name the Key Manager rejects). They are
	// reported by name either way.
	SkipUnparsable bool `hcl:"skip_unparsable,optional"`
}

// migrationStep carries every key of the KES key store (read directly
// through the KES server config, as kes migrate does) into a Key Manager
// enclave.
//
// Apply is idempotent and resumable: every key is checkpointed once it is in
// the enclave (never its material); a resume skips checkpointed keys without
// a request and proves keys that were in flight at a crash by a round trip
// (a ciphertext sealed locally under the source material must decrypt at
// the Key Manager), so it re-imports at most the keys in flight and never
// accepts different material.
type migrationStep struct {
	cfg migrationConfig
}

func (m *migrationStep) Config() any { return &m.cfg }

func (m *migrationStep) pattern() string {
	if m.cfg.Pattern == "" {
		return "*"
	}
	return m.cfg.Pattern
}

func (m *migrationStep) onConflict() string {
	if m.cfg.OnConflict == "" {
		return conflictSkipIdentical
	}
	return m.cfg.OnConflict
}

func (m *migrationStep) parallelism() int {
	if m.cfg.Parallelism <= 0 {
		return defaultMigrationParallelism
	}
	return min(m.cfg.Parallelism, maxMigrationParallelism)
}

func (m *migrationStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("from") {
		if _, _, err := engine.ConnectionFrom[*kesConnection](m.cfg.From, "kes"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid migration source", Detail: "from must refer to a kes block, such as kes.legacy: " + err.Error() + ".", Subject: d.AttrRange("from")})
		}
	}
	if !d.Unknown("to") && !m.cfg.To.IsNull() && m.cfg.To.IsKnown() {
		if _, err := enclaveFrom(m.cfg.To); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid migration target", Detail: "to must refer to an enclave block, such as enclave.primary: " + err.Error() + ".", Subject: d.AttrRange("to")})
		}
	}
	if !d.Unknown("pattern") {
		if _, err := path.Match(m.pattern(), ""); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid key name pattern", Detail: fmt.Sprintf("pattern %q is not a valid glob (%v). Use *, ? and [...] as in shell globs, for example \"*\" for every key or \"minio-*\". (kes migrate would silently match nothing with it.)", m.cfg.Pattern, err), Subject: d.AttrRange("pattern")})
		}
	}
	if !d.Unknown("on_conflict") {
		switch m.onConflict() {
		case conflictSkipIdentical, conflictFail, conflictOverwrite:
		default:
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid on_conflict", Detail: fmt.Sprintf("on_conflict is %q; it must be \"skip_identical\" (the default: a key already present with the same material is done, different material fails), \"fail\" (any key already present fails) or \"overwrite\".", m.cfg.OnConflict), Subject: d.AttrRange("on_conflict")})
		}
	}
	if !d.Unknown("parallelism") && (m.cfg.Parallelism < 0 || m.cfg.Parallelism > maxMigrationParallelism) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid parallelism", Detail: fmt.Sprintf("parallelism is %d; it must be between 1 and %d (default %d).", m.cfg.Parallelism, maxMigrationParallelism, defaultMigrationParallelism), Subject: d.AttrRange("parallelism")})
	}
	return diags
}

// ---------------------------------------------------------------------------
// The source: listing, reading and classifying entries.

// sourceSet is the listing of the key store, filtered by the pattern.
type sourceSet struct {
	ks      kesserver.KeyStore
	conf    *kesconf.File
	where   string   // e.g. "fs key store /var/kes/keys"
	total   int      // entries in the store
	names   []string // sorted names that match the pattern
	digest  string   // SHA-256 of the sorted matching names, one per line
	fsStore bool
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
	all, err := listKeyStore(ctx, ks, conf)
	if err != nil {
		ks.Close()
		return nil, err
	}
	return newSourceSet(ks, conf, all, pattern)
}

func newSourceSet(ks kesserver.KeyStore, conf *kesconf.File, all []string, pattern string) (*sourceSet, error) {
	s := &sourceSet{ks: ks, conf: conf, total: len(all)}
	for _, n := range all {
		ok, err := path.Match(pattern, n)
		if err != nil {
			return nil, fmt.Errorf("match key names against pattern %q: %w", pattern, err)
		}
		if ok {
			s.names = append(s.names, n)
		}
	}
	s.digest = namesDigest(s.names)
	s.where = "key store"
	if conf != nil {
		if fs, ok := conf.KeyStore.(*kesconf.FSKeyStore); ok {
			s.fsStore = true
			s.where = "fs key store " + fs.Path
		} else {
			s.where = fmt.Sprintf("key store (%T)", conf.KeyStore)
			s.where = strings.Replace(strings.Replace(s.where, "*kesconf.", "", 1), "KeyStore)", ")", 1)
		}
	}
	return s, nil
}

// entryClass says what kind of problem an entry has, if any.
type entryClass int

const (
	entryOK entryClass = iota
	// entryUnreadable: the key store refuses to read this name at all (an
	// fs file whose name holds '.', which fs List returns and fs Get
	// rejects): KES never served it, so no object can be sealed under it.
	// Reported by name; does not fail the step.
	entryUnreadable
	// entryUnparsable: read, but not a KES key. Fails the step unless
	// skip_unparsable.
	entryUnparsable
	// entryRejectedName: a key whose name the Key Manager would reject.
	// Fails the step unless skip_unparsable.
	entryRejectedName
)

// sourceEntry is one read entry. Material is only held while the key is in
// flight; wipe() drops it.
type sourceEntry struct {
	name   string
	key    kescrypto.Key
	format string // "v0.24" (protobuf) or "v0.23" (JSON)
	class  entryClass
	reason string // why it is not OK; never holds material
}

func (e *sourceEntry) wipe() {
	clear(e.key.Material)
	clear(e.key.HMAC)
	e.key.Material, e.key.HMAC = nil, nil
}

// kmNameProblem says why the Key Manager would reject a key name, or "".
// The rules are those the emulator enforces (a name is 1–1024 bytes of
// UTF-8 with no '/', '\' or control character); the vendor does not publish
// minkms's rules, and the kms-go client checks none. Every name KES itself
// accepts ([0-9A-Za-z_-], at most 80) passes.
func kmNameProblem(name string) string {
	switch {
	case name == "":
		return "the name is empty"
	case len(name) > 1024:
		return "the name is longer than 1024 bytes"
	case !utf8.ValidString(name):
		return "the name is not valid UTF-8"
	case strings.ContainsAny(name, "/\\"):
		return "the name contains '/' or '\\'"
	}
	for _, c := range name {
		if unicode.IsControl(c) {
			return "the name contains a control character"
		}
	}
	return ""
}

// readEntry reads and classifies one entry. A non-nil error is a failure to
// read the store (not a property of the entry) and stops the step.
func (s *sourceSet) readEntry(ctx context.Context, name string) (*sourceEntry, error) {
	e := &sourceEntry{name: name}
	if s.fsStore && strings.ContainsAny(name, "./\\") {
		e.class = entryUnreadable
		e.reason = "KES's fs key store lists this file but refuses to read a name containing '.', so KES never served it as a key"
		return e, nil
	}
	raw, err := s.ks.Get(ctx, name)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read key %q from the %s: %w (was it deleted since the listing? halt key changes at KES first)", name, s.where, err)
	}
	if json.Valid(raw) {
		e.format = "v0.23"
	} else {
		e.format = "v0.24"
	}
	k, err := kescrypto.ParseKey(raw)
	clear(raw)
	if err != nil {
		e.class = entryUnparsable
		e.reason = strings.TrimPrefix(err.Error(), "kescrypto: ")
		return e, nil
	}
	e.key = k
	if p := kmNameProblem(name); p != "" {
		e.wipe()
		e.class = entryRejectedName
		e.reason = "the Key Manager rejects this name: " + p
	}
	return e, nil
}

// problem is an entry reported by name.
type problem struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// report gathers what a pass over the source found. Safe for concurrent use.
type report struct {
	mu           sync.Mutex
	unreadable   []problem
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
	inflight     atomic.Int64 // keys found already imported without a checkpoint
}

func (rep *report) add(e *sourceEntry) {
	rep.mu.Lock()
	defer rep.mu.Unlock()
	switch e.class {
	case entryUnreadable:
		rep.unreadable = append(rep.unreadable, problem{e.name, e.reason})
	case entryUnparsable:
		rep.unparsable = append(rep.unparsable, problem{e.name, e.reason})
	case entryRejectedName:
		rep.rejected = append(rep.rejected, problem{e.name, e.reason})
	default:
		if e.key.HMAC != nil {
			rep.hmac++
		}
		if e.key.Algorithm == kescrypto.ChaCha20 {
			rep.chacha++
		} else {
			rep.aes++
		}
		if e.format == "v0.23" {
			rep.v023++
		} else {
			rep.v024++
		}
	}
}

func (rep *report) sort() {
	byName := func(a, b problem) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(rep.unreadable, byName)
	slices.SortFunc(rep.unparsable, byName)
	slices.SortFunc(rep.rejected, byName)
	sort.Strings(rep.conflicts)
	sort.Strings(rep.identical)
	sort.Strings(rep.overwrite)
}

// blocking lists the entries that fail the step unless skip_unparsable.
func (rep *report) blocking() []problem {
	return append(append([]problem(nil), rep.unparsable...), rep.rejected...)
}

func (rep *report) hmacRisk() string {
	if rep.hmac == 0 {
		return ""
	}
	return fmt.Sprintf("%d keys have an HMAC key that the Key Manager import cannot carry; KES's /v1/key/hmac for them will not exist at the Key Manager", rep.hmac)
}

func describeProblems(ps []problem) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%s (%s)", p.Name, p.Reason)
	}
	return out
}

// ---------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------
// Plan.

// migrationState is what the plan's fingerprint binds.
type migrationState struct {
	SourceKeys   int       `json:"source_keys"`
	Matching     int       `json:"matching"`
	NamesSHA256  string    `json:"names_sha256"`
	Enclave      string    `json:"enclave"`
	EnclaveFound bool      `json:"enclave_exists"`
	Import       int       `json:"import"`
	Identical    []string  `json:"identical,omitempty"`
	Conflicts    []string  `json:"conflicts,omitempty"`
	Unparsable   []problem `json:"unparsable,omitempty"`
	Rejected     []problem `json:"rejected_names,omitempty"`
	Unreadable   []problem `json:"unreadable,omitempty"`
	HMAC         int       `json:"hmac_keys_not_carried"`
}

func (m *migrationStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	from, _, err := engine.ConnectionFrom[*kesConnection](m.cfg.From, "kes")
	if err != nil {
		return nil, err
	}
	to, err := enclaveFrom(m.cfg.To)
	if err != nil {
		return nil, err
	}
	src, err := openSource(ctx, r, from, m.pattern())
	if err != nil {
		return nil, err
	}
	defer src.ks.Close()
	r.RecordInput("kes key set", src.digest)

	c, err := to.KM.Client(r)
	if err != nil {
		return nil, err
	}
	present, exists, err := listTarget(ctx, c, to.Name)
	if err != nil {
		return nil, fmt.Errorf("list enclave %s: %w", to.Name, err)
	}

	rep := &report{}
	var toImport []string
	var mu sync.Mutex
	err = forEach(ctx, m.parallelism(), len(src.names), func(ctx context.Context, i int) error {
		e, err := src.readEntry(ctx, src.names[i])
		if err != nil {
			return err
		}
		defer e.wipe()
		rep.add(e)
		if e.class != entryOK {
			return nil
		}
		if !present[e.name] {
			mu.Lock()
			toImport = append(toImport, e.name)
			mu.Unlock()
			return nil
		}
		same, err := sameMaterial(ctx, c, to.Name, e.name, e.key)
		if err != nil {
			return permanentHint(err, to.Name)
		}
		rep.mu.Lock()
		defer rep.mu.Unlock()
		switch {
		case same:
			rep.identical = append(rep.identical, e.name)
		case m.onConflict() == conflictOverwrite:
			rep.overwrite = append(rep.overwrite, e.name)
		default:
			rep.conflicts = append(rep.conflicts, e.name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep.sort()
	sort.Strings(toImport)

	p := &engine.StepPlan{}
	p.Observed = append(p.Observed,
		fmt.Sprintf("%s: %d entries, %d match pattern %q (names SHA-256 %s), listed completely (not through KES's paged listing, which stops after 1025)", src.where, src.total, len(src.names), m.pattern(), src.digest[:16]),
		fmt.Sprintf("formats: %d KES v0.24 (protobuf), %d KES v0.22/v0.23 (JSON); algorithms: %d AES256, %d ChaCha20", rep.v024, rep.v023, rep.aes, rep.chacha))
	if exists {
		p.Observed = append(p.Observed, fmt.Sprintf("enclave %s at %s: exists, %d keys", to.Name, to.Addr, len(present)))
	} else {
		p.Observed = append(p.Observed, fmt.Sprintf("enclave %s at %s: does not exist yet (the enclave step creates it)", to.Name, to.Addr))
	}
	p.Actions = append(p.Actions, fmt.Sprintf("import %d keys into enclave %s (up to %d at a time, each checkpointed; key material never leaves memory except into the Key Manager)", len(toImport), to.Name, max(1, min(m.parallelism(), len(toImport)))))
	if n := len(rep.identical); n > 0 {
		if m.onConflict() == conflictFail {
			p.Actions = append(p.Actions, fmt.Sprintf("FAIL before importing anything: %d keys are already present (on_conflict = \"fail\"), identical material: %s", n, strings.Join(rep.identical, ", ")))
		} else {
			p.Actions = append(p.Actions, fmt.Sprintf("skip %d keys already present with identical material (proven by a round trip)", n))
		}
	}
	if n := len(rep.overwrite); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("overwrite %d keys whose material at the target differs: %s", n, strings.Join(rep.overwrite, ", ")))
		p.Risks = append(p.Risks, fmt.Sprintf("on_conflict = \"overwrite\" deletes %d keys at the target and imports the source material; their current material cannot be exported and is lost, with anything already sealed under it: %s", n, strings.Join(rep.overwrite, ", ")))
	}
	if n := len(rep.conflicts); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("FAIL before importing anything: %d keys are present at the target with different material: %s", n, strings.Join(rep.conflicts, ", ")))
		p.Risks = append(p.Risks, fmt.Sprintf("%d keys conflict (same name, different material at the Key Manager): %s", n, strings.Join(rep.conflicts, ", ")))
	}
	if bl := rep.blocking(); len(bl) > 0 {
		verb := "FAIL at the end (set skip_unparsable = true to leave them behind)"
		if m.cfg.SkipUnparsable {
			verb = "leave behind (skip_unparsable = true)"
		}
		p.Actions = append(p.Actions, fmt.Sprintf("%s %d entries that cannot be carried", verb, len(bl)))
	}
	if len(rep.unparsable) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%d entries are not KES keys and cannot be parsed: %s", len(rep.unparsable), strings.Join(describeProblems(rep.unparsable), "; ")))
	}
	if len(rep.rejected) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%d names would be rejected by the Key Manager: %s", len(rep.rejected), strings.Join(describeProblems(rep.rejected), "; ")))
	}
	if len(rep.unreadable) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%d entries are not migrated because KES cannot read them: %s", len(rep.unreadable), strings.Join(describeProblems(rep.unreadable), "; ")))
	}
	if s := rep.hmacRisk(); s != "" {
		p.Risks = append(p.Risks, s)
	}
	p.Items = append(toImport, rep.overwrite...)
	sort.Strings(p.Items)
	p.ItemsLabel = "keys to import"
	// A conservative rate for a Key Manager across a network (BENCHMARKS.md
	// measures several times this on loopback).
	p.EstimateSeconds = float64(len(p.Items)) / estimatedImportsPerSecond
	p.Rollback = "delete the keys this run imported, never keys that were already there; refused once a cutover has been applied; keys it overwrote cannot be restored"
	p.State = migrationState{
		SourceKeys: src.total, Matching: len(src.names), NamesSHA256: src.digest,
		Enclave: to.Name, EnclaveFound: exists, Import: len(toImport),
		Identical: rep.identical, Conflicts: rep.conflicts,
		Unparsable: rep.unparsable, Rejected: rep.rejected, Unreadable: rep.unreadable, HMAC: rep.hmac,
	}
	return p, nil
}

// ---------------------------------------------------------------------------
// Apply.

// keyCheckpoint is the data of a "key/NAME" checkpoint. It holds no material.
type keyCheckpoint struct {
	Action string `json:"action"`
}

// preflightCheckpoint records, once, which source keys were already in the
// enclave before this run imported anything: identical ones are done and
// not this run's (rollback keeps them); different ones are to be
// overwritten (on_conflict = "overwrite" only).
type preflightCheckpoint struct {
	NamesSHA256 string   `json:"names_sha256"`
	Identical   []string `json:"identical"`
	Overwrite   []string `json:"overwrite"`
}

// runHooks is what a migration needs from the engine: a seam so that the
// core can be tested without a journal.
type runHooks struct {
	checkpoint  func(item string, data any) error
	checkpoints map[string]json.RawMessage
	progress    func(done, total int64)
	logf        func(format string, args ...any)
	warnf       func(format string, args ...any)
}

func hooksOf(r *engine.Run) runHooks {
	return runHooks{checkpoint: r.Checkpoint, checkpoints: r.Checkpoints(), progress: r.Progress, logf: r.Logf, warnf: r.Warnf}
}

// migrationResult is what an apply did, over every attempt.
type migrationResult struct {
	Imported, Skipped, Overwritten, NotMigrated int
	Requests                                    int64 // import requests of this attempt
	InFlight                                    int64 // keys found imported without a checkpoint (this attempt)
	Earlier                                     int   // keys done by earlier attempts (journal)
}

func (m *migrationStep) Apply(ctx context.Context, r *engine.Run) error {
	from, _, err := engine.ConnectionFrom[*kesConnection](m.cfg.From, "kes")
	if err != nil {
		return err
	}
	to, err := enclaveFrom(m.cfg.To)
	if err != nil {
		return err
	}
	src, err := openSource(ctx, r, from, m.pattern())
	if err != nil {
		return err
	}
	defer src.ks.Close()
	r.RecordInput("kes key set", src.digest)
	c, err := to.KM.Client(r)
	if err != nil {
		return err
	}
	res, err := m.migrate(ctx, hooksOf(r), src, c, to.Name)
	if res != nil {
		r.SetOutput("keys", cty.NumberIntVal(int64(res.Imported+res.Skipped+res.Overwritten)))
		r.SetOutput("imported", cty.NumberIntVal(int64(res.Imported)))
		r.SetOutput("skipped", cty.NumberIntVal(int64(res.Skipped)))
		r.SetOutput("overwritten", cty.NumberIntVal(int64(res.Overwritten)))
		r.SetOutput("not_migrated", cty.NumberIntVal(int64(res.NotMigrated)))
	}
	return err
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
	rep := &report{}
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
	res.NotMigrated = len(rep.unreadable) + len(rep.unparsable) + len(rep.rejected)
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
	h.logf("enclave %s holds %d of the %d source keys: %d imported, %d already present (identical), %d overwritten, %d not migrated",
		enclave, res.Imported+res.Skipped+res.Overwritten, len(src.names), res.Imported, res.Skipped, res.Overwritten, res.NotMigrated)
	for _, p := range rep.unreadable {
		h.warnf("not migrated: %s: %s", p.Name, p.Reason)
	}
	for _, p := range rep.unparsable {
		h.warnf("not migrated: %s: cannot be parsed: %s", p.Name, p.Reason)
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
		same, err := sameMaterial(ctx, c, enclave, e.name, e.key)
		if err != nil {
			return permanentHint(err, enclave)
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case same:
			pre.Identical = append(pre.Identical, e.name)
		case m.onConflict() == conflictOverwrite:
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

// ---------------------------------------------------------------------------
// Rollback.

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
		return engine.Refusef("%s is %s: the object store may already seal data under the migrated keys, so deleting them could lose data; roll back the cutover first", addr, state)
	}
	to, err := enclaveFrom(m.cfg.To)
	if err != nil {
		return err
	}
	c, err := to.KM.Client(r)
	if err != nil {
		return err
	}
	cps := r.Checkpoints()
	var pre preflightCheckpoint
	if raw, ok := cps[itemPreflight]; ok {
		if err := json.Unmarshal(raw, &pre); err != nil {
			return fmt.Errorf("read the migration's preflight checkpoint: %w", err)
		}
	} else {
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
	var del []string
	var overwritten []string
	for item, raw := range cps {
		name, ok := strings.CutPrefix(item, itemKeyPrefix)
		if !ok {
			continue
		}
		switch actionOf(raw) {
		case actionImported:
			del = append(del, name)
		case actionOverwritten, actionOverwriting:
			overwritten = append(overwritten, name)
		}
	}
	// Keys in flight at an interruption: imported without a checkpoint.
	from, _, ferr := engine.ConnectionFrom[*kesConnection](m.cfg.From, "kes")
	if ferr == nil {
		src, err := openSource(ctx, r, from, m.pattern())
		if err != nil {
			r.Warnf("cannot read the key store to find keys that were in flight at an interruption (%v): only the checkpointed keys are deleted", err)
		} else {
			defer src.ks.Close()
			present, _, err := listTarget(ctx, c, to.Name)
			if err != nil {
				return fmt.Errorf("list enclave %s: %w", to.Name, err)
			}
			checked := setOf(del)
			for _, n := range overwritten {
				checked[n] = true
			}
			var maybe []string
			for _, n := range src.names {
				if present[n] && !kept[n] && !checked[n] {
					maybe = append(maybe, n)
				}
			}
			var mu sync.Mutex
			err = forEach(ctx, m.parallelism(), len(maybe), func(ctx context.Context, i int) error {
				e, err := src.readEntry(ctx, maybe[i])
				if err != nil || e.class != entryOK {
					return err
				}
				defer e.wipe()
				same, err := sameMaterial(ctx, c, to.Name, e.name, e.key)
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				if same {
					del = append(del, e.name)
				} else {
					r.Warnf("kept key %s in enclave %s: it was not there before this run, but its material differs from the source's, so this run did not import it", e.name, to.Name)
				}
				return nil
			})
			if err != nil {
				return permanentHint(err, to.Name)
			}
		}
	}
	sort.Strings(del)
	sort.Strings(overwritten)
	var todo []string
	for _, n := range del {
		if !r.HasCheckpoint(itemRBPrefix + n) {
			todo = append(todo, n)
		}
	}
	r.Logf("deleting %d keys this run imported into enclave %s (%d deleted by an earlier rollback attempt); %d keys that were there before are kept", len(todo), to.Name, len(del)-len(todo), len(kept))
	var done atomic.Int64
	total := int64(len(todo))
	err = forEach(ctx, m.parallelism(), len(todo), func(ctx context.Context, i int) error {
		name := todo[i]
		err := withRetry(ctx, func() error {
			return c.DeleteKey(ctx, to.Name, &kms.DeleteKeyRequest{Name: name, AllVersions: true})
		})
		if err != nil && !errors.Is(err, kms.ErrKeyNotFound) {
			return fmt.Errorf("delete key %q: %w", name, permanentHint(err, to.Name))
		}
		if err := r.Checkpoint(itemRBPrefix+name, keyCheckpoint{Action: actionDeleted}); err != nil {
			return err
		}
		r.Progress(done.Add(1), total)
		return nil
	})
	if err != nil {
		return err
	}
	if len(overwritten) > 0 {
		r.Warnf("kept %d keys this run overwrote, with the source's material: their earlier material was deleted at overwrite and cannot be restored (the Key Manager exports nothing): %s", len(overwritten), strings.Join(overwritten, ", "))
	}
	return nil
}

// cutoverApplied returns a cutover step of this run that may have taken
// effect (any state but pending or rolled back), read from the journal.
//
// TODO(engine): a hook such as r.StepState(addr) would avoid reading the
// journal file here; the engine rolls back in reverse dependency order, so
// with cutover depending on the migration (as in migrate.hcl) this check
// is a second line of defence.
func cutoverApplied(r *engine.Run) (addr, state string, err error) {
	records, _, err := engine.ReadJournal(r.JournalDir())
	if err != nil {
		return "", "", fmt.Errorf("read the journal to check for a cutover: %w", err)
	}
	js, err := engine.Replay(records)
	if err != nil {
		return "", "", fmt.Errorf("read the journal to check for a cutover: %w", err)
	}
	var addrs []string
	for a := range js.Steps {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		if !strings.HasPrefix(a, "cutover.") {
			continue
		}
		switch st := js.Steps[a].State; st {
		case engine.StatePending, engine.StateRolledBack:
		default:
			return a, st, nil
		}
	}
	return "", "", nil
}

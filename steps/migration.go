package steps

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/minio/kms-go/kms"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/parallel"
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
			"not_migrated": cty.Number, // keys reported by name and left behind (do not parse, or a name the Key Manager refuses)
		},
		Doc: "imports every key of the KES key store into a Key Manager enclave, checkpointed per key",
	})
}

// The migration's durable state: every checkpoint it records.
var (
	// migrationPreflight: which source keys were already in the enclave,
	// judged once before the first import.
	migrationPreflight = engine.NewItem[preflightCheckpoint]("preflight")
	// migratedKeys: per key name, what apply did (actionImported,
	// actionOverwriting, actionOverwritten).
	migratedKeys = engine.NewFamily[keyCheckpoint]("key/")
	// undoneKeys: per key name, what rollback did (actionDeleted).
	undoneKeys = engine.NewFamily[keyCheckpoint]("rollback/")
)

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

	// The step is bound by durable checkpoints: a worker waits for the
	// fsync that covers its keys before it takes more, so the wall time is
	// about keys / parallelism fsyncs (BENCHMARKS.md: 0.3 to 25 ms each,
	// idle to loaded disk). 512 keys in flight hold 16 KiB of key material
	// and leave at most 512 keys for a resume to prove (8 read-only
	// requests).
	defaultMigrationParallelism = 512
	maxMigrationParallelism     = 1024

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
	// durably checkpointed (default 512, at most 1024).
	Parallelism int `hcl:"parallelism,optional"`
	// SkipUnparsable lets the step succeed although some keys could not be
	// carried (a name the Key Manager rejects). They are reported by name
	// either way, as are entries that are not keys or do not parse, which
	// never fail the step (KES cannot serve them either).
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
	NotKeys      []problem `json:"not_keys,omitempty"`
	HMAC         int       `json:"hmac_keys_not_carried"`
}

// Plan observes the key store and the enclave read-only and says what
// Apply would import, skip, overwrite or leave behind.
func (m *migrationStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	obs, err := m.observe(ctx, r)
	if err != nil {
		return nil, err
	}
	var reused []string // to import, deleted from this enclave by an earlier rollback
	if obs.exists {
		gone, err := deletedEarlier(r)
		if err != nil {
			return nil, err
		}
		for _, n := range obs.toImport {
			if gone[n] {
				reused = append(reused, n)
			}
		}
	}
	p := &engine.StepPlan{}
	m.planObserved(p, obs)
	m.planImports(p, obs, reused)
	planLeftBehind(p, obs, m.cfg.SkipUnparsable, m.pattern())
	p.Items = append(obs.toImport, obs.rep.overwrite...)
	sort.Strings(p.Items)
	p.ItemsLabel = "keys to import"
	// A conservative rate for a Key Manager across a network (BENCHMARKS.md
	// measures several times this on loopback).
	p.EstimateSeconds = float64(len(p.Items)) / estimatedImportsPerSecond
	p.Rollback = "delete the keys this run imported, never keys that were already there; refused once a cutover has been applied; keys it overwrote cannot be restored"
	src, rep := obs.src, obs.rep
	p.State = migrationState{
		SourceKeys: src.total, Matching: len(src.names), NamesSHA256: src.digest,
		Enclave: obs.to.Name, EnclaveFound: obs.exists, Import: len(obs.toImport),
		Identical: rep.identical, Conflicts: rep.conflicts,
		Unparsable: rep.unparsable, Rejected: rep.rejected, NotKeys: rep.notKeys, HMAC: rep.hmac,
	}
	return p, nil
}

// migrationObservation is what the plan observed: the source's entries,
// read and classified, and the enclave's keys judged against them.
type migrationObservation struct {
	from     *kesConnection
	src      *sourceSet // closed: names and digest only
	to       enclaveRef
	present  map[string]bool
	exists   bool
	toImport []string // keys not at the target, sorted
	rep      *report
}

// observe reads every source entry (its format, whether it is a key) and
// judges the keys already at the target by round trip.
func (m *migrationStep) observe(ctx context.Context, r *engine.Run) (*migrationObservation, error) {
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
	obs := &migrationObservation{from: from, src: src, to: to, rep: &report{notKeys: src.notKeys}}
	obs.present, obs.exists, err = planListTarget(ctx, r, c, to.Name)
	if err != nil {
		return nil, fmt.Errorf("list enclave %s: %w", to.Name, err)
	}
	var there []string
	var mu sync.Mutex
	judge := func(e *sourceEntry) {
		obs.rep.add(e)
		if e.class != entryOK {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if obs.present[e.name] {
			there = append(there, e.name)
		} else {
			obs.toImport = append(obs.toImport, e.name)
		}
	}
	// The entries this process's listing read are judged from what it
	// found, in one pass: handing each to a worker cost more than judging
	// it (1,000 keys: 3-5 ms of the plan, 1 ms in one pass). Only the
	// others are read, in parallel.
	var unread []string
	for _, name := range src.names {
		if e, ok := src.knownEntry(name); ok {
			judge(e)
		} else {
			unread = append(unread, name)
		}
	}
	err = parallel.ForEach(ctx, m.parallelism(), len(unread), func(ctx context.Context, i int) error {
		e, err := src.observeEntry(ctx, unread[i])
		if err == nil {
			judge(e)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	// Keys already at the target: same material or not, proven by round
	// trip, several keys a request.
	sort.Strings(there)
	rep := obs.rep
	rep.identical, rep.overwrite, rep.conflicts, err = m.judgePresent(ctx, c, to.Name, src, there)
	if err != nil {
		return nil, err
	}
	rep.sort()
	sort.Strings(obs.toImport)
	return obs, nil
}

// planObserved describes the source and the enclave.
func (m *migrationStep) planObserved(p *engine.StepPlan, obs *migrationObservation) {
	src, rep, to := obs.src, obs.rep, obs.to
	p.Observed = append(p.Observed,
		fmt.Sprintf("%s: %d entries, %d match pattern %q (names SHA-256 %s), listed completely (not through KES's paged listing, which stops after 1025) and %s; %d of them are keys", src.where, src.total, len(src.names)+len(src.notKeys), m.pattern(), src.digest[:16], src.listing.Check, len(src.names)-len(rep.unparsable)),
		fmt.Sprintf("formats: %d KES v0.24 (protobuf), %d KES v0.22/v0.23 (JSON); algorithms: %d AES256, %d ChaCha20", rep.v024, rep.v023, rep.aes, rep.chacha))
	if obs.exists {
		p.Observed = append(p.Observed, fmt.Sprintf("enclave %s at %s: exists, %d keys", to.Name, to.Addr, len(obs.present)))
	} else {
		p.Observed = append(p.Observed, fmt.Sprintf("enclave %s at %s: does not exist yet (the enclave step creates it)", to.Name, to.Addr))
	}
}

// planImports says what is imported, skipped, overwritten, and what fails
// before anything is imported.
func (m *migrationStep) planImports(p *engine.StepPlan, obs *migrationObservation, reused []string) {
	rep, to := obs.rep, obs.to
	p.Actions = append(p.Actions, fmt.Sprintf("import %d keys into enclave %s (up to %d at a time, each checkpointed; key material never leaves memory except into the Key Manager)", len(obs.toImport), to.Name, max(1, min(m.parallelism(), len(obs.toImport)))))
	if n := len(reused); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("cannot import %d keys that an earlier rollback of this step deleted from enclave %s, if the Key Manager does not give a deleted name out again (the vendor's client: \"Once a key version has been removed it cannot be added again\"); they are then refused one by one, named, and the step fails: %s", n, to.Name, strings.Join(reused, ", ")))
		p.Risks = append(p.Risks, fmt.Sprintf("%d keys to import were deleted from enclave %s by an earlier rollback; a Key Manager that keeps deleted names refuses them: migrate into a new enclave instead: %s", n, to.Name, strings.Join(reused, ", ")))
	}
	if n := len(rep.identical); n > 0 {
		if m.onConflict() == conflictFail {
			p.Actions = append(p.Actions, fmt.Sprintf("FAIL before importing anything: %d keys are already present (on_conflict = \"fail\"), identical material: %s", n, strings.Join(rep.identical, ", ")))
		} else {
			p.Actions = append(p.Actions, fmt.Sprintf("skip %d keys already present with identical material (proven by a round trip)", n))
		}
	}
	if n := len(rep.overwrite); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("overwrite %d keys whose material at the target differs: %s", n, strings.Join(rep.overwrite, ", ")))
		p.Risks = append(p.Risks, fmt.Sprintf("on_conflict = \"overwrite\" deletes %d keys at the target and imports the source material; their current material cannot be exported and is lost, with anything already sealed under it; and a Key Manager that does not give a deleted name out again (the vendor's client: \"Once a key version has been removed it cannot be added again\") then refuses the import, leaving the name without a key in this enclave: %s", n, strings.Join(rep.overwrite, ", ")))
	}
	if n := len(rep.conflicts); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("FAIL before importing anything: %d keys are present at the target with different material: %s", n, strings.Join(rep.conflicts, ", ")))
		p.Risks = append(p.Risks, fmt.Sprintf("%d keys conflict (same name, different material at the Key Manager): %s", n, strings.Join(rep.conflicts, ", ")))
	}
}

// planLeftBehind names the entries that are not carried: not keys, not
// parsable, names the Key Manager refuses, HMAC keys, and keys outside the
// pattern.
func planLeftBehind(p *engine.StepPlan, obs *migrationObservation, skipUnparsable bool, pattern string) {
	rep := obs.rep
	if bl := rep.blocking(); len(bl) > 0 {
		verb := "FAIL at the end (set skip_unparsable = true to leave them behind)"
		if skipUnparsable {
			verb = "leave behind (skip_unparsable = true)"
		}
		p.Actions = append(p.Actions, fmt.Sprintf("%s %d entries that cannot be carried", verb, len(bl)))
	}
	if len(rep.notKeys) > 0 {
		p.Observed = append(p.Observed, fmt.Sprintf("%s (%d), left out by every step: %s", groupNotKeys, len(rep.notKeys), strings.Join(describeProblems(rep.notKeys), "; ")))
	}
	if line := foreignObserved(obs.from, obs.src.foreign); line != "" {
		p.Observed = append(p.Observed, line)
	}
	if len(rep.unparsable) > 0 {
		p.Observed = append(p.Observed, fmt.Sprintf("%s (%d), never migrated: %s", groupUnparsable, len(rep.unparsable), strings.Join(describeProblems(rep.unparsable), "; ")))
		p.Risks = append(p.Risks, fmt.Sprintf("%d entries look like keys but do not parse, so they are not migrated; KES cannot serve them either, so whatever was sealed under them does not read today: %s", len(rep.unparsable), strings.Join(describeProblems(rep.unparsable), "; ")))
	}
	if n := len(rep.notKeys) + len(rep.unparsable); n > 0 {
		p.Actions = append(p.Actions, fmt.Sprintf("leave out %d entries that are not keys and %d that do not parse (named above); they never fail the step", len(rep.notKeys), len(rep.unparsable)))
	}
	if len(rep.rejected) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%d names would be rejected by the Key Manager: %s", len(rep.rejected), strings.Join(describeProblems(rep.rejected), "; ")))
	}
	if s := rep.hmacRisk(); s != "" {
		p.Risks = append(p.Risks, s)
	}
	if left := obs.src.total - len(obs.src.names) - len(obs.src.notKeys); pattern != "*" && left > 0 {
		// The migration is the step that knows its pattern; verification
		// and the cutover see only the keys the object store names.
		p.Risks = append(p.Risks, fmt.Sprintf("pattern %q leaves %d of the key store's %d entries out: a key outside it may seal IAM users, groups and policies, server and bucket configuration (sealed with the default key in force when each was written, docs/domain.md: What MinIO seals with its default key) and SSE-S3 objects, and the object store's API names none of those keys, so no check can find them; after the cutover they would no longer read. Migrate with pattern = \"*\" unless you know every key outside the pattern is unused", pattern, left, obs.src.total))
	}
}

// judgePresent proves by round trip, several keys a request, whether the
// enclave's keys named like the source keys names hold the source's
// material, and sorts them by what the run does with them: identical (done,
// not this run's), overwrite (different material, on_conflict =
// "overwrite") or conflicts (different material: the step fails before
// anything is imported). Plan and the preflight of Apply judge by this one
// function, so the plan shows what apply does.
func (m *migrationStep) judgePresent(ctx context.Context, c *kms.Client, enclave string, src *sourceSet, names []string) (identical, overwrite, conflicts []string, err error) {
	same, differ, err := proveNames(ctx, c, enclave, src, names, m.parallelism())
	if err != nil {
		return nil, nil, nil, permanentHint(err, enclave)
	}
	if m.onConflict() == conflictOverwrite {
		return same, differ, nil, nil
	}
	return same, nil, differ, nil
}

// ---------------------------------------------------------------------------
// Apply.

// keyCheckpoint is the data of a migratedKeys or undoneKeys item. It holds
// no material.
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
// core can be tested without a journal. Its items are read and recorded
// through it (engine.Checkpoints, engine.CheckpointWriter).
type runHooks struct {
	engine.Checkpoints
	checkpointAll func([]engine.CheckpointItem) error // engine.Run.CheckpointAll
	progress      func(done, total int64)
	logf          func(format string, args ...any)
	warnf         func(format string, args ...any)
}

func hooksOf(r *engine.Run) runHooks {
	return runHooks{Checkpoints: r, checkpointAll: r.CheckpointAll, progress: r.Progress, logf: r.Logf, warnf: r.Warnf}
}

// CheckpointAll records items durably (engine.Run.CheckpointAll).
func (h runHooks) CheckpointAll(items []engine.CheckpointItem) error { return h.checkpointAll(items) }

// migrationResult is what an apply did, over every attempt.
type migrationResult struct {
	Imported, Skipped, Overwritten, NotMigrated int
	Requests                                    int64 // import requests of this attempt
	Commands                                    int64 // KEY:IMPORT commands they carried (a key sent twice counts twice)
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

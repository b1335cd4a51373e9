package steps

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"path"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/hcl/v2"
	kesserver "github.com/minio/kes"
	kes "github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"
	"github.com/minio/minio-go/v7"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/keystore"
)

func init() {
	engine.Register(engine.BlockType{
		Name: "verification",
		Kind: engine.KindStep,
		New:  func() engine.Block { return &verificationStep{} },
		Outputs: map[string]cty.Type{
			"verified":   cty.Number,
			"proof":      cty.String,
			"referenced": cty.Number,
		},
		Doc: "proves the enclave holds the KES key set: same names, same material, every key the object store uses",
	})
}

// The verification's durable state: every checkpoint it records.
var (
	// verifiedKeys: per key name, the proof the key got.
	verifiedKeys = engine.NewFamily[proofCheckpoint]("key/")
	// verificationSample: the seed of the sample of keys to prove, drawn
	// once so that a resumed verification continues the same sample.
	verificationSample = engine.NewItem[sampleSeed]("sample")
)

var (
	_ engine.Step       = (*verificationStep)(nil)
	_ engine.Planner    = (*verificationStep)(nil)
	_ engine.Rollbacker = (*verificationStep)(nil)
	_ engine.Validator  = (*verificationStep)(nil)
)

// The proofs a key's checkpoint names (verification_proof.go). Every key is
// proven by "local-seal": ciphertexts sealed here under the key store's
// material, in each format MinIO may forward, decrypt at the Key Manager;
// the checkpoint lists the formats and whether a data key the KES server
// generated (on a sample) decrypted too. "kes-generate" is what attempts
// before that design recorded (a data key of the KES server per key);
// "mixed" is the result when a resumed run finds both.
const (
	proofKESGenerate = "kes-generate"
	proofLocalSeal   = "local-seal"
	proofMixed       = "mixed"
)

const (
	// verifyDefaultParallelism bounds the round trips in flight.
	verifyDefaultParallelism = 16
	// verifyDefaultObjectsPerBucket bounds the object versions listed per
	// bucket to find the keys SSE-KMS objects use.
	verifyDefaultObjectsPerBucket = 1000
	// verifyShown is how many names a message lists before "and N more".
	verifyShown = 20
	// verifyRefsShown is how many places a message names per referenced key.
	verifyRefsShown = 3
)

type verificationConfig struct {
	Source           cty.Value `hcl:"source"`
	Target           cty.Value `hcl:"target"`
	Objects          cty.Value `hcl:"objects,optional"`
	Pattern          string    `hcl:"pattern,optional"`
	Sample           *int      `hcl:"sample,optional"`
	Parallelism      *int      `hcl:"parallelism,optional"`
	ObjectsPerBucket *int      `hcl:"objects_per_bucket,optional"`
}

// verificationStep proves that the enclave holds exactly the source key set:
// the same names, the same material (by a cryptographic round trip), and every
// key the object store refers to. It changes nothing, so it has nothing to
// undo; on resume it re-checks the names and continues the round trips from
// its per-key checkpoints.
type verificationStep struct {
	cfg verificationConfig
}

func (v *verificationStep) Config() any { return &v.cfg }

func (v *verificationStep) pattern() string {
	if v.cfg.Pattern == "" {
		return "*"
	}
	return v.cfg.Pattern
}

func (v *verificationStep) parallelism() int {
	if v.cfg.Parallelism == nil || *v.cfg.Parallelism <= 0 {
		return verifyDefaultParallelism
	}
	return *v.cfg.Parallelism
}

func (v *verificationStep) objectsPerBucket() int {
	if v.cfg.ObjectsPerBucket == nil {
		return verifyDefaultObjectsPerBucket
	}
	return *v.cfg.ObjectsPerBucket
}

func (v *verificationStep) hasObjects() bool { return !v.cfg.Objects.IsNull() }

func (v *verificationStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("source") {
		if _, _, err := engine.ConnectionFrom[*kesConnection](v.cfg.Source, "kes"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid source", Detail: "source is the KES connection the keys came from, for example kes.legacy: " + err.Error() + ".", Subject: d.AttrRange("source")})
		}
	}
	if !d.Unknown("target") {
		if _, err := enclaveFrom(v.cfg.Target); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid target", Detail: "target is the enclave the keys were migrated to, for example enclave.primary: " + err.Error() + ".", Subject: d.AttrRange("target")})
		}
	}
	if v.hasObjects() && !d.Unknown("objects") {
		if _, _, err := engine.ConnectionFrom[*aistorConnection](v.cfg.Objects, "aistor"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid objects", Detail: "objects is the object store whose keys must all be in the enclave, for example aistor.prod: " + err.Error() + ".", Subject: d.AttrRange("objects")})
		}
	}
	if !d.Unknown("pattern") {
		if _, err := path.Match(v.pattern(), ""); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid pattern", Detail: fmt.Sprintf("pattern %q is not a valid glob (%v). Use the migration's pattern, for example \"*\" or \"minio-*\".", v.cfg.Pattern, err), Subject: d.AttrRange("pattern")})
		}
	}
	if v.cfg.Sample != nil && *v.cfg.Sample < 1 && !d.Unknown("sample") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid sample", Detail: "sample is how many keys to round-trip when the store is too large to prove every key; it must be at least 1. Leave it out to prove every key.", Subject: d.AttrRange("sample")})
	}
	if v.cfg.Parallelism != nil && *v.cfg.Parallelism < 1 && !d.Unknown("parallelism") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid parallelism", Detail: "parallelism is how many round trips run at once; it must be at least 1.", Subject: d.AttrRange("parallelism")})
	}
	if v.cfg.ObjectsPerBucket != nil && *v.cfg.ObjectsPerBucket < 0 && !d.Unknown("objects_per_bucket") {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid objects_per_bucket", Detail: "objects_per_bucket bounds how many object versions are listed per bucket to find the keys SSE-KMS objects use; it cannot be negative (0 lists none).", Subject: d.AttrRange("objects_per_bucket")})
	}
	return diags
}

// sourceNames opens the key store the KES config names and lists it
// completely (listKeyStore); names are the keys that match the pattern,
// before their values are read.
func (v *verificationStep) sourceNames(ctx context.Context, r *engine.Run, src *kesConnection) (ks kesserver.KeyStore, l *storeListing, names []string, held *keystore.Verdicts, err error) {
	ks, conf, err := src.OpenKeyStore(ctx, r)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	l, err = listKeyStore(ctx, r, src, ks, conf)
	if err != nil {
		ks.Close()
		return nil, nil, nil, nil, err
	}
	return ks, l, verifyMatch(l.Keys, v.pattern()), judged(r, src, conf), nil
}

// verifyMatch keeps the names that match a glob (filepath.Match, as the
// migration and kes migrate use).
func verifyMatch(names []string, pattern string) []string {
	if pattern == "*" {
		return names
	}
	var out []string
	for _, n := range names {
		if ok, _ := path.Match(pattern, n); ok {
			out = append(out, n)
		}
	}
	return out
}

func (v *verificationStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	src, srcAddr, enc, err := v.ends()
	if err != nil {
		return nil, err
	}
	ks, l, names, _, err := v.sourceNames(ctx, r, src)
	if err != nil {
		return nil, err
	}
	ks.Close()
	p := &engine.StepPlan{Rollback: "nothing to undo: verification changes nothing"}
	p.Observed = append(p.Observed, fmt.Sprintf("the key store of %s (%s) holds %d key(s) matching %q", srcAddr, src.ConfigFile(r), len(names), v.pattern()))
	if nk := verifyMatchProblems(l.NotKeys, v.pattern()); len(nk) > 0 {
		p.Observed = append(p.Observed, fmt.Sprintf("%s (%d), never called missing: %s", groupNotKeys, len(nk), strings.Join(describeProblems(nk), "; ")))
	}
	if line := foreignObserved(src, verifyMatch(l.Foreign, v.pattern())); line != "" {
		p.Observed = append(p.Observed, line)
	}
	p.Actions = append(p.Actions, fmt.Sprintf("prove that enclave %s holds exactly the keys of the KES key store matching %q: missing and extra keys are listed by name", enc.Name, v.pattern()))
	what := fmt.Sprintf("every key (%d)", len(names))
	if v.cfg.Sample != nil && *v.cfg.Sample < len(names) {
		what = fmt.Sprintf("a random sample of %d of the %d keys", *v.cfg.Sample, len(names))
	}
	p.Actions = append(p.Actions, fmt.Sprintf("prove the key material of %s by a round trip: a random plaintext sealed here under the key's material from the store, in every ciphertext format MinIO may forward for it (%s for every key; %s too for keys stored in the KES v0.22/v0.23 JSON format; MinIO turns legacy JSON ciphertexts into %s before it asks), must decrypt at the Key Manager to the same plaintext, %d ciphertexts per request (proof %q); a format the Key Manager refuses fails verification, naming it; entries that do not parse are named, never called missing", what, formatRaw, formatMsgpack, formatRaw, verifyDecryptBatch, proofLocalSeal))
	if src.HasServer() {
		srv, line, err := src.checkGenerate(ctx, r, srcAddr, names, "verification may draw for its KES round trips")
		if err != nil {
			return nil, err
		}
		p.Observed = append(p.Observed, line)
		if r.BeforeApply() {
			// The apply follows: list meanwhile, if StartEarly did not.
			startServedListing(ctx, r, src, srv, l.All, "from this step's plan")
		}
		listings, unlisted := 1, false // a kesGlob server streams every name at once
		if srv.generation == kesPaged {
			listings, unlisted = kesPlannedListings(ctx, l.All)
		}
		p.Actions = append(p.Actions, fmt.Sprintf("prove that the KES server %s serves this store: the complete set of names it lists is the store's (about %d listing(s), each of which costs the KES server a read of its whole store%s; an apply starts them with its plan, to run while the migration does, and lists again what the store no longer holds), and a data key it generates under each of a random sample of up to %d keys decrypts at the Key Manager to the same plaintext (no call to the KES server per key)", src.Endpoint(), listings, kesUnlistedNote(unlisted), verifyKESSample))
	} else {
		p.Observed = append(p.Observed, fmt.Sprintf("%s names no KES server: the keys are proven from the store's material only", srcAddr))
	}
	p.Risks = append(p.Risks, "whether the real AIStor Key Manager (minkms) decrypts KES v0.22/v0.23 msgpack ciphertexts is not published: verification proves each format against the Key Manager it talks to, so a rehearsal on the emulator proves the emulator, not minkms; run verification against the real Key Manager before the cutover")
	if v.cfg.Sample == nil {
		p.Items = names
	}
	refs, err := v.planReferences(ctx, r, p, names, enc.Name)
	if err != nil {
		return nil, err
	}
	referenced := refs.names()
	if referenced == nil {
		referenced = []string{}
	}
	p.State = map[string]any{"referenced": referenced}
	// Every proof this step makes is what proves the migration succeeded.
	p.Verification = append(p.Verification, p.Actions...)
	p.ItemsLabel = "keys to prove"
	return p, nil
}

// planReferences observes the keys the object store references and says
// how they will be checked, and what the plan already sees missing. No
// objects block: none.
func (v *verificationStep) planReferences(ctx context.Context, r *engine.Run, p *engine.StepPlan, names []string, enclave string) (*verifyRefs, error) {
	if !v.hasObjects() {
		return &verifyRefs{}, nil
	}
	obj, objAddr, err := engine.ConnectionFrom[*aistorConnection](v.cfg.Objects, "aistor")
	if err != nil {
		return nil, err
	}
	refs, err := observeKeyRefs(ctx, r, obj, v.objectsPerBucket())
	if err != nil {
		return nil, err
	}
	p.Observed = append(p.Observed, refs.describe(objAddr)...)
	p.Actions = append(p.Actions, fmt.Sprintf("prove that every key %s references (%d: %s) exists in enclave %s", objAddr, len(refs.names()), keystore.NameList(refs.names(), verifyShown), enclave))
	if lacking, _ := keystore.Diff(refs.names(), names); len(lacking) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%s uses %d key(s) that the KES key store does not hold (matching %q), so the migration cannot carry them and verification will fail: %s", objAddr, len(lacking), v.pattern(), refs.whereList(lacking)))
	}
	if refs.sseS3 > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("%d SSE-S3 object version(s) seen: the key each was sealed with is not visible through the S3 API (it is the default key at the time of writing, recorded only in xl.meta); they are covered only if that key is still the default key %q or is in the key set", refs.sseS3, refs.defaultKey))
	}
	if len(refs.truncated) > 0 {
		p.Risks = append(p.Risks, fmt.Sprintf("only the first %d object versions of %d bucket(s) were listed (%s): SSE-KMS objects beyond them may use keys not seen here; raise objects_per_bucket to look further", v.objectsPerBucket(), len(refs.truncated), keystore.NameList(refs.truncated, verifyShown)))
	}
	return refs, nil
}

func (v *verificationStep) Rollback(context.Context, *engine.Run) error { return nil }

// verifyFailure is one key whose round trip did not prove equality.
type verifyFailure struct {
	Name   string
	Reason string
}

// Apply proves the migration in three phases, each adding the problems it
// finds: the names (the key store listed completely against the enclave,
// and against the KES server's own listing), the material (a round trip of
// every key, or a sample, in every format MinIO may send it), and the
// references (every key the object store names is in the enclave). Any
// problem fails the step, all named.
func (v *verificationStep) Apply(ctx context.Context, r *engine.Run) error {
	vr, err := v.begin(ctx, r)
	if err != nil {
		return err
	}
	defer vr.end()
	ctx = vr.ctx
	names, err := vr.listStore(ctx)
	if err != nil {
		return err
	}
	defer names.ks.Close()
	defer func() {
		if names.served != nil {
			names.served.cancel() // the plan's listing too, once taken
		}
	}()
	read, err := vr.readStore(ctx, names)
	if err != nil {
		return err
	}
	source := vr.compareNames(names, read.unparsable)
	tally, err := vr.proveMaterial(ctx, read)
	if err != nil {
		return err
	}
	if err := vr.compareServedNames(ctx, names); err != nil {
		return err
	}
	vr.reportProven(source, names.target, read, tally)
	referenced, err := vr.checkReferences(ctx, names.allTarget)
	if err != nil {
		return err
	}
	r.SetOutput("verified", cty.NumberIntVal(int64(tally.keys)))
	r.SetOutput("proof", cty.StringVal(verifyProofName(tally.proofs, proofLocalSeal)))
	r.SetOutput("referenced", cty.NumberIntVal(int64(referenced)))
	if len(vr.problems) > 0 {
		return fmt.Errorf("verify enclave %s: %s", vr.enc.Name, strings.Join(vr.problems, "; "))
	}
	return nil
}

// verifyRun is one verification under way: its connections, and the
// problems its phases found.
type verifyRun struct {
	v       *verificationStep
	r       *engine.Run
	ctx     context.Context // Apply's, ended by end
	cancel  context.CancelFunc
	src     *kesConnection
	srcAddr string
	enc     enclaveRef
	kmc     *kms.Client
	srv     *kesServer  // nil when the kes block names no server
	kc      *kes.Client // srv's client
	// begin's background work: the probe of the KES server (nil: no
	// server) and the listing of the enclave, each closed once ended.
	probed    chan struct{}
	probeErr  error
	listed    chan struct{}
	allTarget []string
	listErr   error
	problems  []string
}

// ends are the two sides the verification compares: the kes block (and its
// address) and the enclave.
func (v *verificationStep) ends() (*kesConnection, string, enclaveRef, error) {
	src, srcAddr, err := engine.ConnectionFrom[*kesConnection](v.cfg.Source, "kes")
	if err != nil {
		return nil, "", enclaveRef{}, err
	}
	enc, err := enclaveFrom(v.cfg.Target)
	return src, srcAddr, enc, err
}

// begin connects to both ends for Apply, and starts probing the KES
// server, if the kes block names one, and listing the enclave: a few round
// trips each, which run while listStore lists the key store and the
// reading begins; targets waits for them. end waits for them too.
func (v *verificationStep) begin(ctx context.Context, r *engine.Run) (*verifyRun, error) {
	src, srcAddr, enc, err := v.ends()
	if err != nil {
		return nil, err
	}
	kmc, err := enc.KM.Client(r)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx) // ends the background work if Apply returns early
	vr := &verifyRun{v: v, r: r, ctx: ctx, cancel: cancel, src: src, srcAddr: srcAddr, enc: enc, kmc: kmc, listed: make(chan struct{})}
	if src.HasServer() {
		vr.probed = make(chan struct{})
		go func() {
			defer close(vr.probed)
			vr.srv, vr.probeErr = src.Server(ctx, r, srcAddr)
		}()
	}
	go func() {
		defer close(vr.listed)
		vr.listErr = withRetry(ctx, func() error {
			var err error
			vr.allTarget, err = listEnclaveKeys(ctx, kmc, enc.Name)
			return err
		})
	}()
	return vr, nil
}

// end cancels what Apply started and waits for begin's work: nothing of
// it uses the run once Apply has returned.
func (vr *verifyRun) end() {
	vr.cancel()
	<-vr.listed
	if vr.probed != nil {
		<-vr.probed
	}
}

// verifyNames are the name sets the verification compares.
type verifyNames struct {
	ks         kesserver.KeyStore
	held       *keystore.Verdicts // what this apply's plan read of the store (readAndSeal)
	listing    *storeListing
	candidates []string // the store's entries that may be keys
	// Set by targets, once begin's listing of the enclave and probe of the
	// KES server have ended:
	allTarget []string // every key of the enclave
	target    []string // those matching the pattern
	served    *servedListing
}

// servedNames is the KES server's complete name set.
type servedNames struct {
	names    []string
	unlisted bool
	err      error
	took     time.Duration
	inFlight int  // listings asked at once (kesListInFlight); 0 for one streamed listing
	byPlan   bool // listed from the quiet plan before the apply (freshServed)
}

// listStore lists the key store completely (sourceNames).
func (vr *verifyRun) listStore(ctx context.Context) (*verifyNames, error) {
	ks, listing, candidates, held, err := vr.v.sourceNames(ctx, vr.r, vr.src)
	if err != nil {
		return nil, err
	}
	return &verifyNames{ks: ks, listing: listing, candidates: candidates, held: held}, nil
}

// targets waits for begin's listing of the enclave and probe of the KES
// server, and takes the listing of the KES server's names that this
// process's plan started, or starts it (verification_served.go): it costs
// the KES server a read of its store per listing, not this side.
func (vr *verifyRun) targets(ctx context.Context, n *verifyNames) error {
	if err := waitClosed(ctx, vr.listed); err != nil {
		return err
	}
	if vr.listErr != nil {
		return vr.listErr
	}
	if vr.probed != nil {
		if err := waitClosed(ctx, vr.probed); err != nil {
			return err
		}
		if vr.probeErr != nil {
			return vr.probeErr
		}
		vr.kc = vr.srv.c
		n.served = takeServedListing(ctx, vr.r, vr.src, vr.srv, n.listing.All)
	}
	n.allTarget = vr.allTarget
	n.target = verifyMatch(n.allTarget, vr.v.pattern())
	return nil
}

// waitClosed waits until done is closed, or returns ctx's error when ctx
// ends first.
func waitClosed(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// storeRead is what reading the key store gave: the keys to prove, whose
// proofs (sealed here in every format) the Key Manager is decrypting, and
// the entries that do not parse.
type storeRead struct {
	sampled    []string // the keys chosen to prove (every key, or a sample)
	decrypting *decryptPipe
	proving    []string // the keys whose proofs were sealed and sent, sorted
	unparsable []problem
	kesRT      *kesRoundTrips // nil without a KES server
	started    time.Time
}

// readStore reads and parses the keys to prove and seals them in every
// format (verification_proof.go), the Key Manager decrypting them as they
// are sealed (decryptPipe), while the KES round trips on a sample run
// meanwhile: they cost the KES server and the Key Manager a request each,
// not this side's CPU. proveMaterial takes the answers. Without a sample
// the reading starts at once, sealing every key no earlier attempt proved,
// while the enclave is still listed (targets): the pipe holds the proofs
// until the listing says which keys both sides hold, and drops the others'
// (a key the enclave lacks is named by compareNames, not by a failed
// decryption). A sample is drawn from the keys both sides hold, so it
// waits for the listing first.
func (vr *verifyRun) readStore(ctx context.Context, n *verifyNames) (*storeRead, error) {
	start := time.Now()
	rd := &storeRead{started: start}
	// Progress counts keys answered, out of the keys to prove: those the
	// enclave lacks and those that turn out not to parse leave the total
	// once known.
	var done, total atomic.Int64
	rd.decrypting = newDecryptPipe(ctx, vr.kmc, vr.enc.Name, vr.v.parallelism(), func(n int) { vr.r.Progress(done.Add(int64(n)), total.Load()) })
	announced := false
	setTotal := func(t int) { // from one goroutine at a time
		if total.Swap(int64(t)) != int64(t) || !announced {
			vr.r.Progress(done.Load(), int64(t))
		}
		announced = true
	}
	choose := func() (map[string]bool, error) {
		if err := vr.targets(ctx, n); err != nil {
			return nil, err
		}
		todo, sampled, err := vr.v.chooseRoundTrips(vr.r, nameIntersect(n.candidates, n.target))
		if err != nil {
			return nil, err
		}
		rd.sampled = sampled
		if rd.kesRT == nil {
			rd.kesRT = vr.kesRoundTripsOn(ctx, todo)
		}
		setTotal(len(todo))
		return setOf(todo), nil
	}
	var prove map[string]bool
	chosen := make(chan error, 1)
	if vr.v.cfg.Sample != nil {
		keep, err := choose()
		if err != nil {
			rd.decrypting.abort()
			return nil, err
		}
		prove = keep
		chosen <- rd.decrypting.open(keep)
	} else {
		prove = map[string]bool{}
		var unproven []string
		for _, name := range n.candidates {
			if !verifiedKeys.Item(name).Done(vr.r) {
				prove[name] = true
				unproven = append(unproven, name)
			}
		}
		setTotal(len(prove))
		rd.decrypting.hold()
		rd.kesRT = vr.kesRoundTripsOn(ctx, unproven)
		go func() {
			keep, err := choose()
			if err == nil {
				err = rd.decrypting.open(keep)
			}
			if err != nil {
				rd.decrypting.fail(err) // ends the reading with err
			}
			chosen <- err
		}()
	}
	var err error
	rd.unparsable, err = vr.v.readAndSeal(ctx, n.ks, n.held, n.candidates, prove, rd.decrypting.add)
	if err != nil {
		rd.decrypting.cancel() // the listing's wait need not send what it holds
	}
	if cerr := <-chosen; err == nil {
		err = cerr
	}
	if err != nil {
		rd.decrypting.abort()
		return nil, err
	}
	var sealed int
	rd.proving, sealed = rd.decrypting.sealed()
	setTotal(len(rd.proving))
	vr.r.Logf("read %d entries of the key store and sealed %d ciphertexts in %s, each sent to the Key Manager as its request filled", len(n.candidates), sealed, time.Since(start).Round(time.Millisecond))
	return rd, nil
}

// kesRoundTripsOn starts the KES round trips on a sample of names (the
// keys to prove). Without a sample readStore starts them as the reading
// starts, rather than once the enclave is listed and the KES server probed
// (targets): they need only the two servers, and ending last they kept the
// verification waiting (1,000 keys on loopback: the first 16 took 18 ms,
// started as the sealing filled both CPUs). proveMaterial narrows the
// sample to the keys both sides hold and draws more to make it up
// (kesRoundTrips.keep). It returns nil when the kes block names no server
// or its client cannot be made (targets then reports why; choose asks
// again after it).
func (vr *verifyRun) kesRoundTripsOn(ctx context.Context, names []string) *kesRoundTrips {
	if !vr.src.HasServer() {
		return nil
	}
	kc, err := vr.src.Client(vr.r)
	if err != nil {
		return nil
	}
	return startKESRoundTrips(ctx, kc, vr.kmc, vr.enc.Name, kesSample(names, verifyKESSample), vr.v.parallelism())
}

// compareNames compares the store's keys with the enclave's and returns
// the store's keys: entries that do not parse are named apart, never
// called missing.
func (vr *verifyRun) compareNames(n *verifyNames, unparsable []problem) (source []string) {
	r, pattern := vr.r, vr.v.pattern()
	source = n.candidates
	if len(unparsable) > 0 {
		_, source = keystore.Diff(problemNames(unparsable), n.candidates)
		r.Warnf("%s (%d), not migrated and never called missing: %s", groupUnparsable, len(unparsable), strings.Join(describeProblems(unparsable), "; "))
	}
	if nk := verifyMatchProblems(n.listing.NotKeys, pattern); len(nk) > 0 {
		r.Logf("%s (%d), left out: %s", groupNotKeys, len(nk), strings.Join(describeProblems(nk), "; "))
	}
	if nf := len(verifyMatch(n.listing.Foreign, pattern)); nf > 0 {
		r.Logf("%s (%d), left out, never called missing", groupForeign, nf)
	}
	if outside := len(n.allTarget) - len(n.target); outside > 0 {
		r.Logf("enclave %s also holds %d key(s) outside the pattern %q (not compared)", vr.enc.Name, outside, pattern)
	}
	if missing, extra := keystore.Diff(source, n.target); len(missing) > 0 || len(extra) > 0 {
		vr.problems = append(vr.problems, verifyNameSetMessage(vr.srcAddr, vr.enc.Name, missing, extra))
	} else {
		r.Logf("names: the %d key(s) matching %q are the same in the KES key store and enclave %s", len(source), pattern, vr.enc.Name)
	}
	return source
}

// proveMaterial decrypts every sealed ciphertext at the Key Manager,
// batched, takes the KES round trips' results, checkpoints the keys
// proven, and returns the tally of every key proven so far (earlier
// attempts too).
func (vr *verifyRun) proveMaterial(ctx context.Context, rd *storeRead) (verifyTally, error) {
	r := vr.r
	if rd.kesRT != nil {
		rd.kesRT.keep(rd.proving, verifyKESSample)
	}
	proofs, outcomes, tail, err := rd.decrypting.wait()
	if err != nil {
		return verifyTally{}, err
	}
	r.Logf("the Key Manager decrypted %d ciphertexts, up to %d per request, in %s from the reading's start (%s after the last request)", len(proofs), verifyDecryptBatch, time.Since(rd.started).Round(time.Millisecond), tail.Round(time.Millisecond))
	var failures []verifyFailure
	kesProven := map[string]bool{}
	if rd.kesRT != nil {
		if failures, kesProven, err = rd.kesRT.wait(); err != nil {
			return verifyTally{}, err
		}
	}
	kps := judgeProofs(proofs, outcomes)
	proven, failures := splitProven(kps, failures)
	t0 := time.Now()
	if err := checkpointProofs(ctx, r, proven, kesProven, checkpointParallelism); err != nil {
		return verifyTally{}, err
	}
	r.Logf("checkpointed %d proven keys in %s", len(proven), time.Since(t0).Round(time.Millisecond))
	if msg := formatRefusalMessage(vr.enc.Name, kps); msg != "" {
		vr.problems = append(vr.problems, msg)
	}
	if len(failures) > 0 {
		vr.problems = append(vr.problems, verifyFailureMessage(vr.enc.Name, failures))
	}
	tally := verifyCheckpointed(r)
	tally.allProven = len(failures) == 0 && len(proven) == len(kps)
	return tally, nil
}

// splitProven sorts the keys' proofs into those proven and the failures
// (the KES round trips' failures first; a key that failed there is not
// proven); a format the Key Manager refuses is neither (formatRefusalMessage).
func splitProven(kps []keyProof, kesFailures []verifyFailure) (proven []keyProof, failures []verifyFailure) {
	failures = kesFailures
	kesFailed := map[string]bool{}
	for _, f := range kesFailures {
		kesFailed[f.Name] = true
	}
	for _, kp := range kps {
		switch {
		case len(kp.RefusedFormats) > 0:
		case kp.Failed != "" && !kesFailed[kp.Name]:
			failures = append(failures, verifyFailure{Name: kp.Name, Reason: kp.Failed})
		case !kesFailed[kp.Name]:
			proven = append(proven, kp)
		}
	}
	sort.Slice(failures, func(i, j int) bool { return failures[i].Name < failures[j].Name })
	return proven, failures
}

// compareServedNames checks that the KES server serves the key store the
// config names: keys it holds beyond the store would be used by MinIO and
// never migrated.
func (vr *verifyRun) compareServedNames(ctx context.Context, n *verifyNames) error {
	if vr.kc == nil {
		return nil
	}
	pattern := vr.v.pattern()
	stored := verifyMatch(n.listing.All, pattern)
	got := n.served.wait(ctx)
	if err := ctx.Err(); err != nil {
		return err // interrupted: nothing to judge or list again
	}
	res, why := freshServed(got, n.served.from != "", stored, pattern, func() servedNames {
		return listServed(ctx, vr.srv, n.listing.All)
	})
	if why != "" {
		vr.r.Logf("KES server: %s; listed again", why)
	}
	if res.err != nil {
		if errors.Is(res.err, kes.ErrNotAllowed) {
			return engine.WithHint(res.err, kesPolicyHint)
		}
		return res.err
	}
	served := verifyMatch(res.names, pattern)
	if _, onlyServer := keystore.Diff(stored, served); len(onlyServer) > 0 {
		vr.problems = append(vr.problems, fmt.Sprintf("the KES server %s holds %d key(s) that the key store named in %s does not: %s (is the server running with that config? the migration reads the store, so these keys would not be carried)", vr.src.Endpoint(), len(onlyServer), vr.src.ConfigFile(vr.r), keystore.NameList(onlyServer, verifyShown)))
	} else {
		when := ""
		if res.byPlan {
			when = fmt.Sprintf(", %s, while the steps before this one ran", n.served.from)
		}
		if res.inFlight > 0 {
			when += fmt.Sprintf(", %d listings at once", res.inFlight)
		}
		vr.r.Logf("KES server: the %d name(s) it serves matching %q are all in the key store (listed completely in %s%s%s)", len(served), pattern, res.took.Round(time.Millisecond), when, kesUnlistedNote(res.unlisted))
	}
	return nil
}

// reportProven says what the round trips proved, when they proved all.
func (vr *verifyRun) reportProven(source, target []string, rd *storeRead, tally verifyTally) {
	if !tally.allProven {
		return
	}
	common := nameIntersect(source, target)
	what := fmt.Sprintf("all %d keys", len(common))
	if vr.v.cfg.Sample != nil && len(rd.sampled) < len(common) {
		what = fmt.Sprintf("a random sample of %d of %d keys", len(rd.sampled), len(common))
	}
	vr.r.Logf("round trip: %s proven (%d verified, proof %s): %s", what, tally.keys, verifyProofName(tally.proofs, proofLocalSeal), tally.describe())
}

// checkReferences checks that every key the object store references is in
// the enclave, and returns how many it references (none without an
// objects block).
func (vr *verifyRun) checkReferences(ctx context.Context, allTarget []string) (int, error) {
	if !vr.v.hasObjects() {
		return 0, nil
	}
	r := vr.r
	obj, objAddr, err := engine.ConnectionFrom[*aistorConnection](vr.v.cfg.Objects, "aistor")
	if err != nil {
		return 0, err
	}
	refs, err := observeKeyRefs(ctx, r, obj, vr.v.objectsPerBucket())
	if err != nil {
		return 0, err
	}
	for _, line := range refs.describe(objAddr) {
		r.Logf("%s", line)
	}
	names := refs.names()
	if absent, _ := keystore.Diff(names, allTarget); len(absent) > 0 {
		vr.problems = append(vr.problems, fmt.Sprintf("%d key(s) that %s references are not in enclave %s: %s", len(absent), objAddr, vr.enc.Name, refs.whereList(absent)))
	} else {
		r.Logf("references: all %d key(s) %s references exist in enclave %s", len(names), objAddr, vr.enc.Name)
	}
	if refs.sseS3 > 0 {
		r.Warnf("%d SSE-S3 object version(s) seen: their key names are not visible through the S3 API (only in xl.meta); they were written with the default key of the time", refs.sseS3)
	}
	return len(names), nil
}

// chooseRoundTrips returns the keys still to round-trip and the whole set
// chosen (every key, or a sample). A sample is drawn from a seed recorded in
// a checkpoint, so a resumed verification continues the same sample.
func (v *verificationStep) chooseRoundTrips(r *engine.Run, common []string) (todo, chosen []string, err error) {
	chosen = common
	if v.cfg.Sample != nil && *v.cfg.Sample < len(common) {
		seed, ok, err := verificationSample.Get(r)
		if err != nil {
			return nil, nil, fmt.Errorf("read sample checkpoint: %w", err)
		}
		if !ok {
			var b [8]byte
			if _, err := rand.Read(b[:]); err != nil {
				return nil, nil, fmt.Errorf("draw sample: %w", err)
			}
			seed.Seed = binary.LittleEndian.Uint64(b[:])
			if err := verificationSample.Put(r, seed); err != nil {
				return nil, nil, err
			}
		}
		chosen = verifySample(common, *v.cfg.Sample, seed.Seed)
	}
	for _, n := range chosen {
		if !verifiedKeys.Item(n).Done(r) {
			todo = append(todo, n)
		}
	}
	return todo, chosen, nil
}

// sampleSeed is the data of verificationSample.
type sampleSeed struct {
	Seed uint64 `json:"seed"`
}

// verifySample picks n of names, sorted, from a seeded permutation.
func verifySample(names []string, n int, seed uint64) []string {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	perm := rng.Perm(len(names))
	out := make([]string, 0, n)
	for _, i := range perm[:n] {
		out = append(out, names[i])
	}
	sort.Strings(out)
	return out
}

// errMaterialDiffers marks a key whose material at the Key Manager is not the
// material at KES.
var errMaterialDiffers = errors.New("material differs")

// verifyContext is the associated data bound into each round trip's
// ciphertext, as MinIO binds its own context JSON.
func verifyContext(name string) []byte {
	b, _ := json.Marshal(map[string]string{"runbook-verification": name})
	return b
}

// verifyKESGenerate has the KES server generate a data key under name and
// the Key Manager decrypt its ciphertext: equal plaintexts prove equal keys.
func verifyKESGenerate(ctx context.Context, kc *kes.Client, kmc *kms.Client, enclave, name string) error {
	aad := verifyContext(name)
	var dek kes.DEK
	err := withRetry(ctx, func() error {
		var err error
		dek, err = kc.GenerateKey(ctx, name, aad)
		return err
	})
	if errors.Is(err, kes.ErrKeyNotFound) {
		return fmt.Errorf("the KES server has no key %q although the key store named in its config does: is the server running with that config?", name)
	}
	if errors.Is(err, kes.ErrNotAllowed) {
		return engine.WithHint(fmt.Errorf("generate a data key at KES: %w", err), kesPolicyHint)
	}
	if err != nil {
		return fmt.Errorf("generate a data key at KES: %w", err)
	}
	defer clear(dek.Plaintext)
	return verifyDecrypt(ctx, kmc, enclave, name, dek.Ciphertext, aad, dek.Plaintext)
}

// verifyDecrypt has the Key Manager decrypt ciphertext and compares the
// result with want.
func verifyDecrypt(ctx context.Context, kmc *kms.Client, enclave, name string, ciphertext, aad, want []byte) error {
	same, err := decryptsTo(ctx, kmc, enclave, name, ciphertext, aad, want)
	return verifyResult(name, same, err)
}

// verifyResult names what a round trip found.
func verifyResult(name string, same bool, err error) error {
	switch {
	case errors.Is(err, kms.ErrKeyNotFound):
		return fmt.Errorf("the enclave has no key %q", name)
	case err != nil:
		return err
	case !same:
		return fmt.Errorf("%w: the enclave's key does not decrypt what the KES key sealed to the same plaintext", errMaterialDiffers)
	}
	return nil
}

// verifyTally is what the verification checkpoints of this and earlier
// attempts say: the keys proven, by proof, format and KES round trip.
type verifyTally struct {
	allProven bool // this attempt proved every key it tried
	keys      int
	proofs    map[string]int // proof name → keys
	formats   map[string]int // ciphertext format → keys proven in it
	kes       int            // keys also proven by a data key of the KES server
}

func (t verifyTally) describe() string {
	s := fmt.Sprintf("%d in the %s format", t.formats[formatRaw], formatRaw)
	if n := t.formats[formatMsgpack]; n > 0 {
		s += fmt.Sprintf(", %d in the %s format", n, formatMsgpack)
	}
	if n := t.formats[formatJSON]; n > 0 {
		s += fmt.Sprintf(", %d in the %s format", n, formatJSON)
	}
	if t.kes > 0 {
		s += fmt.Sprintf("; %d also by a data key the KES server generated", t.kes)
	}
	return s
}

// verifyCheckpointed tallies the keys proven so far (this and earlier
// attempts).
func verifyCheckpointed(r *engine.Run) verifyTally {
	t := verifyTally{proofs: map[string]int{}, formats: map[string]int{}}
	proofs, _ := verifiedKeys.All(r)
	for _, c := range proofs {
		t.keys++
		t.proofs[c.Proof]++
		for _, f := range c.Formats {
			t.formats[f]++
		}
		if c.KESGenerate || c.Proof == proofKESGenerate {
			t.kes++
		}
	}
	return t
}

// verifyProofName is the proof the result reports: the one every verified
// key used, or "mixed" when a resumed run used another.
func verifyProofName(proofs map[string]int, planned string) string {
	switch len(proofs) {
	case 0:
		return planned
	case 1:
		for p := range proofs {
			return p
		}
	}
	return proofMixed
}

// verifyNameSetMessage says how the enclave's key names differ from the
// source's.
func verifyNameSetMessage(srcAddr, enclave string, missing, extra []string) string {
	var parts []string
	if len(missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d key(s) of the %s key store are missing from enclave %s: %s (created at KES after the migration listed the store, never imported, or deleted from the enclave since: halt key creation at KES and run the migration again, which carries them and skips the keys already there)", len(missing), srcAddr, enclave, keystore.NameList(missing, verifyShown)))
	}
	if len(extra) > 0 {
		parts = append(parts, fmt.Sprintf("enclave %s holds %d key(s) the %s key store does not: %s (deleted at KES since the migration, or put into the enclave by something else)", enclave, len(extra), srcAddr, keystore.NameList(extra, verifyShown)))
	}
	return strings.Join(parts, "; ")
}

// verifyFailureMessage lists the keys whose round trip failed, grouping
// those whose material differs.
func verifyFailureMessage(enclave string, failures []verifyFailure) string {
	var differs []string
	var other []string
	for _, f := range failures {
		if strings.Contains(f.Reason, errMaterialDiffers.Error()) {
			differs = append(differs, f.Name)
		} else {
			other = append(other, fmt.Sprintf("%s (%s)", f.Name, f.Reason))
		}
	}
	var parts []string
	if len(differs) > 0 {
		parts = append(parts, fmt.Sprintf("%d key(s) in enclave %s have different material than at KES: %s", len(differs), enclave, keystore.NameList(differs, verifyShown)))
	}
	if len(other) > 0 {
		parts = append(parts, fmt.Sprintf("the round trip failed for %d key(s): %s", len(other), keystore.NameList(other, verifyShown)))
	}
	return strings.Join(parts, "; ")
}

// verifyRefs are the keys an object store refers to, as far as its API
// shows them, and where.
type verifyRefs struct {
	kmsName    string
	defaultKey string
	where      map[string][]string // key → places (bounded)
	count      map[string]int      // key → number of places
	buckets    int
	versions   int
	sseKMS     int
	sseS3      int
	truncated  []string // buckets listed only up to the bound
}

func (v *verifyRefs) add(key, place string) {
	if v.where == nil {
		v.where, v.count = map[string][]string{}, map[string]int{}
	}
	v.count[key]++
	if len(v.where[key]) < verifyRefsShown {
		v.where[key] = append(v.where[key], place)
	}
}

// names are the referenced keys, sorted.
func (v *verifyRefs) names() []string {
	out := make([]string, 0, len(v.count))
	for k := range v.count {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// whereList names keys with the places that reference them.
func (v *verifyRefs) whereList(keys []string) string {
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		places := strings.Join(v.where[k], ", ")
		if more := v.count[k] - len(v.where[k]); more > 0 {
			places += fmt.Sprintf(" and %d more", more)
		}
		parts = append(parts, fmt.Sprintf("%s (referenced by %s)", k, places))
	}
	return keystore.NameList(parts, verifyShown)
}

func (v *verifyRefs) describe(addr string) []string {
	out := []string{
		fmt.Sprintf("%s: KMS %q, default key %q; %d bucket(s), %d object version(s) listed (%d SSE-KMS, %d SSE-S3)", addr, v.kmsName, v.defaultKey, v.buckets, v.versions, v.sseKMS, v.sseS3),
		fmt.Sprintf("%s references %d key(s): %s", addr, len(v.count), v.whereList(v.names())),
		"the key of an SSE-S3 object is not visible through the S3 API (it is the default key at the time of writing, recorded only in xl.meta): SSE-S3 objects are covered through the default key only if it has not changed since they were written",
	}
	return out
}

// kmsARNPrefix prefixes the key ids MinIO shows for SSE-KMS.
const kmsARNPrefix = "arn:aws:kms:"

const (
	hdrSSE      = "X-Amz-Server-Side-Encryption"
	hdrSSEKMSID = "X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"
)

// observeKeyRefs lists what the object store's API shows of the keys it uses:
// its default KMS key, every bucket's default encryption, and the key ids of
// SSE-KMS object versions (at most perBucket listed per bucket).
func observeKeyRefs(ctx context.Context, r *engine.Run, a *aistorConnection, perBucket int) (*verifyRefs, error) {
	admin, s3, err := a.Clients(r)
	if err != nil {
		return nil, err
	}
	refs := &verifyRefs{}
	st, err := admin.KMSStatus(ctx)
	switch {
	case err != nil && kmsStatusRefused(err):
		// MinIO's KES identity may lack /v1/status while SSE works
		// (docs/domain.md, "KES identities and policies"): the default key is then not among the references;
		// the cutover checks it against the env files and the enclave.
		st.Name = "unknown (KES refuses /v1/status to MinIO's identity)"
	case err != nil:
		return nil, fmt.Errorf("read the KMS status of %s: %w", hostOf(a.Endpoint()), err)
	}
	refs.kmsName, refs.defaultKey = st.Name, st.DefaultKeyID
	if st.DefaultKeyID != "" {
		refs.add(st.DefaultKeyID, "the default key")
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return nil, fmt.Errorf("list buckets of %s: %w", hostOf(a.Endpoint()), err)
	}
	refs.buckets = len(buckets)
	for _, b := range buckets {
		if err := refs.addBucketEncryption(ctx, s3, b.Name, st.DefaultKeyID); err != nil {
			return nil, err
		}
		if perBucket > 0 {
			if err := refs.addObjectKeys(ctx, s3, b.Name, perBucket); err != nil {
				return nil, err
			}
		}
	}
	return refs, nil
}

// addBucketEncryption adds the key of a bucket's default encryption.
func (refs *verifyRefs) addBucketEncryption(ctx context.Context, s3 *minio.Client, bucket, defaultKey string) error {
	cfg, err := s3.GetBucketEncryption(ctx, bucket)
	if err != nil && minio.ToErrorResponse(err).Code != "ServerSideEncryptionConfigurationNotFoundError" {
		return fmt.Errorf("read the encryption of bucket %s: %w", bucket, err)
	}
	if cfg == nil {
		return nil
	}
	for _, rule := range cfg.Rules {
		switch {
		case rule.Apply.KmsMasterKeyID != "":
			refs.add(strings.TrimPrefix(rule.Apply.KmsMasterKeyID, kmsARNPrefix), "bucket "+bucket+" (default encryption)")
		case rule.Apply.SSEAlgorithm != "" && defaultKey != "":
			refs.add(defaultKey, "bucket "+bucket+" (default SSE-S3 encryption)")
		}
	}
	return nil
}

// addObjectKeys adds the keys of the SSE-KMS object versions of a bucket,
// at most perBucket versions listed, and counts the SSE-S3 ones.
func (refs *verifyRefs) addObjectKeys(ctx context.Context, s3 *minio.Client, bucket string, perBucket int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := 0
	for obj := range s3.ListObjects(ctx, bucket, minio.ListObjectsOptions{Recursive: true, WithMetadata: true, WithVersions: true}) {
		if obj.Err != nil {
			return fmt.Errorf("list objects of bucket %s: %w", bucket, obj.Err)
		}
		if n == perBucket {
			refs.truncated = append(refs.truncated, bucket)
			return nil
		}
		n++
		if obj.IsDeleteMarker {
			continue
		}
		refs.versions++
		sse, keyID := "", ""
		for k, val := range obj.UserMetadata {
			switch {
			case strings.EqualFold(k, hdrSSE):
				sse = val
			case strings.EqualFold(k, hdrSSEKMSID):
				keyID = val
			}
		}
		switch {
		case keyID != "":
			refs.sseKMS++
			place := "object " + bucket + "/" + obj.Key
			if obj.VersionID != "" && obj.VersionID != "null" && !obj.IsLatest {
				place += " (version " + obj.VersionID + ")"
			}
			refs.add(strings.TrimPrefix(keyID, kmsARNPrefix), place)
		case strings.EqualFold(sse, "AES256"):
			refs.sseS3++
		}
	}
	return nil
}

package steps

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/parallel"
)

// The proof, designed once for issues 10 and 12.
//
// For every key, a random plaintext is sealed here under the key's material
// (read from the store) in every ciphertext format MinIO may forward for it,
// and the Key Manager must decrypt each to the same plaintext: that proves
// the enclave holds the store's key and opens what KES sealed under it. The
// decrypts travel several per request (one Decrypt frame each, a read
// command), each request sent as soon as its proofs are sealed while the
// store is still read (decryptPipe), so the Key Manager sees a request per
// verifyDecryptBatch ciphertexts, and the KES server no call per key. That the KES server
// serves this very store is proven apart: its complete name set must be the store's, and a
// data key it generates on a sample of keys (verifyKESSample) must decrypt at
// the Key Manager.
//
// Formats (docs/domain.md, "Ciphertext formats"): what MinIO may forward
// to the Key Manager for the key. Raw (KES v0.24) for every key; for a key
// stored in the KES v0.22/v0.23 JSON format, objects written then carry
// msgpack ciphertexts (first byte 0x95), which MinIO forwards unchanged,
// so msgpack too. Legacy JSON ciphertexts never reach the Key Manager:
// MinIO turns every one KES could open into raw before it asks (the two
// parse them with the same checks), so the raw proof covers them.
const (
	formatRaw     = "raw"
	formatMsgpack = "msgpack"
	// formatJSON is only read: checkpoints of earlier versions, which
	// proved it too, are tallied with it.
	formatJSON = "JSON"

	// verifyDecryptBatch is how many Decrypt frames one request carries.
	verifyDecryptBatch = 64
	// verifyKESSample is how many keys get a KES round trip (generate at
	// the KES server, decrypt at the Key Manager): its cost per call grows
	// with the store, so it is a sample, not a call per key (issue 12).
	verifyKESSample = 32
)

// ciphertextFormats are the formats proven for a key stored as stored.
func ciphertextFormats(stored string) []string {
	if stored == formatV023 {
		return []string{formatRaw, formatMsgpack}
	}
	return []string{formatRaw}
}

// sealedProof is one ciphertext sealed here under a key's material, to be
// decrypted at the Key Manager. plaintext is random and protects nothing.
type sealedProof struct {
	name, format          string
	ciphertext, plaintext []byte
	aad                   []byte
}

// sealProofs seals a fresh random plaintext under k in each format proven
// for a key stored as stored. The caller still owns k.
func sealProofs(name string, k kescrypto.Key, stored string) ([]sealedProof, error) {
	aad := verifyContext(name)
	var out []sealedProof
	for _, f := range ciphertextFormats(stored) {
		pt := make([]byte, 32)
		if _, err := rand.Read(pt); err != nil {
			return nil, fmt.Errorf("draw plaintext: %w", err)
		}
		var ct []byte
		var err error
		switch f {
		case formatRaw:
			ct, err = kescrypto.Seal(k, pt, aad)
		case formatMsgpack:
			ct, err = kescrypto.SealMsgpack(k, pt, aad)
		}
		if err != nil {
			return nil, fmt.Errorf("seal %s locally in the %s format: %w", name, f, err)
		}
		out = append(out, sealedProof{name: name, format: f, ciphertext: ct, plaintext: pt, aad: aad})
	}
	return out, nil
}

// proofOutcome is what the Key Manager did with one sealed proof.
type proofOutcome int

const (
	outcomeProven  proofOutcome = iota // decrypted to the same plaintext
	outcomeRefused                     // kms.ErrDecrypt: cannot open it
	outcomeDiffers                     // decrypted, to another plaintext
	outcomeNoKey                       // kms.ErrKeyNotFound
)

// decryptBatch has the Key Manager decrypt proofs in one request (one
// Decrypt frame each) and returns each proof's outcome. A request the Key
// Manager fails (it answers with the error of the first command that
// failed) is taken apart: each of its proofs is decrypted on its own, so
// that every outcome is known. Errors that are not about a proof
// (permission, transport after retries) are returned.
func decryptBatch(ctx context.Context, c *kms.Client, enclave string, proofs []sealedProof) ([]proofOutcome, error) {
	out := make([]proofOutcome, len(proofs))
	reqs := make([]*kms.DecryptRequest, 0, len(proofs))
	for _, p := range proofs {
		reqs = append(reqs, &kms.DecryptRequest{Name: p.name, Version: 0, Ciphertext: p.ciphertext, AssociatedData: p.aad})
	}
	var resp []*kms.DecryptResponse
	err := withRetry(ctx, func() error {
		var err error
		resp, err = c.Decrypt(ctx, enclave, reqs...)
		return err
	})
	switch {
	case err == nil && len(resp) == len(reqs):
		for i, r := range resp {
			out[i] = compareProof(r.Plaintext, proofs[i].plaintext)
			clear(r.Plaintext)
		}
	case err == nil:
		return nil, fmt.Errorf("decrypt at the Key Manager: %d answers to %d commands", len(resp), len(reqs))
	case errors.Is(err, kms.ErrDecrypt), errors.Is(err, kms.ErrKeyNotFound), len(reqs) > 1 && ctx.Err() == nil:
		for i := range reqs {
			o, err := decryptOne(ctx, c, enclave, reqs[i], proofs[i].plaintext)
			if err != nil {
				return nil, err
			}
			out[i] = o
		}
	default:
		return nil, fmt.Errorf("decrypt at the Key Manager: %w", permanentHint(err, enclave))
	}
	return out, nil
}

func decryptOne(ctx context.Context, c *kms.Client, enclave string, req *kms.DecryptRequest, want []byte) (proofOutcome, error) {
	var resp []*kms.DecryptResponse
	err := withRetry(ctx, func() error {
		var err error
		resp, err = c.Decrypt(ctx, enclave, req)
		return err
	})
	switch {
	case errors.Is(err, kms.ErrDecrypt):
		return outcomeRefused, nil
	case errors.Is(err, kms.ErrKeyNotFound):
		return outcomeNoKey, nil
	case err != nil:
		return 0, fmt.Errorf("decrypt at the Key Manager: %w", permanentHint(err, enclave))
	case len(resp) != 1:
		return 0, fmt.Errorf("decrypt at the Key Manager: %d answers to one command", len(resp))
	}
	defer clear(resp[0].Plaintext)
	return compareProof(resp[0].Plaintext, want), nil
}

func compareProof(got, want []byte) proofOutcome {
	if subtle.ConstantTimeCompare(got, want) == 1 {
		return outcomeProven
	}
	return outcomeDiffers
}

// keyProof is what the proofs of one key found.
type keyProof struct {
	Name    string
	Formats []string // proven, in order
	// Failed is empty when every format was proven; otherwise why not.
	Failed string
	// RefusedFormats are formats the Key Manager would not open although
	// the raw one, under the same material, decrypted: it refuses the
	// format, not the key.
	RefusedFormats []string
}

// judgeProofs groups the outcomes by key.
func judgeProofs(proofs []sealedProof, outcomes []proofOutcome) []keyProof {
	byName := map[string]*keyProof{}
	var order []string
	raw := map[string]proofOutcome{}
	for i, p := range proofs {
		if p.format == formatRaw {
			raw[p.name] = outcomes[i]
		}
	}
	for i, p := range proofs {
		kp := byName[p.name]
		if kp == nil {
			kp = &keyProof{Name: p.name}
			byName[p.name] = kp
			order = append(order, p.name)
		}
		switch o := outcomes[i]; {
		case o == outcomeProven:
			kp.Formats = append(kp.Formats, p.format)
		case o == outcomeNoKey:
			kp.Failed = fmt.Sprintf("the enclave has no key %q", p.name)
		case p.format != formatRaw && raw[p.name] == outcomeProven:
			kp.RefusedFormats = append(kp.RefusedFormats, p.format)
			if kp.Failed == "" {
				kp.Failed = "the Key Manager does not decrypt the " + p.format + " format"
			}
		case p.format == formatRaw:
			kp.Failed = errMaterialDiffers.Error() + ": the enclave's key does not decrypt what the store's key sealed to the same plaintext"
		}
	}
	sort.Strings(order)
	out := make([]keyProof, 0, len(order))
	for _, n := range order {
		out = append(out, *byName[n])
	}
	return out
}

// formatRefusalMessage names, per format, the keys whose ciphertexts of
// that format the Key Manager refuses although it holds their material.
func formatRefusalMessage(enclave string, kps []keyProof) string {
	by := map[string][]string{}
	for _, kp := range kps {
		for _, f := range kp.RefusedFormats {
			by[f] = append(by[f], kp.Name)
		}
	}
	var parts []string
	for _, f := range []string{formatMsgpack} {
		names := by[f]
		if len(names) == 0 {
			continue
		}
		what := "KES v0.22/v0.23 msgpack ciphertexts (first byte 0x95), which MinIO forwards unchanged: objects written under these keys before KES v0.24 would not read after the cutover"
		parts = append(parts, fmt.Sprintf("the Key Manager of enclave %s holds the material of %d key(s) but refuses the %s format: %s; %s", enclave, len(names), f, what, keystore.NameList(names, verifyShown)))
	}
	return strings.Join(parts, "; ")
}

// proofCheckpoint is the data of a verifiedKeys item: which proof the key
// got. It holds no material.
type proofCheckpoint struct {
	Proof       string   `json:"proof"`
	Formats     []string `json:"formats,omitempty"`
	KESGenerate bool     `json:"kes_generate,omitempty"`
}

// checkpointProofs makes the checkpoints of the proven keys durable, in
// batches of checkpointBatch under one fsync each, par batches at once.
func checkpointProofs(ctx context.Context, w engine.CheckpointWriter, kps []keyProof, kesProven map[string]bool, par int) error {
	batches := (len(kps) + checkpointBatch - 1) / checkpointBatch
	return parallel.ForEach(ctx, par, batches, func(ctx context.Context, b int) error {
		batch := kps[b*checkpointBatch : min(len(kps), (b+1)*checkpointBatch)]
		items := make([]engine.CheckpointItem, len(batch))
		for i, kp := range batch {
			items[i] = verifiedKeys.Item(kp.Name).With(proofCheckpoint{Proof: proofLocalSeal, Formats: kp.Formats, KESGenerate: kesProven[kp.Name]})
		}
		return w.CheckpointAll(items)
	})
}

// kesRoundTrips runs KES round trips (verifyKESGenerate) on a sample of
// keys in the background, while the store is read and the Key Manager
// decrypts. The sample is drawn before the store is read, so keep narrows
// it to the keys that turned out to be keys and draws more to make it up.
type kesRoundTrips struct {
	ctx     context.Context
	kc      *kes.Client
	kmc     *kms.Client
	enclave string
	par     int

	wg      sync.WaitGroup
	mu      sync.Mutex
	results map[string]error // the round trip of each sampled key
	sampled []string
	proving map[string]bool // set by keep: only these count
	err     error
}

// startKESRoundTrips starts a round trip for each of sample, par at once.
func startKESRoundTrips(ctx context.Context, kc *kes.Client, kmc *kms.Client, enclave string, sample []string, par int) *kesRoundTrips {
	rt := &kesRoundTrips{ctx: ctx, kc: kc, kmc: kmc, enclave: enclave, par: par, results: map[string]error{}}
	rt.start(sample)
	return rt
}

func (rt *kesRoundTrips) start(names []string) {
	rt.sampled = append(rt.sampled, names...)
	rt.wg.Add(1)
	go func() {
		defer rt.wg.Done()
		err := parallel.ForEach(rt.ctx, rt.par, len(names), func(ctx context.Context, i int) error {
			err := verifyKESGenerate(ctx, rt.kc, rt.kmc, rt.enclave, names[i])
			rt.mu.Lock()
			rt.results[names[i]] = err
			rt.mu.Unlock()
			return nil
		})
		if err != nil {
			rt.mu.Lock()
			rt.err = err
			rt.mu.Unlock()
		}
	}()
}

// keep makes the sample up to n keys of proving (the keys whose proofs were
// sealed); round trips of other names are dropped.
func (rt *kesRoundTrips) keep(proving []string, n int) {
	rt.proving = setOf(proving)
	sampled := setOf(rt.sampled)
	kept := 0
	var rest []string
	for _, name := range proving {
		if sampled[name] {
			kept++
		} else {
			rest = append(rest, name)
		}
	}
	if want := min(n, len(proving)); kept < want {
		rt.start(kesSample(rest, want-kept))
	}
}

// wait returns the failed round trips and the keys proven by one, once
// every round trip has ended.
func (rt *kesRoundTrips) wait() ([]verifyFailure, map[string]bool, error) {
	rt.wg.Wait()
	if rt.err != nil {
		return nil, nil, rt.err
	}
	var failures []verifyFailure
	proven := map[string]bool{}
	for name, err := range rt.results {
		switch {
		case rt.proving != nil && !rt.proving[name]:
		case err != nil:
			failures = append(failures, verifyFailure{Name: name, Reason: err.Error()})
		default:
			proven[name] = true
		}
	}
	return failures, proven, nil
}

// kesSample picks up to n names of names, spread by a random permutation.
func kesSample(names []string, n int) []string {
	if len(names) <= n {
		return slices.Clone(names)
	}
	var b [8]byte
	rand.Read(b[:])
	seed := uint64(0)
	for _, x := range b {
		seed = seed<<8 | uint64(x)
	}
	return verifySample(names, n, seed)
}

// readParallelism bounds the key store reads in flight: a few keep the
// disk and the CPUs busy; more only add threads blocked in system calls
// (an fs read is an open, a read and a close).
const readParallelism = 8

// readParallelismOf is how many reads of ks to have in flight:
// keystore.VaultReads at a Vault store, where each is a round trip. The
// cloud stores keep readParallelism: their request quotas were not
// measured.
func readParallelismOf(ks kesserver.KeyStore) int {
	if _, ok := ks.(*vaultKeyStore); ok {
		return keystore.VaultReads
	}
	return readParallelism
}

// checkpointBatch is how many checkpoints one journal write carries, and
// checkpointParallelism how many such writes run at once (sharing the
// journal's group commit while the next batch is encoded).
const (
	checkpointBatch       = 1024
	checkpointParallelism = 4
)

// readAndSeal reads and parses every key of names from the store, seals
// the proofs of those in prove and hands each key's proofs to sealed as
// soon as they are sealed (an error it returns ends the reading). It
// returns the entries that do not parse, sorted. Material is wiped as soon
// as a key's proofs are sealed. A value read that is byte for byte the one
// this apply's plan parsed (held, may be nil) is not parsed again.
func (v *verificationStep) readAndSeal(ctx context.Context, ks kesserver.KeyStore, held *keystore.Verdicts, names []string, prove map[string]bool, sealed func([]sealedProof) error) ([]problem, error) {
	var (
		mu         sync.Mutex
		unparsable []problem
	)
	err := parallel.ForEach(ctx, readParallelismOf(ks), len(names), func(ctx context.Context, i int) error {
		name := names[i]
		var raw []byte
		err := withRetry(ctx, func() error {
			var err error
			raw, err = ks.Get(ctx, name)
			return err
		})
		if why := unreadableEntryReason(err); why != "" {
			mu.Lock()
			unparsable = append(unparsable, problem{Name: name, Reason: why})
			mu.Unlock()
			return nil
		}
		if err != nil {
			return fmt.Errorf("read key %q from the key store: %w (was it deleted since the listing? halt key changes at KES first)", name, err)
		}
		k, format, ok := held.HeldKeyOf(name, raw)
		var reason string
		if !ok {
			k, format, reason = parseEntry(raw)
		}
		clear(raw)
		if reason != "" {
			mu.Lock()
			unparsable = append(unparsable, problem{Name: name, Reason: reason})
			mu.Unlock()
			return nil
		}
		defer clear(k.Material)
		defer clear(k.HMAC)
		if !prove[name] {
			return nil
		}
		ps, err := sealProofs(name, k, format)
		if err != nil {
			return err
		}
		return sealed(ps)
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(unparsable, func(a, b problem) int { return strings.Compare(a.Name, b.Name) })
	return unparsable, nil
}

// compareProofs orders proofs by key, then format (raw first).
func compareProofs(a, b sealedProof) int {
	if c := strings.Compare(a.name, b.name); c != 0 {
		return c
	}
	return formatOrder(a.format) - formatOrder(b.format)
}

func formatOrder(f string) int {
	if f == formatRaw {
		return 0
	}
	return 1
}

// verifyMatchProblems keeps the entries whose name matches a glob.
func verifyMatchProblems(ps []problem, pattern string) []problem {
	var out []problem
	for _, p := range ps {
		if ok, _ := path.Match(pattern, p.Name); ok {
			out = append(out, p)
		}
	}
	return out
}

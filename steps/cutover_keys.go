package steps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
)

// neededKey is a key the enclave must hold when the nodes restart onto the
// Key Manager, and why: the default key, the keys the sample's SSE-KMS
// objects are sealed under (which the cutover reads back after the
// restart) and the keys the buckets' encryption configurations name
// (sampleKeyNeeds). Its fields word the cutover's messages.
type neededKey struct {
	name  string
	label string // "the default key"
	role  string // follows the quoted name: what the key is to the object store
	lost  string // what happens without it, starting "MinIO …"
	// decryptOnly: MinIO only decrypts under it (a key only objects name:
	// internal/crypto sse-kms.go UnsealObjectKey); it generates under the
	// default key and the keys bucket configurations name.
	decryptOnly bool
}

// defaultKeyNeed is the default key the files will name (MINIO_KMS_SSE_KEY).
func defaultKeyNeed(name string) neededKey {
	return neededKey{
		name:  name,
		label: "the default key",
		role:  "the default key the object store runs with (MINIO_KMS_SSE_KEY)",
		lost:  "MinIO would create a fresh key under that name at start-up and seal new data with it, and no object sealed before could be read",
	}
}

// sampleKeyNeeds are the keys the sample's SSE-KMS objects are sealed under
// (as their metadata names them) and the keys the buckets' encryption
// configurations name, other than the default key, by name. SSE-S3 objects
// and MinIO's own data do not name their key: only the default key is known
// of them.
func sampleKeyNeeds(s *cutoverSample, defaultKey string) []neededKey {
	objects, buckets := map[string][]string{}, map[string][]string{}
	for _, o := range s.Objects {
		if o.SSE == "SSE-KMS" && o.KMSKey != "" && o.KMSKey != defaultKey {
			objects[o.KMSKey] = append(objects[o.KMSKey], o.name())
		}
	}
	for b, keys := range s.BucketKeys {
		for _, k := range keys {
			if k != defaultKey {
				buckets[k] = append(buckets[k], b)
			}
		}
	}
	names := slices.Collect(maps.Keys(objects))
	for n := range buckets {
		if _, ok := objects[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	needs := make([]neededKey, len(names))
	for i, n := range names {
		var whose []string
		if len(objects[n]) > 0 {
			whose = append(whose, "the sample's SSE-KMS object(s) "+strings.Join(shortList(objects[n], 3), ", ")+" are sealed under")
		}
		if len(buckets[n]) > 0 {
			sort.Strings(buckets[n])
			whose = append(whose, "the encryption configuration of bucket(s) "+strings.Join(shortList(buckets[n], 3), ", ")+" names")
		}
		needs[i] = neededKey{
			name:        n,
			label:       "the SSE-KMS key",
			role:        "the key that " + strings.Join(whose, " and that "),
			lost:        "MinIO could not read what is sealed under it after the restart, nor seal new objects under it, and the cutover would fail and restart every node again to roll back",
			decryptOnly: len(buckets[n]) == 0,
		}
	}
	return needs
}

// enclaveHolds asks the Key Manager, with the key_manager block's own
// identity (KeyStatus), whether the enclave holds k. Only ErrKeyNotFound
// is "no"; any other failure is an error wrapping the Key Manager's.
func (c *cutoverStep) enclaveHolds(ctx context.Context, r *engine.Run, e *cutoverEnv, k neededKey) (bool, error) {
	kmc, err := e.enc.KM.Client(r)
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	_, err = kmc.KeyStatus(cctx, e.enc.Name, &kms.KeyStatusRequest{Name: k.name})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, kms.ErrKeyNotFound):
		return false, nil
	}
	return false, fmt.Errorf("check that enclave %s holds %s %q: %w", e.enc.Name, k.label, k.name, err)
}

// checkEnclaveHolds refuses, before any change, when the enclave does not
// hold a key the nodes will need (enclaveHolds).
func (c *cutoverStep) checkEnclaveHolds(ctx context.Context, r *engine.Run, e *cutoverEnv, k neededKey) error {
	held, err := c.enclaveHolds(ctx, r, e, k)
	if err != nil || held {
		return err
	}
	return engine.Refusef("enclave %s holds no key %q, %s: %s; migrate the key first (nothing was changed, no node restarted)", e.enc.Name, k.name, k.role, k.lost)
}

// planEnclaveHolds refuses at plan a key the enclave will not hold when the
// cutover runs: it holds it now, or a migration this cutover follows
// (depends_on, directly or through other steps) imports it into that
// enclave, as its plan lists (an enclave not made yet holds nothing). Else
// k.lost (docs/domain.md, "What MinIO asks of the Key Manager"). It
// returns the plan's line saying which, and whether the enclave holds the
// key now. Apply checks the enclave itself again before the first change
// (checkEnclaveHolds).
func (c *cutoverStep) planEnclaveHolds(ctx context.Context, r *engine.Run, e *cutoverEnv, k neededKey) (string, bool, error) {
	held, err := c.enclaveHolds(ctx, r, e, k)
	switch {
	case held:
		return fmt.Sprintf("enclave %s holds %s %q", e.enc.Name, k.label, k.name), true, nil
	case err != nil && !errors.Is(err, kms.ErrEnclaveNotFound):
		return "", false, err
	}
	ups := r.UpstreamPlans("migration")
	addrs := make([]string, 0, len(ups))
	for a := range ups {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	var seen []string
	for _, a := range addrs {
		p := ups[a]
		if p == nil {
			seen = append(seen, a+" could not be planned (see its error)")
			continue
		}
		st, ok := p.State.(migrationState)
		if !ok || st.Enclave != e.enc.Name {
			continue
		}
		if slices.Contains(p.Items, k.name) {
			return fmt.Sprintf("enclave %s does not hold %s %q yet: %s imports it before the cutover", e.enc.Name, k.label, k.name, a), false, nil
		}
		seen = append(seen, fmt.Sprintf("%s imports %d key(s) into it, not this one", a, len(p.Items)))
	}
	why := "no migration this cutover follows (depends_on) imports keys into it"
	if len(seen) > 0 {
		why = strings.Join(seen, "; ")
	}
	return "", false, engine.WithHint(
		engine.Refusef("enclave %s holds no key %q, %s, and none will hold it when the cutover runs: %s. %s (nothing was changed, no node restarted)", e.enc.Name, k.name, k.role, why, k.lost),
		fmt.Sprintf("carry %q into enclave %s first: a migration block from the key store the object store runs with, to that enclave, whose pattern matches the key, and depends_on = [migration.NAME] on the cutover (or import it by hand); then plan again", k.name, e.enc.Name))
}

// planKeys checks at plan every key in needs (planEnclaveHolds) and proves
// the cutover's API key on those the enclave holds now (proveAPIKey), where
// the key is known. It returns the plan's lines, and a risk where the Key
// Manager refuses the API key now while an exec or identity step the
// cutover follows has yet to run: such a step may register the identity or
// grant it a policy, and apply proves the key again before its first
// change.
func (c *cutoverStep) planKeys(ctx context.Context, r *engine.Run, e *cutoverEnv, needs []neededKey) (lines []string, risk string, err error) {
	var held, later []neededKey
	for _, k := range needs {
		line, now, err := c.planEnclaveHolds(ctx, r, e, k)
		if err != nil {
			return nil, "", err
		}
		lines = append(lines, line)
		if now {
			held = append(held, k)
		} else {
			later = append(later, k)
		}
	}
	apply := "before the first change, the cutover proves what the nodes will ask with the API key it writes into them (MINIO_KMS_API_KEY): " + askedOf(append(held, later...))
	if c.cfg.APIKey == "" || r.Decoded.Unknown("api_key") {
		return append(lines, "the API key the nodes will use is known after apply: "+apply), "", nil
	}
	if len(held) > 0 {
		proven, refused, err := c.proveAPIKey(ctx, r, e, held)
		var granting []string
		for _, a := range r.UpstreamPending() {
			if strings.HasPrefix(a, "exec.") || strings.HasPrefix(a, "identity.") {
				granting = append(granting, a)
			}
		}
		switch {
		case refused != nil && len(granting) > 0:
			risk = fmt.Sprintf("the plan cannot prove the nodes' API key now: %s; %s run(s) before the cutover and may register that identity or grant it a policy: %s", refused, strings.Join(granting, ", "), apply)
		case err != nil:
			return nil, "", err
		default:
			lines = append(lines, proven)
		}
	}
	if len(later) > 0 {
		lines = append(lines, fmt.Sprintf("enclave %s does not hold %s yet: before the first change, the cutover proves the API key the nodes will use on them too", e.enc.Name, quotedList(namesOf(later))))
	}
	return lines, risk, nil
}

// namesOf is the keys' names.
func namesOf(keys []neededKey) []string {
	names := make([]string, len(keys))
	for i, k := range keys {
		names[i] = k.name
	}
	return names
}

// askedOf says what proveAPIKey asks under keys: "a data key generated and
// decrypted under "a", "b"; a data key decrypted under "c"".
func askedOf(keys []neededKey) string {
	var both, dec []string
	for _, k := range keys {
		if k.decryptOnly {
			dec = append(dec, k.name)
		} else {
			both = append(both, k.name)
		}
	}
	var parts []string
	if len(both) > 0 {
		parts = append(parts, "a data key generated and decrypted under "+quotedList(both))
	}
	if len(dec) > 0 {
		parts = append(parts, "a data key decrypted under "+quotedList(dec)+" (named by objects only: MinIO only reads under such a key)")
	}
	return strings.Join(parts, "; ")
}

// quotedList is names quoted and joined with commas.
func quotedList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// apiKeyRefused is the Key Manager's refusal of the nodes' API key: its
// text (String) names no host, so that a plan's risk built from it is the
// same whichever Key Manager server answered (kms-go picks one at random).
type apiKeyRefused struct {
	id                   mtls.Identity
	asked, name, enclave string
	code                 int
	message              string
}

func (a *apiKeyRefused) String() string {
	return fmt.Sprintf("the Key Manager refuses the API key the cutover would write into every node (MINIO_KMS_API_KEY, identity %s) to %s under %q in enclave %s (%d: %s)", a.id, a.asked, a.name, a.enclave, a.code, a.message)
}

// proveAPIKey proves, without changing anything at the Key Manager, that it
// serves the API key the cutover writes into the nodes (MINIO_KMS_API_KEY)
// what MinIO asks with it under each of keys: a data key generated (32
// bytes, associated data "{}", as at MinIO's start-up) and decrypted again;
// under a key MinIO only reads with (decryptOnly), a data key the
// key_manager block's own identity generated, decrypted (MinIO internal/kms
// kms.go kmsConn; docs/domain.md, "What MinIO asks of the Key Manager").
// The key_manager block's own identity proves nothing of the API key: an
// identity deleted by hand since the identity step registered it, one
// registered in another enclave, or a User whose policy allows less, would
// be found only after every node restarted. It returns the plan's line, or
// the refusal (also as the error) when the Key Manager denies a request.
func (c *cutoverStep) proveAPIKey(ctx context.Context, r *engine.Run, e *cutoverEnv, keys []neededKey) (string, *apiKeyRefused, error) {
	key, err := mtls.ParsePrivateKey(c.cfg.APIKey)
	if err != nil {
		return "", nil, fmt.Errorf("parse the cutover's api_key: %w", err)
	}
	id := key.Identity()
	nodes, err := e.enc.KM.ClientAs(r, key)
	if err != nil {
		return "", nil, err
	}
	own, err := e.enc.KM.Client(r)
	if err != nil {
		return "", nil, err
	}
	for _, k := range keys {
		gen := nodes
		if k.decryptOnly {
			gen = own
		}
		asked, err := roundTripDataKey(ctx, gen, nodes, e.enc.Name, k.name)
		var status kms.Error
		switch {
		case err == nil:
			continue
		case asked != "" && errors.As(err, &status) && (status.Code == http.StatusForbidden || status.Code == http.StatusUnauthorized):
			ref := &apiKeyRefused{id: id, asked: asked, name: k.name, enclave: e.enc.Name, code: status.Code, message: status.Err}
			allow := "generating and decrypting"
			if k.decryptOnly {
				allow = "decrypting"
			}
			return "", ref, engine.RefuseWithHint(
				fmt.Sprintf("register identity %s in enclave %s as Admin (an identity block registers Admin unless admin = false), or assign it a policy that allows %s with key %q", id, e.enc.Name, allow, k.name),
				"%s: the identity is not registered in that enclave or may not use the key, and every node would restart onto a Key Manager that refuses it (nothing was changed, no node restarted)", ref)
		case asked == "":
			asked = "generate a data key with the key_manager block's own identity"
		}
		return "", nil, fmt.Errorf("prove the API key the nodes will use (identity %s): %s under %q in enclave %s: %w", id, asked, k.name, e.enc.Name, err)
	}
	return fmt.Sprintf("the API key the nodes will use (MINIO_KMS_API_KEY, identity %s) serves in enclave %s what MinIO asks: %s", id, e.enc.Name, askedOf(keys)), nil, nil
}

// roundTripDataKey asks gen to generate a data key under name and dec to
// decrypt it again, and checks the two agree. It returns what dec was
// asked last, for the caller's message ("" when gen, another client, failed).
func roundTripDataKey(ctx context.Context, gen, dec *kms.Client, enclave, name string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	ad := []byte("{}")
	asked := "generate a data key"
	if gen != dec {
		asked = ""
	}
	made, err := gen.GenerateKey(cctx, enclave, &kms.GenerateKeyRequest{Name: name, AssociatedData: ad, Length: 32})
	if err == nil && len(made) != 1 {
		err = fmt.Errorf("%d answers to one request", len(made))
	}
	if err != nil {
		return asked, err
	}
	asked = "decrypt a data key"
	plain, err := dec.Decrypt(cctx, enclave, &kms.DecryptRequest{Name: name, Ciphertext: made[0].Ciphertext, AssociatedData: ad})
	switch {
	case err != nil:
		return asked, err
	case len(plain) != 1:
		return asked, fmt.Errorf("%d answers to one request", len(plain))
	case !bytes.Equal(plain[0].Plaintext, made[0].Plaintext):
		return asked, errors.New("the data key decrypts to other bytes than were generated")
	}
	return asked, nil
}

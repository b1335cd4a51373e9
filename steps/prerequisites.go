package steps

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"
	"github.com/minio/kms-go/kms"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/atomicfile"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/parallel"
)

func init() {
	engine.Register(engine.BlockType{
		Name: "prerequisites",
		Kind: engine.KindStep,
		New:  func() engine.Block { return &prerequisites{} },
		Doc:  "checks KES, the Key Manager and AIStor before a migration; backs up the KES config and key store",
	})
}

// The prerequisites' durable state: every checkpoint it records.
var (
	// prerequisitesChecked: what the checks observed.
	prerequisitesChecked = engine.NewItem[prerequisitesState]("checked")
	// prerequisitesKeySet: the key names the step began from (the first
	// attempt's), kept in backups/.
	prerequisitesKeySet = engine.NewItem[keySetRecord]("key-set")
	// prerequisitesBackup: the KES config and key store backed up.
	prerequisitesBackup = engine.NewItem[backupRecord]("backup")
	// prerequisitesCreationHalted: the store holds exactly the key set the
	// step began from.
	prerequisitesCreationHalted = engine.NewItem[keySetSum]("creation-halted")
	// objectsRead: per "BUCKET/OBJECT", an encrypted object read in full.
	objectsRead = engine.NewFamily[objectRead]("object ")
)

// backupRecord is the data of prerequisitesBackup (fields in the order the
// journal has always held them).
type backupRecord struct {
	Config         string `json:"config"`
	Entries        int    `json:"entries"`
	Snapshot       string `json:"snapshot"`
	SnapshotSHA256 string `json:"snapshot_sha256"`
}

// keySetSum is the data of prerequisitesCreationHalted.
type keySetSum struct {
	Keys   int    `json:"keys"`
	SHA256 string `json:"sha256"`
}

// objectRead is the data of an objectsRead item.
type objectRead struct {
	Bytes int64  `json:"bytes"`
	SSE   string `json:"sse"`
}

var (
	_ engine.Step       = (*prerequisites)(nil)
	_ engine.Planner    = (*prerequisites)(nil)
	_ engine.Rollbacker = (*prerequisites)(nil)
	_ engine.Validator  = (*prerequisites)(nil)
)

const (
	// checkTimeout bounds each reachability check, so an unreachable server
	// fails in seconds instead of after the clients' own retries.
	checkTimeout = 20 * time.Second
	// defaultSampleObjects is how many encrypted objects apply reads.
	defaultSampleObjects = 5
	// maxScanObjects bounds how many objects apply looks at to find them.
	maxScanObjects = 500
)

// prerequisites checks, read-only at plan and again at apply, what the
// vendor's procedure checks by hand before a migration (docs/domain.md,
// "The vendor's procedure": "before" and steps 1, 2 and 5): KES and the Key Manager answer
// over verified TLS, their identities have the rights the migration needs,
// the object store answers to its admin credentials, and the KES config parses
// and its key store lists completely. Apply also backs up the KES config and
// a snapshot of the key store, confirms that no key was created while it ran
// (key creation halted), and reads a few encrypted objects.
type prerequisites struct {
	cfg prerequisitesConfig
}

type prerequisitesConfig struct {
	KES        cty.Value `hcl:"kes"`
	KeyManager cty.Value `hcl:"key_manager"`
	// AIStor is optional: a rehearsal may have no object store.
	AIStor cty.Value `hcl:"aistor,optional"`
	// SampleObjects is how many encrypted objects apply reads (default 5;
	// 0 keeps the default, a negative value disables the sampling).
	SampleObjects int `hcl:"sample_objects,optional"`
}

func (p *prerequisites) Config() any { return &p.cfg }

func (p *prerequisites) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("kes") {
		if _, _, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid kes reference", Detail: "kes must refer to a kes block, for example kes = kes.legacy: " + err.Error() + ".", Subject: d.AttrRange("kes")})
		}
	}
	if !d.Unknown("key_manager") {
		if _, _, err := engine.ConnectionFrom[*keyManagerConnection](p.cfg.KeyManager, "key_manager"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid key_manager reference", Detail: "key_manager must refer to a key_manager block, for example key_manager = key_manager.target: " + err.Error() + ".", Subject: d.AttrRange("key_manager")})
		}
	}
	if hasValue(p.cfg.AIStor) && !d.Unknown("aistor") {
		if _, _, err := engine.ConnectionFrom[*aistorConnection](p.cfg.AIStor, "aistor"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid aistor reference", Detail: "aistor must refer to an aistor block, for example aistor = aistor.prod: " + err.Error() + ".", Subject: d.AttrRange("aistor")})
		}
	}
	return diags
}

// hasValue reports whether an optional argument was given.
func hasValue(v cty.Value) bool { return v != cty.NilVal && !v.IsNull() }

// preflight is what the checks observed.
type preflight struct {
	observed []string
	risks    []string
	// names is the key store's complete listing, sorted.
	names   []string
	notKeys []problem // entries that are not keys (listKeyStore)
	digest  string
	ks      kesserver.KeyStore // the caller of check closes it
	conf    *kesconf.File
	km      *kms.Client
	s3      *minio.Client
	storeID string // "fs at /path", for messages
}

// prerequisitesState is the observed state a plan binds.
type prerequisitesState struct {
	KESServer        string `json:"kes_server,omitempty"`
	KESKeys          int    `json:"kes_keys"`
	KESKeySetSHA256  string `json:"kes_key_set_sha256"`
	KeyStore         string `json:"key_store"`
	KeyManager       string `json:"key_manager"`
	ObjectStore      string `json:"object_store,omitempty"`
	ObjectStoreKMS   string `json:"object_store_kms,omitempty"`
	KESServerVersion string `json:"kes_server_version,omitempty"`
	// KESKeyNames lets a stale plan name the keys created or deleted since.
	KESKeyNames []string `json:"kes_key_names"`
}

// keySetDigest is the SHA-256 of the sorted names, one per line.
func keySetDigest(sorted []string) string {
	h := sha256.New()
	for _, n := range sorted {
		io.WriteString(h, n)
		h.Write([]byte{'\n'})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// check runs every read-only check: KES, the Key Manager, the object store,
// the key store. They are independent, and each waits on a different server
// (or reads the key store), so they run at once: a check takes as long as
// its slowest phase, not the sum of their round trips. The plan describes
// them in that order, and the error is the first failure in it, as when
// they ran one after another; the error says what to fix.
func (p *prerequisites) check(ctx context.Context, r *engine.Run, st *prerequisitesState) (*preflight, error) {
	// Each phase writes its own part of pf and its own fields of st.
	var kes, km, objects, store preflight
	phases := []struct {
		part *preflight
		run  func(context.Context, *engine.Run, *preflight, *prerequisitesState) error
	}{{&kes, p.checkKES}, {&km, p.checkKeyManager}, {&objects, p.checkObjectStore}, {&store, p.checkKeyStore}}
	// A failure makes the phases after it moot (it is the error reported
	// unless one before it fails too): they are cancelled, so that it is
	// reported without waiting for them.
	errs := make([]error, len(phases))
	ctxs := make([]context.Context, len(phases))
	cancels := make([]context.CancelFunc, len(phases))
	for i := range phases {
		ctxs[i], cancels[i] = context.WithCancel(ctx)
		defer cancels[i]()
	}
	var wg sync.WaitGroup
	for i, ph := range phases {
		wg.Go(func() {
			if errs[i] = ph.run(ctxs[i], r, ph.part, st); errs[i] != nil {
				for _, later := range cancels[i+1:] {
					later()
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			if store.ks != nil {
				store.ks.Close()
			}
			return nil, err
		}
	}
	pf := &store
	pf.km, pf.s3 = km.km, objects.s3
	var observed, risks []string
	for _, ph := range phases {
		observed, risks = append(observed, ph.part.observed...), append(risks, ph.part.risks...)
	}
	pf.observed, pf.risks = observed, risks
	r.RecordInput("kes key set", pf.digest)
	return pf, nil
}

// checkKES: the KES server answers /version over verified TLS, is a
// generation the runbook works with, and lists keys for the identity.
func (p *prerequisites) checkKES(ctx context.Context, r *engine.Run, pf *preflight, st *prerequisitesState) error {
	k, kesAddr, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	if err != nil {
		return err
	}
	if !k.HasServer() {
		pf.observed = append(pf.observed, fmt.Sprintf("%s names no KES server: only its key store is checked", kesAddr))
		return nil
	}
	srv, acc, err := k.accessAt(ctx, r, kesAddr)
	if err != nil {
		return err
	}
	host := hostOf(k.Endpoint())
	pf.observed = append(pf.observed, fmt.Sprintf("KES server %s: version %s, %s, TLS verified%s; its identity may list keys; %s", host, srv.version, srv.generation, insecureNote(k.cfg.Insecure), acc.describe()))
	st.KESServer, st.KESServerVersion = host, srv.version
	return nil
}

// checkKeyManager: the Key Manager answers /version over verified TLS, and
// its identity is a SysAdmin.
func (p *prerequisites) checkKeyManager(ctx context.Context, r *engine.Run, pf *preflight, st *prerequisitesState) error {
	kmc, kmAddr, err := engine.ConnectionFrom[*keyManagerConnection](p.cfg.KeyManager, "key_manager")
	if err != nil {
		return err
	}
	client, err := kmc.Client(r)
	if err != nil {
		return fmt.Errorf("%s: %w", kmAddr, err)
	}
	pf.km = client
	endpoints := strings.Join(kmc.Endpoints(), ", ")
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	versions, err := client.Version(cctx, &kms.VersionRequest{})
	cancel()
	if err != nil {
		return reachError("Key Manager", kmAddr, endpoints, err)
	}
	cctx, cancel = context.WithTimeout(ctx, checkTimeout)
	_, err = client.ListEnclaves(cctx, &kms.ListRequest{Limit: 1})
	cancel()
	if err != nil {
		if errors.Is(err, kms.ErrPermission) {
			return errKMPermission(kmAddr, kmc, "list enclaves")
		}
		return reachError("Key Manager", kmAddr, endpoints, err)
	}
	var vs []string
	for _, v := range versions {
		vs = append(vs, v.Version)
	}
	pf.observed = append(pf.observed, fmt.Sprintf("Key Manager %s: version %s, TLS verified%s; its identity is a SysAdmin (may list enclaves)", endpoints, strings.Join(vs, ", "), insecureNote(kmc.cfg.Insecure)))
	st.KeyManager = strings.Join(kmc.Endpoints(), ",")
	return nil
}

// checkObjectStore: the object store, when given, answers its admin API to
// the credentials, and says which KMS it runs on.
func (p *prerequisites) checkObjectStore(ctx context.Context, r *engine.Run, pf *preflight, st *prerequisitesState) error {
	if !hasValue(p.cfg.AIStor) {
		return nil
	}
	a, aAddr, err := engine.ConnectionFrom[*aistorConnection](p.cfg.AIStor, "aistor")
	if err != nil {
		return err
	}
	admin, s3, err := a.Clients(r)
	if err != nil {
		return fmt.Errorf("%s: %w", aAddr, err)
	}
	pf.s3 = s3
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	info, err := admin.ServerInfo(cctx)
	cancel()
	if err != nil {
		var er madmin.ErrorResponse
		if errors.As(err, &er) && (er.Code == "AccessDenied" || er.Code == "InvalidAccessKeyId" || er.Code == "SignatureDoesNotMatch" || er.Code == "XMinioAdminAccessDenied") {
			return fmt.Errorf("%s: the object store %s refused its admin API to access_key %q (%s): give the root user or an access key with admin rights", aAddr, hostOf(a.Endpoint()), a.cfg.AccessKey, er.Message)
		}
		return reachError("object store", aAddr, a.Endpoint(), err)
	}
	cctx, cancel = context.WithTimeout(ctx, checkTimeout)
	kst, kerr := admin.KMSStatus(cctx)
	cancel()
	obs := fmt.Sprintf("object store %s: %d server(s), admin rights confirmed, %s", hostOf(a.Endpoint()), len(info.Servers), endpointTLSNote(a.Endpoint(), a.cfg.Insecure))
	st.ObjectStore = hostOf(a.Endpoint())
	if kerr != nil {
		obs += "; its KMS status is not available (" + r.Redact(kerr.Error()) + ")"
		pf.risks = append(pf.risks, kmsStatusRisk(r, kerr))
	} else {
		var eps []string
		for ep, state := range kst.Endpoints {
			eps = append(eps, ep+" "+string(state))
		}
		sort.Strings(eps)
		obs += fmt.Sprintf("; its KMS is %q (default key %q; %s)", kst.Name, kst.DefaultKeyID, strings.Join(eps, ", "))
		st.ObjectStoreKMS = kst.Name
	}
	pf.observed = append(pf.observed, obs)
	return nil
}

// checkKeyStore: the KES config parses, and its key store lists completely
// and is sorted into keys and what is not (listKeyStore).
func (p *prerequisites) checkKeyStore(ctx context.Context, r *engine.Run, pf *preflight, st *prerequisitesState) error {
	k, kesAddr, err := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	if err != nil {
		return err
	}
	ks, conf, err := k.OpenKeyStore(ctx, r)
	if err != nil {
		return fmt.Errorf("%s: %w", kesAddr, err)
	}
	l, err := listKeyStore(ctx, r, k, ks, conf)
	if err != nil {
		return fmt.Errorf("%s: read the key store named in %s: %w", kesAddr, k.ConfigFile(r), err)
	}
	pf.ks, pf.conf, pf.names, pf.notKeys = ks, conf, l.Keys, l.NotKeys
	pf.digest = keySetDigest(l.Keys)
	pf.storeID = keystore.Describe(conf)
	pf.observed = append(pf.observed, fmt.Sprintf("KES config %s parses; key store %s lists %d key(s) (key set SHA-256 %s), listed completely and %s", k.ConfigFile(r), pf.storeID, len(l.Keys), pf.digest[:16], l.Check))
	if len(l.NotKeys) > 0 {
		pf.observed = append(pf.observed, fmt.Sprintf("%s (%d), left out by every step and of the snapshot: %s", groupNotKeys, len(l.NotKeys), strings.Join(describeProblems(l.NotKeys), "; ")))
	}
	if line := foreignObserved(k, l.Foreign); line != "" {
		pf.observed = append(pf.observed, line)
	}
	if risk := foreignRisk(conf, l); risk != "" {
		pf.risks = append(pf.risks, risk)
	}
	st.KESKeys, st.KESKeySetSHA256, st.KeyStore, st.KESKeyNames = len(l.Keys), pf.digest, pf.storeID, l.Keys
	return nil
}

func (p *prerequisites) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	var st prerequisitesState
	pf, err := p.check(ctx, r, &st)
	if err != nil {
		return nil, err
	}
	pf.ks.Close()
	actions := []string{
		"check again that KES, the Key Manager and the object store answer as observed",
		fmt.Sprintf("back up the KES config and a snapshot of the key store (%d entries) into the journal dir's backups/ (0600)", len(pf.names)),
		"confirm that no key was created or deleted at the key store while the step runs (key creation halted)",
	}
	if hasValue(p.cfg.AIStor) && p.sample() > 0 {
		actions = append(actions, fmt.Sprintf("read up to %d encrypted objects to confirm encrypted data reads before the migration", p.sample()))
	}
	return &engine.StepPlan{
		Observed: pf.observed,
		Actions:  actions,
		Rollback: "nothing to undo (the backups stay in the journal dir)",
		Risks:    pf.risks,
		State:    st,
	}, nil
}

func (p *prerequisites) sample() int {
	if p.cfg.SampleObjects == 0 {
		return defaultSampleObjects
	}
	return p.cfg.SampleObjects
}

// keySetRecord is the checkpoint of the key set the step started from.
type keySetRecord struct {
	Keys   int    `json:"keys"`
	SHA256 string `json:"sha256"`
	File   string `json:"file"`
}

// Apply checks again, records the key set the step starts from, backs up
// the KES config and the key store, reads a few encrypted objects, and
// confirms that no key was created or deleted meanwhile. On resume it takes
// the key set the first attempt recorded.
func (p *prerequisites) Apply(ctx context.Context, r *engine.Run) error {
	var st prerequisitesState
	pf, err := p.check(ctx, r, &st)
	if err != nil {
		return err
	}
	defer pf.ks.Close()
	for _, o := range pf.observed {
		r.Logf("%s", o)
	}
	for _, o := range pf.risks {
		r.Warnf("%s", o)
	}
	st.KESKeyNames = nil // kept in backups/, not in the journal
	if err := prerequisitesChecked.Put(r, st); err != nil {
		return err
	}
	baseline, err := p.keySet(r, pf)
	if err != nil {
		return err
	}
	if err := p.backUp(ctx, r, pf); err != nil {
		return err
	}
	if pf.s3 != nil && p.sample() > 0 { // encrypted data reads now, through KES
		if err := p.sampleObjects(ctx, r, pf.s3); err != nil {
			return err
		}
	}
	return p.creationHalted(ctx, r, pf, baseline)
}

// keySet is the key set this step started from: recorded in backups/ now,
// or the first attempt's on resume, so that a key created between attempts
// is caught too.
func (p *prerequisites) keySet(r *engine.Run, pf *preflight) ([]string, error) {
	if rec, ok, err := prerequisitesKeySet.Get(r); err != nil || ok {
		if err != nil {
			return nil, err
		}
		return readNameList(rec.File, rec.SHA256)
	}
	path, err := r.BackupPath("kes-key-names.txt")
	if err != nil {
		return nil, err
	}
	if err := engine.WriteFileAtomic(path, []byte(strings.Join(pf.names, "\n")+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("back up the key names: %w", err)
	}
	return pf.names, prerequisitesKeySet.Put(r, keySetRecord{Keys: len(pf.names), SHA256: pf.digest, File: path})
}

// backUp copies the KES config as it is, and a snapshot of the key store's
// KES keys (snapshotKeyStore), into backups/ (0600).
func (p *prerequisites) backUp(ctx context.Context, r *engine.Run, pf *preflight) error {
	k, _, _ := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	raw, err := r.ReadFile(k.cfg.Config)
	if err != nil {
		return fmt.Errorf("read KES config: %w", err)
	}
	cfgBackup, err := r.BackupPath("kes-config.yaml")
	if err != nil {
		return err
	}
	if err := engine.WriteFileAtomic(cfgBackup, raw, 0o600); err != nil {
		return fmt.Errorf("back up KES config: %w", err)
	}
	snapPath, err := r.BackupPath("keystore.tar")
	if err != nil {
		return err
	}
	n, sum, err := snapshotKeyStore(ctx, r, judged(r, k, pf.conf), pf.ks, pf.names, snapPath)
	if err != nil {
		return err
	}
	r.Logf("backed up the KES config to %s and %d key store entries to %s", cfgBackup, n, snapPath)
	return prerequisitesBackup.Put(r, backupRecord{Config: cfgBackup, Snapshot: snapPath, Entries: n, SnapshotSHA256: sum})
}

// creationHalted confirms that the store holds exactly the keys it held
// when the step began (and, through the plan's fingerprint, when the plan
// was made). Other applications' secrets come and go unjudged.
func (p *prerequisites) creationHalted(ctx context.Context, r *engine.Run, pf *preflight, baseline []string) error {
	k, _, _ := engine.ConnectionFrom[*kesConnection](p.cfg.KES, "kes")
	nowListing, err := listKeyStore(ctx, r, k, pf.ks, pf.conf)
	if err != nil {
		return fmt.Errorf("list the key store again: %w", err)
	}
	now := nowListing.Keys
	removed, added := keystore.Diff(baseline, now)
	if len(added) > 0 {
		return fmt.Errorf("key %s was created at KES during the migration window: halt key creation first (%d key(s) appeared since this step began: %s)", added[0], len(added), keystore.NameList(added, 5))
	}
	if len(removed) > 0 {
		return fmt.Errorf("key %s was deleted at KES during the migration window: halt key changes first (%d key(s) disappeared since this step began: %s)", removed[0], len(removed), keystore.NameList(removed, 5))
	}
	return prerequisitesCreationHalted.Put(r, keySetSum{Keys: len(now), SHA256: keySetDigest(now)})
}

// sampleObjects reads a few SSE-S3 and SSE-KMS objects through the object
// store. SSE-C objects are counted and left out: their keys are the
// clients' own and never touch a KMS. An object that does not read is a
// fault that predates the migration, which the migration cannot mend: it
// is named with its key as a warning (the cutover refuses until it is
// fixed or excluded), not blamed on KES.
func (p *prerequisites) sampleObjects(ctx context.Context, r *engine.Run, s3 *minio.Client) error {
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return fmt.Errorf("list buckets: %w", err)
	}
	read, scanned, ssec := 0, 0, 0
	var faults []string
	for _, b := range buckets {
		if read >= p.sample() || scanned >= maxScanObjects {
			break
		}
		lctx, cancel := context.WithCancel(ctx)
		for obj := range s3.ListObjects(lctx, b.Name, minio.ListObjectsOptions{Recursive: true, WithMetadata: true}) {
			if obj.Err != nil {
				cancel()
				return fmt.Errorf("list objects of bucket %s: %w", b.Name, obj.Err)
			}
			if read >= p.sample() || scanned >= maxScanObjects {
				break
			}
			scanned++
			sse, key := listedSSE(obj.UserMetadata)
			switch sse {
			case "":
				continue
			case "SSE-C":
				ssec++
				continue
			}
			o, err := s3.GetObject(ctx, b.Name, obj.Key, minio.GetObjectOptions{})
			var n int64
			if err == nil {
				n, err = io.Copy(io.Discard, o)
				o.Close()
			}
			if err != nil {
				if ctx.Err() != nil {
					cancel()
					return ctx.Err()
				}
				if key == "" {
					key = "the default key at the time it was written"
				}
				faults = append(faults, fmt.Sprintf("%s/%s (%s, key %s): %v", b.Name, obj.Key, sse, key, err))
				continue
			}
			read++
			if err := objectsRead.Item(b.Name+"/"+obj.Key).Put(r, objectRead{SSE: sse, Bytes: n}); err != nil {
				cancel()
				return err
			}
		}
		cancel()
	}
	if ssec > 0 {
		r.Logf("%d SSE-C object(s) left out: they are encrypted with the clients' own keys and never touch a KMS", ssec)
	}
	if len(faults) > 0 {
		r.Warnf("%d encrypted object(s) do not read through KES before the migration, a fault that predates it and that it cannot mend: %s; the cutover refuses until each is fixed or listed in its exclude_objects", len(faults), strings.Join(faults, "; "))
	}
	if read == 0 {
		r.Warnf("no encrypted object read (looked at %d object(s)): encrypted data could not be confirmed to read", scanned)
		return nil
	}
	r.Logf("read %d encrypted object(s) in full (looked at %d)", read, scanned)
	return nil
}

func (p *prerequisites) Rollback(_ context.Context, r *engine.Run) error {
	r.Logf("nothing to undo: the checks changed nothing; the backups stay in %s", filepath.Join(r.JournalDir(), "backups"))
	return nil
}

// snapshotKeyStore writes every entry of names (the listing's keys, broken
// ones too) raw as stored into a tar archive at path (0600), streaming,
// atomically (atomicfile). A value that is not a KES key (another
// application's secret written there since the listing) is never written.
// A value the quiet plan of this apply read is taken from held (takeValue).
// It returns the entries written and the archive's SHA-256.
func snapshotKeyStore(ctx context.Context, r *engine.Run, held *keystore.Verdicts, ks kesserver.KeyStore, names []string, path string) (int, string, error) {
	f, err := atomicfile.Create(path, 0o600)
	if err != nil {
		return 0, "", fmt.Errorf("create key store snapshot: %w", err)
	}
	defer f.Abort()
	h := sha256.New()
	out := newWipedBuffer(f, snapshotBuffer)
	defer out.wipe()
	tw := tar.NewWriter(io.MultiWriter(out, h))
	now := time.Now().UTC().Truncate(time.Second)
	written := 0
	// Read snapshotChunk entries at once (readParallelismOf reads in
	// flight: one at a time, the snapshot took as long as the migration),
	// then write them in order; values are wiped as soon as written.
	vals := make([][]byte, snapshotChunk)
	keep := make([]bool, snapshotChunk) // an empty value is kept too
	for lo := 0; lo < len(names); lo += snapshotChunk {
		chunk := names[lo:min(len(names), lo+snapshotChunk)]
		err := parallel.ForEach(ctx, readParallelismOf(ks), len(chunk), func(ctx context.Context, i int) error {
			raw, isHeld, err := takeValue(ctx, held, ks, chunk[i])
			if unreadableEntryReason(err) != "" {
				return nil // KES cannot read it either: migration names it
			}
			if err != nil {
				return fmt.Errorf("snapshot key %q: %w", chunk[i], err)
			}
			if !isHeld && keystore.Foreign(raw) { // a held value is a key
				clear(raw) // another application's secret since the listing: never copied
				return nil
			}
			vals[i], keep[i] = raw, true
			return nil
		})
		if err != nil {
			for _, v := range vals {
				clear(v)
			}
			return 0, "", err
		}
		for i, name := range chunk {
			raw, ok := vals[i], keep[i]
			vals[i], keep[i] = nil, false
			if !ok {
				continue
			}
			err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(raw)), ModTime: now, Typeflag: tar.TypeReg, Format: tar.FormatPAX})
			if err == nil {
				_, err = tw.Write(raw)
			}
			clear(raw)
			if err != nil {
				for _, v := range vals {
					clear(v)
				}
				return 0, "", fmt.Errorf("write key store snapshot: %w", err)
			}
			written++
		}
		r.Progress(int64(lo+len(chunk)), int64(len(names)))
	}
	if err := tw.Close(); err != nil {
		return 0, "", fmt.Errorf("write key store snapshot: %w", err)
	}
	if err := out.flush(); err != nil {
		return 0, "", fmt.Errorf("write key store snapshot: %w", err)
	}
	if err := f.Commit(); err != nil {
		return 0, "", fmt.Errorf("store key store snapshot: %w", err)
	}
	return written, hex.EncodeToString(h.Sum(nil)), nil
}

const (
	// snapshotChunk is how many key store entries the snapshot reads
	// before it writes them.
	snapshotChunk = 256
	// snapshotBuffer is how many bytes of the snapshot are gathered into
	// one write: the tar writer writes each header, value and padding
	// apart, three system calls per key (a tenth of the runbook's CPU at
	// 1,000 keys, profiled).
	snapshotBuffer = 64 << 10
)

// wipedBuffer gathers small writes into writes of up to its size, like
// bufio.Writer, and clears its bytes after each: what it gathers are key
// values, wiped everywhere else as soon as they are written.
type wipedBuffer struct {
	w   io.Writer
	buf []byte
}

func newWipedBuffer(w io.Writer, size int) *wipedBuffer {
	return &wipedBuffer{w: w, buf: make([]byte, 0, size)}
}

func (b *wipedBuffer) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > cap(b.buf) {
		if err := b.flush(); err != nil {
			return 0, err
		}
		if len(p) > cap(b.buf) {
			return b.w.Write(p)
		}
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}

// flush writes what the buffer holds and wipes it.
func (b *wipedBuffer) flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.wipe()
	return err
}

// wipe clears what the buffer holds without writing it (a failed snapshot).
func (b *wipedBuffer) wipe() {
	clear(b.buf)
	b.buf = b.buf[:0]
}

// readNameList reads a key-name list this step wrote and checks its digest.
func readNameList(path, digest string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read the key names recorded by an earlier attempt: %w", err)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if l != "" {
			names = append(names, l)
		}
	}
	if keySetDigest(names) != digest {
		return nil, fmt.Errorf("the key names recorded by an earlier attempt (%s) do not match the journal's digest: the file was changed; restore it or start a new run", path)
	}
	return names, nil
}

func insecureNote(insecure bool) string {
	if insecure {
		return " (NOT verified: insecure = true)"
	}
	return ""
}

package emulator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	"github.com/runbook-dev/runbook/internal/atomicfile"
	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// The state is kept in memory and persisted as an append-only log of
// JSON records (one per line) in Dir/state.log. Every mutation is applied
// through the same apply function at run time and on replay at Start, so
// what is on disk is exactly what was applied. Records are written
// without fsync (the OS page cache survives a process crash, not a power
// loss); Close syncs the log. At Start a log with many superseded records
// is compacted (written to a temporary file, synced, renamed).
const stateFile = "state.log"

type identity struct {
	ID             mtls.Identity
	Privilege      kms.Privilege
	Policy         string
	ServiceAccount bool
	Tags           map[string]string
	CreatedAt      time.Time
	CreatedBy      mtls.Identity
}

type keyVersion struct {
	Version  int
	Key      kescrypto.Key // carries type, material, created_at, created_by
	Imported bool
}

type keyRing struct {
	versions []*keyVersion // ascending by Version; never empty
	next     int           // next version number
}

func (r *keyRing) latest() *keyVersion { return r.versions[len(r.versions)-1] }

func (r *keyRing) version(v int) *keyVersion {
	if v == 0 {
		return r.latest()
	}
	for _, kv := range r.versions {
		if kv.Version == v {
			return kv
		}
	}
	return nil
}

type policy struct {
	Name      string
	Allow     map[cmds.Command][]string
	Deny      map[cmds.Command][]string
	CreatedAt time.Time
	CreatedBy mtls.Identity
}

type enclave struct {
	Name       string
	CreatedAt  time.Time
	CreatedBy  mtls.Identity
	keys       map[string]*keyRing
	keyNames   []string // sorted names of keys, valid unless keysDirty
	keysDirty  bool
	identities map[mtls.Identity]*identity
	policies   map[string]*policy
	// deleted holds the names of keys deleted entirely. Whether such a
	// name may be imported or created again is a reading of the protocol
	// (Readings.DeletedNames); the fact is kept either way.
	deleted map[string]bool
}

func (e *enclave) sortedKeys() []string {
	if e.keysDirty || len(e.keyNames) != len(e.keys) {
		e.keyNames = sortedMapKeys(e.keys)
		e.keysDirty = false
	}
	return e.keyNames
}

func sortedMapKeys[T any](m map[string]T) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

type state struct {
	mu        sync.Mutex
	root      mtls.Identity
	sysadmins map[mtls.Identity]*identity // global (non-root) SysAdmin identities
	enclaves  map[string]*enclave

	log     *os.File
	records int // records in the log
}

// record is one mutation in the state log.
type record struct {
	Op      string              `json:"op"`
	Enclave string              `json:"e,omitempty"`
	Name    string              `json:"n,omitempty"`
	Version int                 `json:"v,omitempty"`
	Type    string              `json:"t,omitempty"`
	Key     []byte              `json:"k,omitempty"`
	HMAC    []byte              `json:"h,omitempty"`
	Import  bool                `json:"imp,omitempty"`
	ID      string              `json:"id,omitempty"`
	Priv    int                 `json:"priv,omitempty"`
	Policy  string              `json:"pol,omitempty"`
	SA      bool                `json:"sa,omitempty"`
	Tags    map[string]string   `json:"tags,omitempty"`
	Allow   map[string][]string `json:"allow,omitempty"`
	Deny    map[string][]string `json:"deny,omitempty"`
	At      time.Time           `json:"at,omitzero"`
	By      string              `json:"by,omitempty"`
}

const (
	opEnclaveCreate  = "enclave.create"
	opEnclaveDelete  = "enclave.delete"
	opKeyAdd         = "key.add"    // add key version rec.Version
	opKeyDelete      = "key.delete" // delete version rec.Version, or the whole key if 0
	opIdentityPut    = "identity.put"
	opIdentityDelete = "identity.delete"
	opPolicyPut      = "policy.put"
	opPolicyDelete   = "policy.delete"
	opKeyTombstone   = "key.tombstone" // snapshot only: a name deleted earlier
)

func newState(root mtls.Identity) *state {
	return &state{
		root:      root,
		sysadmins: map[mtls.Identity]*identity{},
		enclaves:  map[string]*enclave{},
	}
}

// open replays the log in dir and opens it for appending.
func (s *state) open(dir string) error {
	name := filepath.Join(dir, stateFile)
	data, err := os.ReadFile(name)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	good := 0 // length of the prefix of data made of complete, valid records
	for line := 1; good < len(data); line++ {
		i := bytes.IndexByte(data[good:], '\n')
		if i < 0 { // torn final record from a crash: drop it
			break
		}
		var rec record
		if err := json.Unmarshal(data[good:good+i], &rec); err != nil {
			return fmt.Errorf("emulator: %s line %d: corrupt record: %v", name, line, err)
		}
		if _, err := s.apply(&rec); err != nil {
			return fmt.Errorf("emulator: %s line %d: %v", name, line, err)
		}
		s.records++
		good += i + 1
	}

	if s.records > 1000 && s.records > 2*s.liveObjects() {
		return s.compact(dir)
	}
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(int64(good)); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Seek(int64(good), io.SeekStart); err != nil {
		f.Close()
		return err
	}
	s.log = f
	return nil
}

func (s *state) liveObjects() int {
	n := len(s.sysadmins) + len(s.enclaves)
	for _, e := range s.enclaves {
		n += len(e.identities) + len(e.policies) + len(e.deleted)
		for _, r := range e.keys {
			n += len(r.versions)
		}
	}
	return n
}

// snapshot returns records that recreate the current state.
func (s *state) snapshot() []*record {
	var recs []*record
	for _, id := range s.sysadmins {
		recs = append(recs, identityRecord("", id))
	}
	for _, name := range sortedMapKeys(s.enclaves) {
		e := s.enclaves[name]
		recs = append(recs, &record{Op: opEnclaveCreate, Name: e.Name, At: e.CreatedAt, By: e.CreatedBy.String()})
		for _, p := range e.policies {
			recs = append(recs, policyRecord(name, p))
		}
		for _, id := range e.identities {
			recs = append(recs, identityRecord(name, id))
		}
		for _, kn := range e.sortedKeys() {
			for _, kv := range e.keys[kn].versions {
				recs = append(recs, keyRecord(name, kn, kv))
			}
		}
		for _, kn := range sortedMapKeys(e.deleted) {
			recs = append(recs, &record{Op: opKeyTombstone, Enclave: name, Name: kn, By: e.CreatedBy.String()})
		}
	}
	return recs
}

func (s *state) compact(dir string) error {
	var buf bytes.Buffer
	recs := s.snapshot()
	for _, rec := range recs {
		b, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	name := filepath.Join(dir, stateFile)
	if err := atomicfile.WriteFile(name, buf.Bytes(), 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	s.log, s.records = f, len(recs)
	return nil
}

func (s *state) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return nil
	}
	err := s.log.Sync()
	if cerr := s.log.Close(); err == nil {
		err = cerr
	}
	s.log = nil
	return err
}

// tx is the writes of one request: each record is applied to the state at
// once (later commands of the request see earlier ones) and written to the
// log together at the end. s.mu is held from begin to end.
type tx struct {
	s     *state
	buf   []byte
	n     int      // records in buf
	undos []func() // in the order applied
}

func (s *state) begin() *tx { return &tx{s: s} }

// apply validates nothing: the command's check did. It fails only when the
// server is shutting down or the record cannot be encoded.
func (t *tx) apply(rec *record) error {
	if t.s.log == nil {
		return kms.Error{Code: 503, Err: "emulator: server is shutting down"}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return kms.Error{Code: 500, Err: "emulator: cannot encode state record"}
	}
	undo, err := t.s.apply(rec)
	if err != nil {
		return kms.Error{Code: 500, Err: "emulator: " + err.Error()}
	}
	t.buf = append(append(t.buf, b...), '\n')
	t.n++
	t.undos = append(t.undos, undo)
	return nil
}

// rollback undoes every write of the request, newest first.
func (t *tx) rollback() {
	for i := len(t.undos) - 1; i >= 0; i-- {
		t.undos[i]()
	}
	t.buf, t.n, t.undos = nil, 0, nil
}

// commit writes the applied records to the log in one write. If that
// fails, the writes are undone and the error is returned.
func (t *tx) commit() error {
	if t.n == 0 {
		return nil
	}
	if _, err := t.s.log.Write(t.buf); err != nil {
		t.rollback()
		return kms.Error{Code: 500, Err: "emulator: cannot write state: " + err.Error()}
	}
	t.s.records += t.n
	return nil
}

func keyRecord(enclave, name string, kv *keyVersion) *record {
	return &record{Op: opKeyAdd, Enclave: enclave, Name: name, Version: kv.Version, Type: kv.Key.Algorithm.String(),
		Key: kv.Key.Material, HMAC: kv.Key.HMAC, Import: kv.Imported, At: kv.Key.CreatedAt, By: kv.Key.CreatedBy}
}

func identityRecord(enclave string, id *identity) *record {
	return &record{Op: opIdentityPut, Enclave: enclave, ID: id.ID.String(), Priv: int(id.Privilege), Policy: id.Policy,
		SA: id.ServiceAccount, Tags: id.Tags, At: id.CreatedAt, By: id.CreatedBy.String()}
}

func policyRecord(enclave string, p *policy) *record {
	conv := func(m map[cmds.Command][]string) map[string][]string {
		out := make(map[string][]string, len(m))
		for c, pats := range m {
			out[c.String()] = pats
		}
		return out
	}
	return &record{Op: opPolicyPut, Enclave: enclave, Name: p.Name, Allow: conv(p.Allow), Deny: conv(p.Deny), At: p.CreatedAt, By: p.CreatedBy.String()}
}

// apply applies rec to the state and returns a function that undoes it
// (a request answered under the atomic reading undoes its earlier writes).
func (s *state) apply(rec *record) (undo func(), err error) {
	by, err := mtls.ParseIdentity(rec.By)
	if err != nil {
		return nil, fmt.Errorf("invalid identity %q", rec.By)
	}
	if rec.Op == opEnclaveCreate {
		if _, ok := s.enclaves[rec.Name]; ok {
			return nil, fmt.Errorf("enclave %q already exists", rec.Name)
		}
		s.enclaves[rec.Name] = &enclave{
			Name: rec.Name, CreatedAt: rec.At, CreatedBy: by,
			keys:       map[string]*keyRing{},
			identities: map[mtls.Identity]*identity{},
			policies:   map[string]*policy{},
			deleted:    map[string]bool{},
		}
		return func() { delete(s.enclaves, rec.Name) }, nil
	}
	if rec.Op == opEnclaveDelete {
		old := s.enclaves[rec.Name]
		delete(s.enclaves, rec.Name)
		return func() {
			if old != nil {
				s.enclaves[rec.Name] = old
			}
		}, nil
	}
	if rec.Enclave == "" && (rec.Op == opIdentityPut || rec.Op == opIdentityDelete) {
		return s.applyIdentity(rec, by, s.sysadmins)
	}
	e, ok := s.enclaves[rec.Enclave]
	if !ok {
		return nil, fmt.Errorf("%s: enclave %q does not exist", rec.Op, rec.Enclave)
	}
	switch rec.Op {
	case opKeyAdd:
		alg, err := kescrypto.ParseAlgorithm(rec.Type)
		if err != nil {
			return nil, err
		}
		kv := &keyVersion{Version: rec.Version, Imported: rec.Import, Key: kescrypto.Key{
			Algorithm: alg, Material: rec.Key, HMAC: rec.HMAC, CreatedAt: rec.At, CreatedBy: rec.By,
		}}
		if len(rec.Key) != kescrypto.KeySize || rec.Version <= 0 {
			return nil, fmt.Errorf("invalid key record for %q", rec.Name)
		}
		r, ok := e.keys[rec.Name]
		if !ok {
			r = &keyRing{}
		}
		if n := len(r.versions); n > 0 && r.versions[n-1].Version >= rec.Version {
			return nil, fmt.Errorf("key %q: version %d is not newer than %d", rec.Name, rec.Version, r.versions[n-1].Version)
		}
		oldVersions, oldNext := r.versions, r.next
		// A new slice: readers outside the lock hold the old one.
		r.versions = append(slices.Clip(r.versions), kv)
		r.next = rec.Version + 1
		if ok {
			return func() { r.versions, r.next = oldVersions, oldNext }, nil
		}
		e.keys[rec.Name] = r
		e.keysDirty = true
		return func() { delete(e.keys, rec.Name); e.keysDirty = true }, nil
	case opKeyDelete:
		r, ok := e.keys[rec.Name]
		if !ok {
			return nil, fmt.Errorf("key %q does not exist", rec.Name)
		}
		oldVersions, wasDeleted := r.versions, e.deleted[rec.Name]
		if rec.Version != 0 {
			r.versions = slices.DeleteFunc(slices.Clone(r.versions), func(kv *keyVersion) bool { return kv.Version == rec.Version })
		}
		if rec.Version != 0 && len(r.versions) > 0 {
			return func() { r.versions = oldVersions }, nil
		}
		delete(e.keys, rec.Name)
		e.keysDirty = true
		e.deleted[rec.Name] = true
		return func() {
			r.versions = oldVersions
			e.keys[rec.Name] = r
			e.keysDirty = true
			if !wasDeleted {
				delete(e.deleted, rec.Name)
			}
		}, nil
	case opKeyTombstone:
		e.deleted[rec.Name] = true
		return func() { delete(e.deleted, rec.Name) }, nil
	case opIdentityPut, opIdentityDelete:
		return s.applyIdentity(rec, by, e.identities)
	case opPolicyPut:
		p := &policy{Name: rec.Name, CreatedAt: rec.At, CreatedBy: by, Allow: map[cmds.Command][]string{}, Deny: map[cmds.Command][]string{}}
		for dst, src := range map[*map[cmds.Command][]string]map[string][]string{&p.Allow: rec.Allow, &p.Deny: rec.Deny} {
			for name, pats := range src {
				c, err := cmds.Parse(name)
				if err != nil {
					return nil, err
				}
				(*dst)[c] = pats
			}
		}
		old, had := e.policies[rec.Name]
		e.policies[rec.Name] = p
		return func() {
			if had {
				e.policies[rec.Name] = old
			} else {
				delete(e.policies, rec.Name)
			}
		}, nil
	case opPolicyDelete:
		old := e.policies[rec.Name]
		delete(e.policies, rec.Name)
		var unassigned []*identity
		for _, id := range e.identities {
			if id.Policy == rec.Name {
				id.Policy = ""
				unassigned = append(unassigned, id)
			}
		}
		return func() {
			if old != nil {
				e.policies[rec.Name] = old
			}
			for _, id := range unassigned {
				id.Policy = rec.Name
			}
		}, nil
	}
	return nil, fmt.Errorf("unknown record %q", rec.Op)
}

func (s *state) applyIdentity(rec *record, by mtls.Identity, ids map[mtls.Identity]*identity) (undo func(), err error) {
	id, err := mtls.ParseIdentity(rec.ID)
	if err != nil || id.IsZero() {
		return nil, fmt.Errorf("invalid identity %q", rec.ID)
	}
	removed := map[mtls.Identity]*identity{}
	if old, ok := ids[id]; ok {
		removed[id] = old
	}
	restore := func() {
		delete(ids, id)
		for k, v := range removed {
			ids[k] = v
		}
	}
	if rec.Op == opIdentityDelete {
		delete(ids, id)
		for sa, v := range ids { // service accounts go with their parent
			if v.ServiceAccount && v.CreatedBy == id {
				removed[sa] = v
				delete(ids, sa)
			}
		}
		return restore, nil
	}
	ids[id] = &identity{
		ID: id, Privilege: kms.Privilege(rec.Priv), Policy: rec.Policy, ServiceAccount: rec.SA,
		Tags: rec.Tags, CreatedAt: rec.At, CreatedBy: by,
	}
	return restore, nil
}

// paginate returns the page of sorted names that start with prefix,
// beginning at continueAt (inclusive), of at most limit names for which
// keep reports true, and the name the next page starts at ("" at the end).
// A continueAt outside prefix gives an empty page; one inside it that names
// no element is refused (kms-go request.go ListRequest: "ContinueAt must
// match an element's name exactly"), so that a client which passes back
// anything but the name it was given (the kes migrate bug class) fails
// loudly instead of listing from the wrong place.
func paginate(names []string, prefix, continueAt string, limit int, keep func(string) bool) (page []string, next string, err error) {
	start := prefix
	i := sort.SearchStrings(names, start)
	if continueAt != "" {
		if !strings.HasPrefix(continueAt, prefix) {
			return nil, "", nil
		}
		i = sort.SearchStrings(names, continueAt)
		if i == len(names) || names[i] != continueAt {
			return nil, "", badRequest("invalid list request: continue_at '" + continueAt + "' names no element")
		}
	}
	for ; i < len(names) && strings.HasPrefix(names[i], prefix); i++ {
		if keep != nil && !keep(names[i]) {
			continue
		}
		if len(page) == limit {
			return page, names[i], nil
		}
		page = append(page, names[i])
	}
	return page, "", nil
}

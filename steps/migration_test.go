package steps

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/minio/kes/kesconf"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func TestKMNameProblem(t *testing.T) {
	t.Parallel()
	for name, bad := range map[string]bool{
		"key-00001": false, "minio_default": false, "a.b": false, strings.Repeat("k", 1025): false,
		"a/b": false, `a\b`: false, "a\nb": false, // no rule the vendor states
		"": true, string([]byte{0xff}): true,
	} {
		if got := kmNameProblem(name) != ""; got != bad {
			t.Errorf("kmNameProblem(%q) rejects = %v, want %v", name, got, bad)
		}
	}
}

func TestTransient(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		err  error
		want bool
	}{
		{kms.Error{Code: 503, Err: "injected fault"}, true},
		{kms.Error{Code: 500, Err: "internal"}, true},
		{kms.ErrPermission, false},
		{kms.ErrEnclaveNotFound, false},
		{kms.ErrKeyExists, false},
		{kms.ErrDecrypt, false},
		{&kms.HostError{Host: "h", Err: kms.Error{Code: 503, Err: "x"}}, true},
		{&kms.HostError{Host: "h", Err: kms.ErrPermission}, false},
		{&net.OpError{Op: "read", Err: io.EOF}, true},
		{io.ErrUnexpectedEOF, true},
		{context.Canceled, false},
	} {
		if got := transient(c.err); got != c.want {
			t.Errorf("transient(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// migrationEnv is an fs key store and an in-process emulator with an enclave.
type migrationEnv struct {
	dir     string
	src     *sourceSet
	c       *kms.Client
	enclave string
	keys    map[string]kescrypto.Key
}

// writeKESKeys writes n random keys into an fs key store as KES v0.24
// stores them (key-000, …; every other one ChaCha20) and returns them by
// name.
func writeKESKeys(t testing.TB, store string, n int) map[string]kescrypto.Key {
	t.Helper()
	keys := map[string]kescrypto.Key{}
	for i := range n {
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}
		if i%2 == 1 {
			k.Algorithm = kescrypto.ChaCha20
		}
		rand.Read(k.Material)
		rand.Read(k.HMAC)
		b, err := k.MarshalV024()
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("key-%03d", i)
		if err := os.WriteFile(filepath.Join(store, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
		keys[name] = k
	}
	return keys
}

// newMigrationEnv makes n keys and an emulator playing readings (default:
// the most demanding).
func newMigrationEnv(t testing.TB, n int, readings ...emulator.Readings) *migrationEnv {
	t.Helper()
	dir := t.TempDir()
	store := filepath.Join(dir, "keys")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	env := &migrationEnv{dir: store, enclave: "e", keys: writeKESKeys(t, store, n)}
	var r emulator.Readings
	if len(readings) > 0 {
		r = readings[0]
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(dir, "km"), Readings: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { km.Close() })
	env.c, err = testenv.KMSClient(km.Addr(), km.CAFile(), km.RootAPIKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := env.c.CreateEnclave(context.Background(), &kms.CreateEnclaveRequest{Name: env.enclave}); err != nil {
		t.Fatal(err)
	}
	env.reopen(t)
	return env
}

func (env *migrationEnv) reopen(t testing.TB) {
	t.Helper()
	conf := &kesconf.File{KeyStore: &kesconf.FSKeyStore{Path: env.dir}}
	ks, err := conf.KeyStore.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	all, err := listKeyStore(context.Background(), nil, nil, ks, conf)
	if err != nil {
		t.Fatal(err)
	}
	env.src, err = newSourceSet(ks, conf, all, "*")
	if err != nil {
		t.Fatal(err)
	}
}

// entries reads every key of the source store, in its listing's order.
func (env *migrationEnv) entries(t *testing.T) []*sourceEntry {
	var es []*sourceEntry
	for _, n := range env.src.names {
		e, err := env.src.readEntry(context.Background(), n)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	return es
}

func (env *migrationEnv) put(t *testing.T, name string, k kescrypto.Key) {
	t.Helper()
	if err := env.c.ImportKey(context.Background(), env.enclave, &kms.ImportKeyRequest{Name: name, Type: kmsType(k.Algorithm), Key: k.Material}); err != nil {
		t.Fatal(err)
	}
}

func (env *migrationEnv) targetNames(t *testing.T) []string {
	t.Helper()
	names, err := listEnclaveKeys(context.Background(), env.c, env.enclave)
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// checkpointMap is a snapshot of checkpoints, read as a Run's are.
type checkpointMap map[string]json.RawMessage

func (m checkpointMap) CheckpointData(name string) (json.RawMessage, bool) {
	raw, ok := m[name]
	return raw, ok
}

func (m checkpointMap) CheckpointOrder() []string { return slices.Sorted(maps.Keys(m)) }

// fakeJournal records checkpoints in memory.
type fakeJournal struct {
	mu   sync.Mutex
	cps  map[string]json.RawMessage
	logs []string
	fail func(item string) error
}

func (j *fakeJournal) hooks() runHooks {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cps == nil {
		j.cps = map[string]json.RawMessage{}
	}
	cps := checkpointMap{}
	for k, v := range j.cps {
		cps[k] = v
	}
	logf := func(format string, args ...any) {
		j.mu.Lock()
		defer j.mu.Unlock()
		j.logs = append(j.logs, fmt.Sprintf(format, args...))
	}
	return runHooks{
		checkpointAll: func(items []engine.CheckpointItem) error {
			for _, it := range items {
				if j.fail != nil {
					if err := j.fail(it.Item); err != nil {
						return err
					}
				}
				b, err := json.Marshal(it.Data)
				if err != nil {
					return err
				}
				j.mu.Lock()
				j.cps[it.Item] = b
				j.mu.Unlock()
			}
			return nil
		},
		Checkpoints: cps,
		progress:    func(done, total int64) {},
		logf:        logf,
		warnf:       logf,
	}
}

func randomKey() kescrypto.Key {
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	rand.Read(k.Material)
	return k
}

// A crash after some imports that were never checkpointed: the resume sends
// no import for them (they are in the enclave: round trip instead) and
// never for checkpointed ones.
func TestMigrateResumeInFlight(t *testing.T) {
	t.Parallel()
	env := newMigrationEnv(t, 40)
	m := &migrationStep{cfg: migrationConfig{Parallelism: 4}}
	j := &fakeJournal{}
	var n int
	var mu sync.Mutex
	errCrash := errors.New("crash")
	j.fail = func(item string) error { // the "crash": checkpoints stop after 10 keys
		mu.Lock()
		defer mu.Unlock()
		if _, ok := migratedKeys.Key(item); ok {
			n++
			if n > 10 {
				return errCrash
			}
		}
		return nil
	}
	if _, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave); !errors.Is(err, errCrash) {
		t.Fatalf("first attempt: %v, want the crash", err)
	}
	present := len(env.targetNames(t))
	j.fail = nil
	res, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave)
	if err != nil {
		t.Fatal(err)
	}
	// A request the crash cancelled may still be committed by the Key
	// Manager after present was counted, even while the resume runs (the
	// resume then finds that key imported when it sends it, and proves it):
	// every key seen present is in flight and never sent again, and every
	// other key is in flight or sent.
	if res.Earlier != 10 || int(res.InFlight) < present-10 || int(res.Commands) > 40-present || int(res.InFlight+res.Commands) < 30 {
		t.Fatalf("resume: earlier %d, in flight %d, keys sent %d; want 10, at least %d, at most %d, at least 30 together", res.Earlier, res.InFlight, res.Commands, present-10, 40-present)
	}
	if res.Imported != 40 || len(env.targetNames(t)) != 40 {
		t.Fatalf("imported %d, enclave holds %d; want 40", res.Imported, len(env.targetNames(t)))
	}
}

// A key that appears at the target with different material after the
// preflight is never accepted as done.
func TestMigrateInFlightDifferentMaterial(t *testing.T) {
	t.Parallel()
	env := newMigrationEnv(t, 5)
	m := &migrationStep{}
	j := &fakeJournal{}
	h := j.hooks()
	if err := migrationPreflight.Put(h, preflightCheckpoint{NamesSHA256: env.src.digest}); err != nil {
		t.Fatal(err)
	}
	env.put(t, "key-002", randomKey())
	_, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave)
	if err == nil || !strings.Contains(err.Error(), "key-002") || !strings.Contains(err.Error(), "different material") {
		t.Fatalf("err = %v, want a conflict naming key-002", err)
	}
}

// overwrite replaces a different key, keeps an identical one, and a crash
// between delete and import is finished by the next attempt.
func TestMigrateOverwrite(t *testing.T) {
	t.Parallel()
	// An overwrite deletes, then imports the same name: only a Key Manager
	// that gives deleted names out again allows it (see
	// TestMigrateOverwriteTombstoned).
	env := newMigrationEnv(t, 6, emulator.Readings{DeletedNames: emulator.DeletedReusable})
	env.put(t, "key-001", env.keys["key-001"]) // identical
	env.put(t, "key-002", randomKey())         // different
	env.put(t, "key-003", randomKey())         // different
	m := &migrationStep{cfg: migrationConfig{OnConflict: conflictOverwrite, Parallelism: 1}}
	j := &fakeJournal{}
	errCrash := errors.New("crash")
	j.fail = func(item string) error {
		if item == migratedKeys.Item("key-003").Name() && j.cps[item] != nil { // the "overwritten" record of key-003 never lands
			return errCrash
		}
		return nil
	}
	if _, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave); !errors.Is(err, errCrash) {
		t.Fatalf("first attempt: %v, want the crash", err)
	}
	if a := actionOf(checkpointMap(j.cps), migratedKeys, "key-003"); a != actionOverwriting {
		t.Fatalf("key-003 checkpoint %q, want %q", a, actionOverwriting)
	}
	j.fail = nil
	res, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave)
	if err != nil {
		t.Fatal(err)
	}
	if res.Skipped != 1 || res.Overwritten != 2 || res.Imported != 3 {
		t.Fatalf("skipped %d overwritten %d imported %d; want 1, 2, 3", res.Skipped, res.Overwritten, res.Imported)
	}
	for name, k := range env.keys {
		same, err := sameMaterial(context.Background(), env.c, env.enclave, name, k)
		if err != nil || !same {
			t.Errorf("%s at the target: same=%v err=%v", name, same, err)
		}
	}
}

// on_conflict = "skip_identical" fails on different material before
// importing anything.
func TestMigrateConflictImportsNothing(t *testing.T) {
	t.Parallel()
	env := newMigrationEnv(t, 10)
	env.put(t, "key-004", randomKey())
	m := &migrationStep{}
	j := &fakeJournal{}
	_, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave)
	if err == nil || !strings.Contains(err.Error(), "key-004") {
		t.Fatalf("err = %v, want a conflict naming key-004", err)
	}
	if got := env.targetNames(t); len(got) != 1 {
		t.Fatalf("enclave holds %v, want only key-004", got)
	}
	if migrationPreflight.Done(checkpointMap(j.cps)) {
		t.Fatal("a failed preflight must not be checkpointed")
	}
}

// An enclave's listing follows the Key Manager's pages to the last key,
// whatever page it asks for (the emulator's default is 1,000 names).
func TestListEnclaveKeysFollowsPages(t *testing.T) {
	t.Parallel()
	env := newMigrationEnv(t, 0)
	var want []string
	for i := range 2100 {
		name := fmt.Sprintf("key-%05d", i)
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
		rand.Read(k.Material)
		env.put(t, name, k)
		want = append(want, name)
	}
	for _, limit := range []int{1000, 999, enclaveListPage} {
		got, err := listEnclaveKeysPaged(context.Background(), env.c, env.enclave, limit)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Sort(got); !slices.Equal(got, want) {
			t.Fatalf("pages of %d: listed %d names, want %d", limit, len(got), len(want))
		}
	}
}

package steps

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/engine/enginetest"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// The fast tier's runbook: every step that needs no object store, run
// in-process against the emulator and an fs key store.
const inProcessRunbook = `
runbook {
  name = "rb"
}

variable "km_server" {
  type = string
}

variable "km_api_key" {
  type      = string
  sensitive = true
}

kes "legacy" {
  config = "kes/kes-config.yaml"
}

key_manager "target" {
  servers = [var.km_server]
  api_key = var.km_api_key
  ca_file = "km/ca.crt"
}

prerequisites "preflight" {
  kes         = kes.legacy
  key_manager = key_manager.target
}

enclave "primary" {
  key_manager = key_manager.target
  name        = "fast"
  depends_on  = [prerequisites.preflight]
}

identity "aistor" {
  enclave = enclave.primary
  admin   = true
}

migration "keys" {
  from        = kes.legacy
  to          = enclave.primary
  parallelism = 2
}

verification "keys" {
  source      = kes.legacy
  target      = enclave.primary
  parallelism = 2
  depends_on  = [migration.keys, identity.aistor]
}

exec "mark" {
  command          = ["sh", "-c", "echo applied >> marks"]
  rollback_command = ["sh", "-c", "echo undone >> marks"]
  depends_on       = [verification.keys]
}
`

// inProcess is the runbook above with its key store and its Key Manager.
type inProcess struct {
	h    *enginetest.Harness
	c    *kms.Client
	keys []string // the source's key names, sorted
}

func newInProcess(t *testing.T, n int) *inProcess {
	t.Helper()
	return newInProcessWith(t, n, emulator.Config{})
}

// newInProcessWith is newInProcess with the emulator's config km (its
// address and state directory are set here).
func newInProcessWith(t *testing.T, n int, kmConfig emulator.Config) *inProcess {
	t.Helper()
	h := enginetest.New(t, inProcessRunbook)
	h.WriteFile("kes/kes-config.yaml", "version: v1\naddress: 0.0.0.0:7373\nadmin:\n  identity: 3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22\ntls:\n  key: ./server.key\n  cert: ./server.cert\nkeystore:\n  fs:\n    path: ./keys\n")
	store := filepath.Join(h.Dir, "kes", "keys")
	if err := os.MkdirAll(store, 0o700); err != nil {
		t.Fatal(err)
	}
	ip := &inProcess{h: h, keys: slices.Sorted(maps.Keys(writeKESKeys(t, store, n)))}
	kmConfig.Addr, kmConfig.Dir = "127.0.0.1:0", filepath.Join(t.TempDir(), "km")
	km, err := emulator.Start(kmConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { km.Close() })
	ca, err := os.ReadFile(km.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	h.WriteFile("km/ca.crt", string(ca))
	h.Var("km_server", km.URL())
	h.Var("km_api_key", km.RootAPIKey())
	if ip.c, err = testenv.KMSClient(km.Addr(), km.CAFile(), km.RootAPIKey()); err != nil {
		t.Fatal(err)
	}
	h.Force = true // no aistor block: the in-use guard cannot ask an object store
	return ip
}

// applied checks what a complete run leaves: every step done, the enclave
// holding exactly the source's keys, the identity registered, exec run once.
func (ip *inProcess) applied(t *testing.T) {
	t.Helper()
	js := ip.h.State()
	for _, addr := range []string{"prerequisites.preflight", "enclave.primary", "identity.aistor", "migration.keys", "verification.keys", "exec.mark"} {
		if st := js.Step(addr).State; st != engine.StateDone {
			t.Errorf("%s is %s, want done", addr, st)
		}
	}
	got, err := listEnclaveKeys(context.Background(), ip.c, "fast")
	if err != nil || !slices.Equal(got, ip.keys) {
		t.Errorf("enclave fast holds %v (%v), want the source's %d keys", got, err, len(ip.keys))
	}
	ids, err := ip.c.ListIdentities(context.Background(), &kms.ListRequest{Enclave: "fast"})
	if err != nil || len(ids.Items) != 1 {
		t.Errorf("enclave fast has identities %v (%v), want the one this run registered", ids, err)
	}
	if b, _ := os.ReadFile(filepath.Join(ip.h.Dir, "marks")); string(b) != "applied\n" {
		t.Errorf("exec ran %q, want once", b)
	}
}

// rolledBack checks that a rollback left nothing: the enclave (and with it
// every key and identity) gone, exec undone.
func (ip *inProcess) rolledBack(t *testing.T) {
	t.Helper()
	if err := ip.h.Rollback(""); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	_, err := ip.c.EnclaveStatus(context.Background(), &kms.EnclaveStatusRequest{Name: "fast"})
	if !errors.Is(err, kms.ErrEnclaveNotFound) {
		t.Errorf("after the rollback enclave fast: %v, want it gone", err)
	}
	if js := ip.h.State(); js.Unfinished() || js.Step("migration.keys").State != engine.StateRolledBack {
		t.Errorf("after the rollback the run is unfinished or the migration %s", js.Step("migration.keys").State)
	}
	if b, _ := os.ReadFile(filepath.Join(ip.h.Dir, "marks")); string(b) != "applied\nundone\n" {
		t.Errorf("marks %q, want applied then undone", b)
	}
}

// The whole runbook applies and rolls back in-process.
func TestInProcessApplyRollback(t *testing.T) {
	t.Parallel()
	ip := newInProcess(t, 12)
	if err := ip.h.Apply(); err != nil {
		t.Fatalf("apply: %v", err)
	}
	ip.applied(t)
	ip.rolledBack(t)
}

// A run stopped right after each kind of checkpoint (as kill -9 there
// leaves the journal) resumes to the same end, and rolls back from there.
func TestInProcessResumeFromPrefix(t *testing.T) {
	t.Parallel()
	for _, stop := range []struct{ step, item string }{
		{"prerequisites.preflight", prerequisitesKeySet.Name()},
		{"prerequisites.preflight", prerequisitesBackup.Name()},
		{"enclave.primary", enclaveCreateIntent.Name()},
		{"enclave.primary", enclaveCreated.Name()},
		{"identity.aistor", identityRegisterIntent.Name()},
		{"migration.keys", migrationPreflight.Name()},
		{"migration.keys", migratedKeys.Item("key-005").Name()},
		{"verification.keys", verifiedKeys.Item("key-003").Name()},
	} {
		t.Run(stop.step+" "+stop.item, func(t *testing.T) {
			t.Parallel()
			ip := newInProcess(t, 12)
			ip.h.ApplyUntil(stop.step, stop.item)
			if st := ip.h.State().Step(stop.step).State; st != engine.StateRunning {
				t.Fatalf("after the stop %s is %s, want running (as a kill leaves it)", stop.step, st)
			}
			if err := ip.h.Resume(); err != nil {
				t.Fatalf("resume: %v", err)
			}
			ip.applied(t)
			ip.rolledBack(t)
		})
	}
}

package steps

import (
	"bytes"
	"context"
	"errors"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/minio/kes/kesconf"
	kesdk "github.com/minio/kms-go/kes"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// vaultWithTransit starts a Vault with a transit engine holding the key
// "kes", and returns it with its root client.
func vaultWithTransit(t *testing.T, opts testenv.VaultOptions) (*testenv.Vault, *vaultapi.Client) {
	t.Helper()
	v := testenv.StartVault(t, opts)
	ctx := context.Background()
	root, err := v.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().MountWithContext(ctx, "transit", &vaultapi.MountInput{Type: "transit"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "transit/keys/kes", nil); err != nil {
		t.Fatal(err)
	}
	return v, root
}

// transitPolicy is KES's policy for its keys under "kes" in kv, with the
// use of the transit key "kes".
func transitPolicy(kv testenv.VaultKV) string {
	return testenv.KESPolicy(kv, "kes", false) +
		"path \"transit/encrypt/kes\" {\n  capabilities = [\"update\"]\n}\npath \"transit/decrypt/kes\" {\n  capabilities = [\"update\"]\n}\n"
}

// The Vault key store's Get answers every entry exactly as KES's own vault
// store does (value, or error text), with and without a transit key in the
// config, on kv v1 and kv v2 over TLS; the plain values come from
// keystore.VaultReader (its keep-alive connections are the point), the
// rest from KES's store; Close revokes the reader's token.
func TestVaultKeyStoreGetAnswersAsKES(t *testing.T) {
	t.Parallel()
	v, root := vaultWithTransit(t, testenv.VaultOptions{TLS: true})
	ctx := context.Background()
	v024 := kescrypto.Key{Algorithm: kescrypto.AES256, Material: bytes.Repeat([]byte{1}, 32), HMAC: bytes.Repeat([]byte{2}, 32)}
	rawV024, err := v024.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	v023 := kescrypto.Key{Algorithm: kescrypto.ChaCha20, Material: bytes.Repeat([]byte{3}, 32)}
	rawV023, err := v023.MarshalV023()
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range []testenv.VaultKV{testenv.VaultKV1, testenv.VaultKV2} {
		t.Run(kv.Engine, func(t *testing.T) {
			role, err := v.CreateAppRole(ctx, "get-"+kv.Engine, transitPolicy(kv))
			if err != nil {
				t.Fatal(err)
			}
			plain := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: kv.Engine, APIVersion: kv.Version, Prefix: "kes", CAPath: v.CAFile,
				AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID}}
			transit := *plain
			transit.Transit = &kesconf.VaultTransit{KeyName: "kes"}
			write := func(name string, data map[string]any) {
				t.Helper()
				full := kv.Engine + "/kes/" + name
				if kv.Version == "v2" {
					data, full = map[string]any{"data": data}, kv.Engine+"/data/kes/"+name
				}
				if _, err := root.Logical().WriteWithContext(ctx, full, data); err != nil {
					t.Fatalf("write %s: %v", full, err)
				}
			}
			// Entries as KES writes them, and as other writers leave them.
			kesPlain, err := plain.Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer kesPlain.Close()
			kesTransit, err := transit.Connect(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer kesTransit.Close()
			if err := kesPlain.Create(ctx, "key-v024", rawV024); err != nil {
				t.Fatal(err)
			}
			if err := kesPlain.Create(ctx, "key-v023", rawV023); err != nil {
				t.Fatal(err)
			}
			if err := kesTransit.Create(ctx, "key-sealed", rawV024); err != nil {
				t.Fatal(err)
			}
			write("no-field", map[string]any{"other": "value"})
			write("not-string", map[string]any{"not-string": 42})
			write("later-prefix", map[string]any{"later-prefix": "vault:v2:not-transit-v1"})
			if kv.Version == "v2" {
				// KES reads version 1 of a kv v2 secret.
				write("key-v024", map[string]any{"key-v024": "a second version"})
			}
			names := []string{"key-v024", "key-v023", "key-sealed", "no-field", "not-string", "later-prefix", "missing"}
			served := map[string]bool{"key-v024": true, "key-v023": true, "later-prefix": true}

			for _, c := range []struct {
				name string
				conf *kesconf.VaultKeyStore
				kes  interface {
					Get(context.Context, string) ([]byte, error)
				}
			}{{"no transit", plain, kesPlain}, {"transit", &transit, kesTransit}} {
				ks, err := c.conf.Connect(ctx)
				if err != nil {
					t.Fatal(err)
				}
				fast := fastKeyStore(ks, &kesconf.File{KeyStore: c.conf})
				if _, ok := fast.(*vaultKeyStore); !ok {
					t.Fatalf("%s: fastKeyStore gave %T for a vault store", c.name, fast)
				}
				for _, name := range names {
					got, gotErr := fast.Get(ctx, name)
					want, wantErr := c.kes.Get(ctx, name)
					if !bytes.Equal(got, want) || (gotErr == nil) != (wantErr == nil) ||
						gotErr != nil && gotErr.Error() != wantErr.Error() {
						t.Errorf("%s: Get(%s) = %.40q, %v; KES's store: %.40q, %v", c.name, name, got, gotErr, want, wantErr)
					}
					if name == "missing" && !errors.Is(gotErr, kesdk.ErrKeyNotFound) {
						t.Errorf("%s: a missing entry: %v, want kes.ErrKeyNotFound", c.name, gotErr)
					}
				}
				r := fast.(*vaultKeyStore).reader
				if r == nil {
					t.Fatalf("%s: the reader did not log in", c.name)
				}
				for _, name := range names {
					if _, ok := r.Get(ctx, name); ok != served[name] {
						t.Errorf("%s: the reader served %s: %v, want %v", c.name, name, ok, served[name])
					}
				}
				if err := fast.Close(); err != nil {
					t.Fatal(err)
				}
				if _, ok := r.Get(ctx, "key-v024"); ok {
					t.Errorf("%s: the reader still reads after Close: its token was not revoked", c.name)
				}
			}
			// A reader that cannot log in is no reader; KES's store answers.
			wrong := *plain
			wrong.AppRole = &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: "00000000-0000-0000-0000-000000000000"}
			if _, err := keystore.NewVaultReader(ctx, &wrong); err == nil {
				t.Error("a reader logged in with a wrong secret id")
			}
			fast := &vaultKeyStore{KeyStore: kesPlain, conf: &wrong}
			if got, err := fast.Get(ctx, "key-v023"); err != nil || !bytes.Equal(got, rawV023) || fast.reader != nil {
				t.Errorf("without a reader: %.40q, %v (reader %v)", got, err, fast.reader != nil)
			}
		})
	}
}

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/kes/kesconf"
	"golang.org/x/sync/errgroup"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// shape is a kind of key store operators have (docs/domain.md, "KES stored
// keys"): which format each key was written in, and which KES serves it.
type shape struct {
	name  string
	about string
	// json says whether key i is stored in the KES v0.22/v0.23 JSON format
	// (no HMAC key: that format has none) rather than KES v0.24's base64
	// protobuf (always with an HMAC key: KES v0.24 requires one).
	json  func(i int) bool
	v022  bool // served by KES v0.22.3 (listing by glob) instead of v0.24.0
	vault bool // kept in Vault's kv v1 engine, not in an fs store
}

var shapes = []shape{
	{name: "v0.24", about: "every key written by KES v0.24 (protobuf, with an HMAC key)", json: func(int) bool { return false }},
	{name: "v0.23", about: "every key written by KES v0.22/v0.23 (JSON, no HMAC key), served by KES v0.24", json: func(int) bool { return true }},
	{name: "mixed", about: "every other key JSON (KES v0.22/v0.23), the others protobuf with an HMAC key (KES v0.24), served by KES v0.24", json: func(i int) bool { return i%2 == 1 }},
	{name: "v0.22", about: "every key JSON, served by KES v0.22.3 (an older KES still running: keys listed by glob, streamed)", json: func(int) bool { return true }, v022: true},
	{name: "vault", about: "mixed, kept in Vault (a kv v1 engine, as most KES deployments keep their keys; Vault in dev mode over TLS on this machine, as far from both tools as the KES server is: the round trip to KES is added to Vault's too), served by KES v0.24", json: func(i int) bool { return i%2 == 1 }, vault: true},
}

func shapeNamed(name string) (shape, error) {
	var names []string
	for _, s := range shapes {
		if s.name == name {
			return s, nil
		}
		names = append(names, s.name)
	}
	return shape{}, fmt.Errorf("unknown store shape %q (known: %s)", name, strings.Join(names, ", "))
}

// store is a key store (fs, or Vault's kv v1) with a real KES server on
// it.
type store struct {
	dir   string
	shape shape
	keys  int
	kes   *testenv.KES
	// vaultURL is the Vault the keys are in (https://127.0.0.1:PORT), ""
	// for an fs store; vault is its part of KES's config.
	vaultURL string
	vault    *kesconf.VaultKeyStore
}

// newStore writes n keys straight into dir/keys (or Vault) in the shape's
// formats, every third one ChaCha20, and starts a KES server on them.
func newStore(tb *benchTB, dir string, n int, sh shape) *store {
	keys := filepath.Join(dir, "keys")
	check(os.MkdirAll(keys, 0o700))
	write := func(name string, value []byte) error { return os.WriteFile(filepath.Join(keys, name), value, 0o600) }
	opts := testenv.KESOptions{KeyStoreDir: keys, V022: sh.v022}
	var vault *kesconf.VaultKeyStore
	if sh.vault {
		write, opts, vault = vaultStore(tb)
	}
	g := new(errgroup.Group)
	g.SetLimit(16) // Vault takes a write per key
	now := time.Now().UTC()
	for i := range n {
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), CreatedAt: now, CreatedBy: "bench"}
		if i%3 == 0 {
			k.Algorithm = kescrypto.ChaCha20
		}
		rand.Read(k.Material)
		var b []byte
		var err error
		if sh.json(i) {
			b, err = k.MarshalV023()
			if sh.v022 {
				// KES v0.22 names the algorithm as its kes-go did
				// (kescrypto.ParseAlgorithm: the legacy names).
				b = bytes.Replace(b, []byte(`"algorithm":"ChaCha20"`), []byte(`"algorithm":"XCHACHA20-POLY1305"`), 1)
			}
		} else {
			k.HMAC = make([]byte, 32)
			rand.Read(k.HMAC)
			b, err = k.MarshalV024()
		}
		check(err)
		g.Go(func() error { return write(keyName(i), b) })
	}
	check(g.Wait())
	st := &store{dir: dir, shape: sh, keys: n, kes: testenv.StartKES(tb, opts), vault: vault}
	if vault != nil {
		st.vaultURL = vault.Endpoint
	}
	return st
}

// vaultStore starts a Vault server with an AppRole for KES and returns a
// function that writes a key as KES's vault store does (kes@v0.24.0
// internal/keystore/vault: the value under the key's name in a kv v1
// secret at kv1/kes/NAME), the options of a KES server on it, and the
// KES config's part for it.
func vaultStore(tb *benchTB) (func(name string, value []byte) error, testenv.KESOptions, *kesconf.VaultKeyStore) {
	ctx := context.Background()
	v := testenv.StartVault(tb, testenv.VaultOptions{TLS: true}) // as in production
	role, err := v.CreateAppRole(ctx, "kes", testenv.KESPolicy(testenv.VaultKV1, "kes", false))
	check(err)
	c, err := v.Client()
	check(err)
	write := func(name string, value []byte) error {
		_, err := c.Logical().WriteWithContext(ctx, "kv1/kes/"+name, map[string]any{name: string(value)})
		return err
	}
	conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: testenv.VaultKV1.Engine, APIVersion: testenv.VaultKV1.Version, Prefix: "kes",
		AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID}, CAPath: v.CAFile}
	return write, testenv.KESOptions{KeyStore: v.KESKeyStore(testenv.VaultKV1, "kes", role)}, conf
}

// readVaultOnce is the floor of any migration from a Vault store: the time
// Vault needs to serve every value once, read as the runbook reads them
// (keystore.VaultReader, keystore.VaultReads at once, over TLS), best of
// runs.
func (s *store) readVaultOnce(runs int) time.Duration {
	ctx := context.Background()
	r, err := keystore.NewVaultReader(ctx, s.vault)
	check(err)
	defer r.Close()
	var best time.Duration
	for range runs {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(keystore.VaultReads)
		start := time.Now()
		for i := range s.keys {
			g.Go(func() error {
				if _, ok := r.Get(gctx, keyName(i)); !ok {
					return fmt.Errorf("read %s from Vault: no value", keyName(i))
				}
				return nil
			})
		}
		check(g.Wait())
		if d := time.Since(start); best == 0 || d < best {
			best = d
		}
	}
	return best
}

// keyName is the store's name of key i.
func keyName(i int) string { return fmt.Sprintf("key-%06d", i) }

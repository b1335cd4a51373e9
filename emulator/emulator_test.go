package emulator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"github.com/runbook-dev/runbook/internal/kescrypto"
)

var ctx = context.Background()

func TestVersionAndHealth(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	v, err := c.Version(ctx, &kms.VersionRequest{})
	must(t, err)
	if len(v) != 1 || v[0].Version != Version || v[0].APIVersion != "v1" || v[0].Host != s.Addr() {
		t.Fatalf("version = %+v", v[0])
	}
	must(t, c.Live(ctx, &kms.LivenessRequest{}))
	must(t, c.Ready(ctx, &kms.ReadinessRequest{}))
	must(t, c.Ready(ctx, &kms.ReadinessRequest{Write: true}))

	// A JSON-only client gets protojson; every response has Content-Length.
	hc := rawClient(t, s, s.RootAPIKey())
	req, _ := http.NewRequest(http.MethodGet, s.URL()+"/version", nil)
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	must(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var js map[string]any
	if resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &js) != nil || js["version"] != Version {
		t.Fatalf("JSON version: %s %s", resp.Header.Get("Content-Type"), body)
	}
	if resp.Header.Get("Content-Length") == "" || resp.ProtoMajor != 2 {
		t.Fatalf("Content-Length %q, HTTP/%d", resp.Header.Get("Content-Length"), resp.ProtoMajor)
	}
	// MinIO keys its KMS status map by the host it dialed.
	c2, err := kms.NewClient(&kms.Config{Endpoints: []string{"localhost:" + strings.Split(s.Addr(), ":")[1]},
		APIKey: mustKey(t, s.RootAPIKey()), TLS: tlsConfig(t, s)})
	must(t, err)
	v, err = c2.Version(ctx, &kms.VersionRequest{})
	must(t, err)
	if !strings.HasPrefix(v[0].Host, "localhost:") {
		t.Fatalf("host = %q, want the dialed localhost address", v[0].Host)
	}
}

func TestEnclaves(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	root := mustKey(t, s.RootAPIKey()).Identity()

	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "minio"}))
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "other"}))
	wantErr(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "minio"}), kms.ErrEnclaveExists)

	st, err := c.EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: "minio"}, &kms.EnclaveStatusRequest{Name: "other"})
	must(t, err)
	if len(st) != 2 || st[0].Name != "minio" || st[1].Name != "other" || st[0].CreatedBy != root || time.Since(st[0].CreatedAt) > time.Minute {
		t.Fatalf("status = %+v", st)
	}
	_, err = c.EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: "minio"}, &kms.EnclaveStatusRequest{Name: "nope"})
	wantErr(t, err, kms.ErrEnclaveNotFound)

	page, err := c.ListEnclaves(ctx, &kms.ListRequest{})
	must(t, err)
	if len(page.Items) != 2 || page.ContinueAt != "" {
		t.Fatalf("list = %+v", page)
	}
	page, err = c.ListEnclaves(ctx, &kms.ListRequest{Limit: 1})
	must(t, err)
	if len(page.Items) != 1 || page.Items[0].Name != "minio" || page.ContinueAt != "other" {
		t.Fatalf("list limit 1 = %+v", page)
	}

	must(t, c.DeleteEnclave(ctx, &kms.DeleteEnclaveRequest{Name: "other"}))
	wantErr(t, c.DeleteEnclave(ctx, &kms.DeleteEnclaveRequest{Name: "other"}), kms.ErrEnclaveNotFound)
	_, err = c.EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: "other"})
	wantErr(t, err, kms.ErrEnclaveNotFound)
	wantErr(t, c.CreateKey(ctx, "other", &kms.CreateKeyRequest{Name: "k"}), kms.ErrEnclaveNotFound)
	wantErr(t, c.CreateKey(ctx, "", &kms.CreateKeyRequest{Name: "k"}), kms.ErrEnclaveNotFound)

	cs, err := c.ClusterStatus(ctx, &kms.ClusterStatusRequest{})
	must(t, err)
	if len(cs.NodesUp) != 1 || cs.NodesUp[0].Host != s.Addr() {
		t.Fatalf("cluster status = %+v", cs)
	}
}

func TestKeys(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	root := mustKey(t, s.RootAPIKey()).Identity()
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))

	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "aes"}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "chacha", Type: kms.ChaCha20}))
	wantErr(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "aes"}), kms.ErrKeyExists)

	st, err := c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "aes"}, &kms.KeyStatusRequest{Name: "chacha"})
	must(t, err)
	if st[0].Type != kms.AES256 || st[1].Type != kms.ChaCha20 || st[0].Version != 1 || st[0].CreatedBy != root || st[0].Name != "aes" {
		t.Fatalf("status = %+v %+v", st[0], st[1])
	}
	_, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "aes"}, &kms.KeyStatusRequest{Name: "missing"})
	wantErr(t, err, kms.ErrKeyNotFound)

	for _, name := range []string{"aes", "chacha"} {
		aad := []byte(`{"bkt":"bkt/obj"}`)
		dek, err := c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: name, AssociatedData: aad, Length: 32})
		must(t, err)
		if len(dek[0].Plaintext) != 32 || dek[0].Version != 1 || len(dek[0].Ciphertext) != 32+44 {
			t.Fatalf("%s: dek = %d bytes, version %d, ct %d", name, len(dek[0].Plaintext), dek[0].Version, len(dek[0].Ciphertext))
		}
		// Rotate: Version 0 (as MinIO sends) must still find the old version.
		must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: name, AddVersion: true}))
		pt, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: name, Ciphertext: dek[0].Ciphertext, AssociatedData: aad})
		must(t, err)
		if !bytes.Equal(pt[0].Plaintext, dek[0].Plaintext) {
			t.Fatalf("%s: decrypt mismatch", name)
		}
		_, err = c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: name, Ciphertext: dek[0].Ciphertext, AssociatedData: []byte("{}")})
		wantErr(t, err, kms.ErrDecrypt)
		_, err = c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: name, Version: 2, Ciphertext: dek[0].Ciphertext, AssociatedData: aad})
		wantErr(t, err, kms.ErrDecrypt) // sealed by version 1, not 2
		_, err = c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: name, Version: 1, Ciphertext: dek[0].Ciphertext, AssociatedData: aad})
		must(t, err)
		_, err = c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: name, Version: 7, Ciphertext: dek[0].Ciphertext, AssociatedData: aad})
		wantErr(t, err, kms.ErrKeyNotFound)

		dek2, err := c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: name, Length: 64})
		must(t, err)
		if len(dek2[0].Plaintext) != 64 || dek2[0].Version != 2 {
			t.Fatalf("dek2: %d bytes, version %d", len(dek2[0].Plaintext), dek2[0].Version)
		}
	}
	_, err = c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: "missing"})
	wantErr(t, err, kms.ErrKeyNotFound)
	_, err = c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: "aes", Length: 2000})
	if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != 400 {
		t.Fatalf("length 2000: %v", err)
	}

	// Delete the latest version, then a specific one, then all.
	must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "aes"}))
	st, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "aes"})
	must(t, err)
	if st[0].Version != 1 {
		t.Fatalf("after deleting latest: version %d", st[0].Version)
	}
	wantErr(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "chacha", Version: 9}), kms.ErrKeyNotFound)
	must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "chacha", Version: 1}))
	st, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "chacha", Version: 2})
	must(t, err)
	_, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "chacha", Version: 1})
	wantErr(t, err, kms.ErrKeyNotFound)
	must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "chacha", AllVersions: true}))
	_, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "chacha"})
	wantErr(t, err, kms.ErrKeyNotFound)
	wantErr(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "chacha"}), kms.ErrKeyNotFound)
	// The name of a deleted key is not given out again (--deleted-names
	// tombstoned, the default); TestReadingDeletedNames covers both readings.
	wantErr(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "chacha"}), kms.ErrKeyExists)
}

func TestListKeysPagination(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	const N = 2500
	var want []string
	for i := range N {
		name := fmt.Sprintf("key-%04d", i)
		want = append(want, name)
		must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: name, Type: kms.AES256, Key: make([]byte, 32)}))
	}

	for _, limit := range []int{1000, 0} { // explicit limit and server default
		var got []string
		var pages []int
		continueAt := ""
		for {
			p, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", ContinueAt: continueAt, Limit: limit})
			must(t, err)
			pages = append(pages, len(p.Items))
			for _, k := range p.Items {
				got = append(got, k.Name)
				if k.Type != kms.AES256 || k.Version != 1 {
					t.Fatalf("item %+v", k)
				}
			}
			if p.ContinueAt == "" {
				break
			}
			if p.ContinueAt != want[len(got)] {
				t.Fatalf("continue_at %q, want next name %q", p.ContinueAt, want[len(got)])
			}
			continueAt = p.ContinueAt
		}
		if !slices.Equal(got, want) || !slices.Equal(pages, []int{1000, 1000, 500}) {
			t.Fatalf("limit %d: %d keys in pages %v", limit, len(got), pages)
		}
	}

	// The vendor's iterator sees every key exactly once.
	it := kms.Iter[kms.KeyStatusResponse]{NextFn: c.ListKeys}
	n := 0
	for k, err := it.SeekTo(ctx, &kms.ListRequest{Enclave: "e", Limit: 700}); err != io.EOF; k, err = it.Next(ctx) {
		must(t, err)
		if k.Name != want[n] {
			t.Fatalf("iter item %d = %q", n, k.Name)
		}
		n++
	}
	if n != N {
		t.Fatalf("iterated %d keys", n)
	}

	p, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", Prefix: "key-12"})
	must(t, err)
	if len(p.Items) != 100 || p.Items[0].Name != "key-1200" || p.ContinueAt != "" {
		t.Fatalf("prefix: %d items, continue %q", len(p.Items), p.ContinueAt)
	}
	p, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", Prefix: "key-12", ContinueAt: "key-1250", Limit: 10})
	must(t, err)
	if len(p.Items) != 10 || p.Items[0].Name != "key-1250" || p.ContinueAt != "key-1260" {
		t.Fatalf("prefix+continue: %d items from %q, continue %q", len(p.Items), p.Items[0].Name, p.ContinueAt)
	}
	p, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", Prefix: "key-12", ContinueAt: "key-2000"})
	must(t, err)
	if len(p.Items) != 0 {
		t.Fatalf("continue_at outside prefix returned %d items", len(p.Items))
	}
	_, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "nope"})
	wantErr(t, err, kms.ErrEnclaveNotFound)
}

// Keys imported from KES decrypt every ciphertext format KES produced.
func TestImportKESKeys(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "minio"}))

	for _, alg := range []kescrypto.Algorithm{kescrypto.AES256, kescrypto.ChaCha20} {
		material := bytes.Repeat([]byte{byte(alg)}, 32)
		key := kescrypto.Key{Algorithm: alg, Material: material, HMAC: make([]byte, 32), CreatedAt: time.Now().UTC()}
		// The key travels as KES stores it (both formats), as a migration tool reads it.
		for _, format := range []string{"v023", "v024"} {
			var stored []byte
			var err error
			if format == "v023" {
				stored, err = key.MarshalV023()
			} else {
				stored, err = key.MarshalV024()
			}
			must(t, err)
			parsed, err := kescrypto.ParseKey(stored)
			must(t, err)

			name := alg.String() + "-" + format
			typ, _ := kms.ParseSecretKeyType(parsed.Algorithm.String())
			must(t, c.ImportKey(ctx, "minio", &kms.ImportKeyRequest{Name: name, Type: typ, Key: parsed.Material}))
			wantErr(t, c.ImportKey(ctx, "minio", &kms.ImportKeyRequest{Name: name, Type: typ, Key: parsed.Material}), kms.ErrKeyExists)
			st, err := c.KeyStatus(ctx, "minio", &kms.KeyStatusRequest{Name: name})
			must(t, err)
			if st[0].Type.String() != alg.String() {
				t.Fatalf("imported %s has type %s", alg, st[0].Type)
			}

			aad := []byte(`{"bkt":"bkt/obj"}`)
			sealers := map[string]func(kescrypto.Key, []byte, []byte) ([]byte, error){
				"raw": kescrypto.Seal, "msgpack": kescrypto.SealMsgpack, "json": kescrypto.SealLegacyJSON,
			}
			for ctName, seal := range sealers {
				plaintext := []byte("object key " + name + " " + ctName)
				ct, err := seal(key, plaintext, aad)
				must(t, err)
				got, err := c.Decrypt(ctx, "minio", &kms.DecryptRequest{Name: name, Ciphertext: ct, AssociatedData: aad})
				if err != nil || !bytes.Equal(got[0].Plaintext, plaintext) {
					t.Fatalf("%s/%s: decrypt: %v", name, ctName, err)
				}
				_, err = c.Decrypt(ctx, "minio", &kms.DecryptRequest{Name: name, Ciphertext: ct, AssociatedData: []byte("{}")})
				wantErr(t, err, kms.ErrDecrypt)
			}
			// And the emulator's own ciphertexts are KES v0.24 raw ciphertexts of that key.
			dek, err := c.GenerateKey(ctx, "minio", &kms.GenerateKeyRequest{Name: name, AssociatedData: aad})
			must(t, err)
			pt, err := kescrypto.Open(key, dek[0].Ciphertext, aad)
			if err != nil || !bytes.Equal(pt, dek[0].Plaintext) {
				t.Fatalf("%s: kescrypto cannot open the emulator's ciphertext: %v", name, err)
			}
		}
	}
	// A ciphertext of another key does not decrypt.
	other := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	ct, _ := kescrypto.Seal(other, []byte("x"), nil)
	_, err := c.Decrypt(ctx, "minio", &kms.DecryptRequest{Name: "AES256-v024", Ciphertext: ct})
	wantErr(t, err, kms.ErrDecrypt)

	err = c.ImportKey(ctx, "minio", &kms.ImportKeyRequest{Name: "short", Type: kms.AES256, Key: make([]byte, 16)})
	if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != 400 || !strings.Contains(ke.Err, "invalid key length 16") {
		t.Fatalf("short import: %v", err)
	}
	_, err = c.KeyStatus(ctx, "minio", &kms.KeyStatusRequest{Name: "short"})
	wantErr(t, err, kms.ErrKeyNotFound)
}

func TestPrivileges(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	root := newClient(t, s, s.RootAPIKey())
	must(t, root.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "a"}))
	must(t, root.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "b"}))
	must(t, root.CreateKey(ctx, "b", &kms.CreateKeyRequest{Name: "b-key"}))

	adminKey := newAPIKey(t)
	must(t, root.CreateIdentity(ctx, "a", &kms.CreateIdentityRequest{Identity: adminKey.Identity(), Privilege: kms.Admin}))
	admin := newClient(t, s, adminKey.String())

	// Admin: everything inside enclave a ...
	must(t, admin.CreateKey(ctx, "a", &kms.CreateKeyRequest{Name: "app-1"}))
	must(t, admin.CreateKey(ctx, "a", &kms.CreateKeyRequest{Name: "app-secret"}))
	must(t, admin.CreateKey(ctx, "a", &kms.CreateKeyRequest{Name: "other"}))
	if p, err := admin.ListKeys(ctx, &kms.ListRequest{Enclave: "a"}); err != nil || len(p.Items) != 3 {
		t.Fatalf("admin list: %v", err)
	}
	// ... nothing in enclave b, and no enclave management.
	wantErr(t, admin.CreateKey(ctx, "b", &kms.CreateKeyRequest{Name: "x"}), kms.ErrPermission)
	_, err := admin.GenerateKey(ctx, "b", &kms.GenerateKeyRequest{Name: "b-key"})
	wantErr(t, err, kms.ErrPermission)
	_, err = admin.ListKeys(ctx, &kms.ListRequest{Enclave: "b"})
	wantErr(t, err, kms.ErrPermission)
	wantErr(t, admin.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "c"}), kms.ErrPermission)
	wantErr(t, admin.DeleteEnclave(ctx, &kms.DeleteEnclaveRequest{Name: "b"}), kms.ErrPermission)
	_, err = admin.ListEnclaves(ctx, &kms.ListRequest{})
	wantErr(t, err, kms.ErrPermission)
	wantErr(t, admin.CreateIdentity(ctx, "b", &kms.CreateIdentityRequest{Identity: newAPIKey(t).Identity(), Privilege: kms.Admin}), kms.ErrPermission)

	// A User without a policy may do nothing.
	userKey := newAPIKey(t)
	must(t, admin.CreateIdentity(ctx, "a", &kms.CreateIdentityRequest{Identity: userKey.Identity(), Privilege: kms.User}))
	user := newClient(t, s, userKey.String())
	_, err = user.GenerateKey(ctx, "a", &kms.GenerateKeyRequest{Name: "app-1"})
	wantErr(t, err, kms.ErrPermission)
	_, err = user.ListKeys(ctx, &kms.ListRequest{Enclave: "a"})
	wantErr(t, err, kms.ErrPermission)

	// With a policy, exactly the allowed commands on the allowed names work.
	must(t, admin.CreatePolicy(ctx, "a", &kms.CreatePolicyRequest{
		Name: "app",
		Allow: map[cmds.Command]kms.RuleSet{
			cmds.KeyGenerate: {"app-*": {}},
			cmds.KeyDecrypt:  {"app-*": {}},
			cmds.KeyStatus:   {"*": {}},
			cmds.KeyList:     {"app-*": {}},
		},
		Deny: map[cmds.Command]kms.RuleSet{cmds.KeyStatus: {"app-secret": {}}},
	}))
	wantErr(t, admin.AssignPolicy(ctx, "a", &kms.AssignPolicyRequest{Policy: "nope", Identity: userKey.Identity()}), kms.ErrPolicyNotFound)
	wantErr(t, admin.AssignPolicy(ctx, "a", &kms.AssignPolicyRequest{Policy: "app", Identity: newAPIKey(t).Identity()}), kms.ErrIdentityNotFound)
	must(t, admin.AssignPolicy(ctx, "a", &kms.AssignPolicyRequest{Policy: "app", Identity: userKey.Identity()}))

	dek, err := user.GenerateKey(ctx, "a", &kms.GenerateKeyRequest{Name: "app-1"})
	must(t, err)
	_, err = user.Decrypt(ctx, "a", &kms.DecryptRequest{Name: "app-1", Ciphertext: dek[0].Ciphertext})
	must(t, err)
	_, err = user.KeyStatus(ctx, "a", &kms.KeyStatusRequest{Name: "other"})
	must(t, err)
	_, err = user.KeyStatus(ctx, "a", &kms.KeyStatusRequest{Name: "app-secret"})
	wantErr(t, err, kms.ErrPermission) // denied explicitly
	_, err = user.GenerateKey(ctx, "a", &kms.GenerateKeyRequest{Name: "other"})
	wantErr(t, err, kms.ErrPermission) // pattern does not match
	wantErr(t, user.CreateKey(ctx, "a", &kms.CreateKeyRequest{Name: "app-2"}), kms.ErrPermission)
	wantErr(t, user.DeleteKey(ctx, "a", &kms.DeleteKeyRequest{Name: "app-1"}), kms.ErrPermission)
	wantErr(t, user.ImportKey(ctx, "a", &kms.ImportKeyRequest{Name: "app-3", Key: make([]byte, 32)}), kms.ErrPermission)
	wantErr(t, user.CreatePolicy(ctx, "a", &kms.CreatePolicyRequest{Name: "mine"}), kms.ErrPermission)
	_, err = user.GenerateKey(ctx, "b", &kms.GenerateKeyRequest{Name: "b-key"})
	wantErr(t, err, kms.ErrPermission)
	p, err := user.ListKeys(ctx, &kms.ListRequest{Enclave: "a"})
	must(t, err)
	if len(p.Items) != 2 || p.Items[0].Name != "app-1" || p.Items[1].Name != "app-secret" {
		t.Fatalf("user list shows %+v", p.Items)
	}

	// Identity and policy inspection.
	ids, err := admin.GetIdentity(ctx, "a", &kms.IdentityRequest{Identity: userKey.Identity()})
	must(t, err)
	if ids[0].Identity != userKey.Identity() || ids[0].Privilege != kms.User || ids[0].Policy != "app" || ids[0].CreatedBy != adminKey.Identity() {
		t.Fatalf("identity = %+v", ids[0])
	}
	il, err := admin.ListIdentities(ctx, &kms.ListRequest{Enclave: "a"})
	must(t, err)
	if len(il.Items) != 2 {
		t.Fatalf("identities: %d", len(il.Items))
	}
	pol, err := admin.GetPolicy(ctx, "a", &kms.PolicyRequest{Name: "app"})
	must(t, err)
	if _, ok := pol[0].Allow[cmds.KeyGenerate]["app-*"]; !ok || len(pol[0].Allow) != 4 || len(pol[0].Deny) != 1 || pol[0].CreatedBy != adminKey.Identity() {
		t.Fatalf("policy = %+v", pol[0])
	}
	ps, err := admin.PolicyStatus(ctx, "a", &kms.PolicyRequest{Name: "app"})
	must(t, err)
	if ps[0].Name != "app" {
		t.Fatalf("policy status %+v", ps[0])
	}
	pl, err := admin.ListPolicies(ctx, &kms.ListRequest{Enclave: "a"})
	must(t, err)
	if len(pl.Items) != 1 || pl.Items[0].Name != "app" {
		t.Fatalf("policies %+v", pl.Items)
	}
	_, err = admin.GetPolicy(ctx, "a", &kms.PolicyRequest{Name: "nope"})
	wantErr(t, err, kms.ErrPolicyNotFound)
	_, err = admin.GetIdentity(ctx, "b", &kms.IdentityRequest{Identity: userKey.Identity()})
	wantErr(t, err, kms.ErrPermission)

	// Deleting the policy revokes; deleting the identity removes it.
	must(t, admin.DeletePolicy(ctx, "a", &kms.DeletePolicyRequest{Name: "app"}))
	wantErr(t, admin.DeletePolicy(ctx, "a", &kms.DeletePolicyRequest{Name: "app"}), kms.ErrPolicyNotFound)
	_, err = user.GenerateKey(ctx, "a", &kms.GenerateKeyRequest{Name: "app-1"})
	wantErr(t, err, kms.ErrPermission)
	must(t, admin.DeleteIdentity(ctx, "a", &kms.DeleteIdentityRequest{Identity: userKey.Identity()}))
	wantErr(t, admin.DeleteIdentity(ctx, "a", &kms.DeleteIdentityRequest{Identity: userKey.Identity()}), kms.ErrIdentityNotFound)
	_, err = admin.GetIdentity(ctx, "a", &kms.IdentityRequest{Identity: userKey.Identity()})
	wantErr(t, err, kms.ErrIdentityNotFound)

	// An unknown API key may do nothing, not even read its own enclave list.
	stranger := newClient(t, s, newAPIKey(t).String())
	_, err = stranger.ListKeys(ctx, &kms.ListRequest{Enclave: "a"})
	wantErr(t, err, kms.ErrPermission)
	wantErr(t, stranger.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "x"}), kms.ErrPermission)

	// Root sees the global SysAdmin identities (itself).
	rl, err := root.ListIdentities(ctx, &kms.ListRequest{})
	must(t, err)
	if len(rl.Items) != 1 || rl.Items[0].Privilege != kms.SysAdmin || rl.Items[0].Identity != mustKey(t, s.RootAPIKey()).Identity() {
		t.Fatalf("root identities %+v", rl.Items)
	}
	// A second SysAdmin (no enclave) can manage enclaves.
	sysKey := newAPIKey(t)
	must(t, root.CreateIdentity(ctx, "", &kms.CreateIdentityRequest{Identity: sysKey.Identity(), Privilege: kms.SysAdmin}))
	must(t, newClient(t, s, sysKey.String()).CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "c"}))
}

func TestPersistence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s1, err := Start(Config{Addr: "127.0.0.1:0", Dir: dir})
	must(t, err)
	rootKey := s1.RootAPIKey()
	ca1, _ := os.ReadFile(s1.CAFile())
	c := newClient(t, s1, rootKey)
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "k", Type: kms.ChaCha20}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "k", AddVersion: true}))
	must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "imp", Type: kms.AES256, Key: bytes.Repeat([]byte{7}, 32)}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "gone"}))
	must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "gone", AllVersions: true}))
	userKey := newAPIKey(t)
	must(t, c.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: userKey.Identity(), Privilege: kms.User}))
	must(t, c.CreatePolicy(ctx, "e", &kms.CreatePolicyRequest{Name: "p", Allow: map[cmds.Command]kms.RuleSet{cmds.KeyGenerate: {"k": {}}}}))
	must(t, c.AssignPolicy(ctx, "e", &kms.AssignPolicyRequest{Policy: "p", Identity: userKey.Identity()}))
	dek, err := c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: "k", Version: 1})
	must(t, err)
	must(t, s1.Close())

	// Files hold secrets: 0600 files in a 0700 directory.
	for _, name := range []string{rootKeyFile, caKeyFile, serverKeyFile, stateFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		must(t, err)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", name, fi.Mode().Perm())
		}
	}

	s2 := startServer(t, Config{Dir: dir, Hosts: []string{"kms.example.net"}})
	ca2, _ := os.ReadFile(s2.CAFile())
	if s2.RootAPIKey() != rootKey || !bytes.Equal(ca1, ca2) {
		t.Fatal("root key or CA changed across restart")
	}
	c = newClient(t, s2, rootKey) // also proves the re-issued server cert chains to the same CA
	st, err := c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "k"}, &kms.KeyStatusRequest{Name: "k", Version: 1}, &kms.KeyStatusRequest{Name: "imp"})
	must(t, err)
	if st[0].Version != 2 || st[0].Type != kms.ChaCha20 || st[1].Version != 1 || st[2].Type != kms.AES256 {
		t.Fatalf("after restart: %+v %+v %+v", st[0], st[1], st[2])
	}
	_, err = c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "gone"})
	wantErr(t, err, kms.ErrKeyNotFound)
	pt, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: "k", Ciphertext: dek[0].Ciphertext})
	must(t, err)
	if !bytes.Equal(pt[0].Plaintext, dek[0].Plaintext) {
		t.Fatal("plaintext changed across restart")
	}
	impKey := kescrypto.Key{Algorithm: kescrypto.AES256, Material: bytes.Repeat([]byte{7}, 32)}
	ct, _ := kescrypto.SealMsgpack(impKey, []byte("hello"), nil)
	if pt, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: "imp", Ciphertext: ct}); err != nil || string(pt[0].Plaintext) != "hello" {
		t.Fatalf("imported key after restart: %v", err)
	}
	user := newClient(t, s2, userKey.String())
	if _, err := user.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: "k"}); err != nil {
		t.Fatalf("user policy lost across restart: %v", err)
	}
	if !slices.Contains(mustServerCert(t, dir).DNSNames, "kms.example.net") {
		t.Fatal("server certificate not re-issued for new host")
	}
}

func TestTornLogRecordIsDropped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s1, err := Start(Config{Addr: "127.0.0.1:0", Dir: dir})
	must(t, err)
	c := newClient(t, s1, s1.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	must(t, s1.Close())
	f, err := os.OpenFile(filepath.Join(dir, stateFile), os.O_APPEND|os.O_WRONLY, 0)
	must(t, err)
	f.WriteString(`{"op":"enclave.create","n":"torn"`) // crash mid-write
	f.Close()

	s2 := startServer(t, Config{Dir: dir})
	c = newClient(t, s2, s2.RootAPIKey())
	p, err := c.ListEnclaves(ctx, &kms.ListRequest{})
	must(t, err)
	if len(p.Items) != 1 || p.Items[0].Name != "e" {
		t.Fatalf("enclaves %+v", p.Items)
	}
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "f"})) // log still appendable
}

func TestFaultInjection(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{FaultErrorRate: 1})
	c := newClient(t, s, s.RootAPIKey())
	err := c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"})
	ke, ok := errors.AsType[kms.Error](err)
	if !ok || ke.Code != http.StatusServiceUnavailable || !strings.Contains(ke.Err, "injected fault") {
		t.Fatalf("error rate 1: %v", err)
	}
	if _, err := c.Version(ctx, &kms.VersionRequest{}); err != nil { // GET is not faulted
		t.Fatal(err)
	}

	s = startServer(t, Config{FaultDropRate: 1})
	c = newClient(t, s, s.RootAPIKey())
	err = c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"})
	if err == nil {
		t.Fatal("drop rate 1: request succeeded")
	}
	if _, isAPIError := errors.AsType[kms.Error](err); isAPIError {
		t.Fatalf("drop rate 1: got an HTTP error response %v, want a network error", err)
	}

	s = startServer(t, Config{FaultLatency: 300 * time.Millisecond})
	c = newClient(t, s, s.RootAPIKey())
	must(t, c.Live(ctx, &kms.LivenessRequest{})) // warm up the connection
	start := time.Now()
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("latency %v", d)
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "k"}))
	hc := rawClient(t, s, s.RootAPIKey())
	url := s.URL() + "/v1/kms/e"
	const bin = "application/octet-stream"

	good := encodeFrame(t, cmds.KeyCreate, &pb.CreateKeyRequest{Name: "never"})
	cases := []struct {
		name   string
		body   []byte
		status int
		msg    string
	}{
		{"empty body", nil, 400, "malformed request: empty body"},
		{"short header", []byte{0, 201, 0}, 400, "truncated command frame header"},
		{"length beyond body", append(frameHeader(201, 100), 1, 2, 3), 400, "declares 100 bytes"},
		{"garbage protobuf", append(frameHeader(201, 3), 0xff, 0xff, 0xff), 400, "invalid arguments for command KEY:CREATE"},
		{"unknown command", frameHeader(999, 0), 400, "unknown command"},
		{"valid then unknown", append(slices.Clone(good), frameHeader(999, 0)...), 400, "unknown command"},
		{"valid then malformed", append(slices.Clone(good), 0, 201), 400, "truncated"},
		{"oversized", append(frameHeader(201, 2<<20), make([]byte, 2<<20)...), 413, "request body too large"},
		{"unsupported", encodeFrame(t, cmds.ClusterAddNode, &pb.AddClusterNodeRequest{Host: "x"}), 501, "not supported"},
	}
	for _, tc := range cases {
		r := post(t, hc, url, bin, tc.body)
		if r.status != tc.status || r.length == "" {
			t.Errorf("%s: status %d (Content-Length %q), want %d", tc.name, r.status, r.length, tc.status)
			continue
		}
		if m := errMessage(t, r); !strings.Contains(m, tc.msg) {
			t.Errorf("%s: message %q, want %q", tc.name, m, tc.msg)
		}
	}
	if m := errMessage(t, post(t, hc, url, bin, frameHeader(999, 0))); m != "unknown command" {
		t.Errorf("unknown command message %q", m)
	}

	// Without octet-stream the error is JSON {"message"}.
	r := post(t, hc, url, "", frameHeader(999, 0))
	var js struct{ Message string }
	if r.status != 400 || r.contentType != "application/json" || json.Unmarshal(r.body, &js) != nil || js.Message != "unknown command" {
		t.Errorf("JSON error: %d %s %s", r.status, r.contentType, r.body)
	}
	// GET on the command endpoint.
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	resp, err := hc.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 405 {
		t.Errorf("GET /v1/kms/e: %d", resp.StatusCode)
	}

	// An unknown API key is answered 403 with the vendor's message.
	r = post(t, rawClient(t, s, newAPIKey(t).String()), url, bin, good)
	if r.status != 403 || errMessage(t, r) != kms.ErrPermission.Err {
		t.Errorf("unknown API key: %d %q", r.status, r.body)
	}

	// Nothing changed: only "k" exists, and the server still works.
	p, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: "e"})
	must(t, err)
	if len(p.Items) != 1 || p.Items[0].Name != "k" {
		t.Fatalf("state changed by bad input: %+v", p.Items)
	}
}

// Encrypt is tested at the frame level: the vendor client decodes the
// answer with the KeyStatus code (DOMAIN B1 caveat).
func TestEncryptFrames(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "k"}))
	hc := rawClient(t, s, s.RootAPIKey())

	body := encodeFrame(t, cmds.KeyEncrypt, &pb.EncryptRequest{Name: "k", Plaintext: []byte("one"), AssociatedData: []byte("ad")})
	body = append(body, encodeFrame(t, cmds.KeyEncrypt, &pb.EncryptRequest{Name: "k", Plaintext: []byte("two")})...)
	r := post(t, hc, s.URL()+"/v1/kms/e", "application/octet-stream", body)
	if r.status != 200 || r.contentType != "application/octet-stream" || r.length == "" || r.proto != 2 {
		t.Fatalf("encrypt: %d %s len %q HTTP/%d", r.status, r.contentType, r.length, r.proto)
	}
	var resps []*pb.EncryptResponse
	for b := r.body; len(b) > 0; {
		var m pb.EncryptResponse
		rest, err := cmds.DecodePB(b, cmds.KeyEncrypt, &m) // same command code as the request
		must(t, err)
		resps = append(resps, &m)
		b = rest
	}
	if len(resps) != 2 || resps[0].Version != 1 {
		t.Fatalf("got %d responses", len(resps))
	}
	for i, want := range []string{"one", "two"} {
		ad := []byte("ad")
		if i == 1 {
			ad = nil
		}
		pt, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: "k", Ciphertext: resps[i].Ciphertext, AssociatedData: ad})
		if err != nil || string(pt[0].Plaintext) != want {
			t.Fatalf("decrypt %d: %v", i, err)
		}
	}

	// The vendor client's bug, documented: it expects code 204 in the answer.
	_, err := c.Encrypt(ctx, "e", &kms.EncryptRequest{Name: "k", Plaintext: []byte("x")})
	if err == nil || !strings.Contains(err.Error(), "KEY:ENCRYPT") {
		t.Fatalf("kms-go Encrypt: %v (if this passes, the client bug was fixed)", err)
	}

	r = post(t, hc, s.URL()+"/v1/kms/e", "application/octet-stream", encodeFrame(t, cmds.KeyEncrypt, &pb.EncryptRequest{Name: "nope"}))
	if r.status != 404 || errMessage(t, r) != kms.ErrKeyNotFound.Err {
		t.Fatalf("encrypt missing key: %d", r.status)
	}
}

func TestIdentityPathIsEnclaveScoped(t *testing.T) {
	t.Parallel()
	s := startServer(t, Config{})
	root := newClient(t, s, s.RootAPIKey())
	must(t, root.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "a"}))
	k := newAPIKey(t)
	// An Admin identity needs an enclave; none given is rejected.
	err := root.CreateIdentity(ctx, "", &kms.CreateIdentityRequest{Identity: k.Identity(), Privilege: kms.Admin})
	if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != 400 {
		t.Fatalf("admin without enclave: %v", err)
	}
	_, err = root.GetIdentity(ctx, "a", &kms.IdentityRequest{Identity: k.Identity()})
	wantErr(t, err, kms.ErrIdentityNotFound)
	// Deleting the enclave removes its identities.
	must(t, root.CreateIdentity(ctx, "a", &kms.CreateIdentityRequest{Identity: k.Identity(), Privilege: kms.Admin}))
	must(t, root.DeleteEnclave(ctx, &kms.DeleteEnclaveRequest{Name: "a"}))
	must(t, root.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "a"}))
	wantErr(t, newClient(t, s, k.String()).CreateKey(ctx, "a", &kms.CreateKeyRequest{Name: "x"}), kms.ErrPermission)
}

func mustKey(t testing.TB, s string) mtls.PrivateKey {
	t.Helper()
	k, err := mtls.ParsePrivateKey(s)
	must(t, err)
	return k
}

// Records which paths the vendor client uses, and that the log never
// carries key material or API keys.
func TestRequestLogAndPaths(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var lines []string
	s := startServer(t, Config{Logf: func(f string, a ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(f, a...))
		mu.Unlock()
	}})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	material := bytes.Repeat([]byte{0xAB}, 32)
	must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "k", Type: kms.AES256, Key: material}))
	mu.Lock()
	defer mu.Unlock()
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, "POST /v1/kms identity=") || !strings.Contains(all, "cmds=ENCLAVE:CREATE") {
		t.Errorf("enclave command path not /v1/kms:\n%s", all)
	}
	if !strings.Contains(all, "POST /v1/kms/e identity=") || !strings.Contains(all, "cmds=KEY:IMPORT status=200") {
		t.Errorf("key command path not /v1/kms/e:\n%s", all)
	}
	seed := strings.TrimPrefix(s.RootAPIKey(), "k1:")
	if strings.Contains(all, seed) || strings.Contains(all, "q6urq6urq6urq6ur") || strings.Contains(all, "\xab\xab\xab") {
		t.Errorf("log leaks secrets:\n%s", all)
	}
}

func TestLogCompaction(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s1, err := Start(Config{Addr: "127.0.0.1:0", Dir: dir, Readings: Readings{DeletedNames: DeletedReusable}})
	must(t, err)
	c := newClient(t, s1, s1.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	for range 600 {
		must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "tmp"}))
		must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "tmp"}))
	}
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "kept"}))
	dek, err := c.GenerateKey(ctx, "e", &kms.GenerateKeyRequest{Name: "kept"})
	must(t, err)
	must(t, s1.Close())

	s2 := startServer(t, Config{Dir: dir})
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	must(t, err)
	// the enclave, the kept key, and the deleted name (a tombstone)
	if n := bytes.Count(data, []byte("\n")); n != 3 {
		t.Fatalf("compacted log has %d records, want 3", n)
	}
	c = newClient(t, s2, s2.RootAPIKey())
	// s2 runs the default reading: the deleted name survived compaction
	wantErr(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "tmp"}), kms.ErrKeyExists)
	pt, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: "kept", Ciphertext: dek[0].Ciphertext})
	if err != nil || !bytes.Equal(pt[0].Plaintext, dek[0].Plaintext) {
		t.Fatalf("after compaction: %v", err)
	}
	must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "after"})) // appending still works
	must(t, s2.Close())
	s3 := startServer(t, Config{Dir: dir})
	if _, err := newClient(t, s3, s3.RootAPIKey()).KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "after"}); err != nil {
		t.Fatal(err)
	}
}

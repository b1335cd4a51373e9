package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"
	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/internal/testenv"
)

func TestVaultListPath(t *testing.T) {
	for _, c := range []struct {
		conf kesconf.VaultKeyStore
		want string
	}{
		{kesconf.VaultKeyStore{}, "kv"}, // KES's defaults: engine kv, version v1
		{kesconf.VaultKeyStore{Prefix: "kes"}, "kv/kes"},
		{kesconf.VaultKeyStore{Engine: "secret", APIVersion: "v1", Prefix: "minio/kes/"}, "secret/minio/kes"},
		{kesconf.VaultKeyStore{Engine: "kv2", APIVersion: "v2"}, "kv2/metadata"},
		{kesconf.VaultKeyStore{Engine: "kv2", APIVersion: "v2", Prefix: "/kes"}, "kv2/metadata/kes"},
	} {
		if got := vaultListPath(&c.conf); got != c.want {
			t.Errorf("vaultListPath(%+v) = %q, want %q", c.conf, got, c.want)
		}
	}
}

func TestVaultLoginOf(t *testing.T) {
	jwtFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(jwtFile, []byte("eyJ.from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		conf     kesconf.VaultKeyStore
		path, ns string
		body     map[string]any
	}{
		{"approle defaults", kesconf.VaultKeyStore{AppRole: &kesconf.VaultAppRoleAuth{ID: "r", Secret: "s"}},
			"auth/approle/login", "", map[string]any{"role_id": "r", "secret_id": "s"}},
		{"approle in the store's namespace", kesconf.VaultKeyStore{Namespace: "team", AppRole: &kesconf.VaultAppRoleAuth{Engine: "kes-approle", ID: "r", Secret: "s"}},
			"auth/kes-approle/login", "team", map[string]any{"role_id": "r", "secret_id": "s"}},
		{"approle in the root namespace", kesconf.VaultKeyStore{Namespace: "team", AppRole: &kesconf.VaultAppRoleAuth{Namespace: "/", ID: "r", Secret: "s"}},
			"auth/approle/login", "", map[string]any{"role_id": "r", "secret_id": "s"}},
		{"kubernetes with a JWT file", kesconf.VaultKeyStore{Kubernetes: &kesconf.VaultKubernetesAuth{Namespace: "ops", Role: "kes", JWT: jwtFile}},
			"auth/kubernetes/login", "ops", map[string]any{"role": "kes", "jwt": "eyJ.from-file"}},
		{"kubernetes with an inline JWT", kesconf.VaultKeyStore{Kubernetes: &kesconf.VaultKubernetesAuth{Engine: "k8s", Role: "kes", JWT: "eyJ.inline"}},
			"auth/k8s/login", "", map[string]any{"role": "kes", "jwt": "eyJ.inline"}},
	} {
		l, err := vaultLoginOf(&c.conf)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if l.path != c.path || l.namespace != c.ns {
			t.Errorf("%s: login at %q in namespace %q, want %q in %q", c.name, l.path, l.namespace, c.path, c.ns)
		}
		for k, v := range c.body {
			if l.body[k] != v {
				t.Errorf("%s: login body %s = %v, want %v", c.name, k, l.body[k], v)
			}
		}
	}
	if _, err := vaultLoginOf(&kesconf.VaultKeyStore{}); err == nil {
		t.Error("vaultLoginOf without an auth method: no error")
	}
	if _, err := vaultLoginOf(&kesconf.VaultKeyStore{Kubernetes: &kesconf.VaultKubernetesAuth{JWT: filepath.Join(t.TempDir(), "missing")}}); err == nil {
		t.Error("vaultLoginOf with a missing JWT file: no error")
	}
}

// A token without the list capability: the error carries Vault's reason and
// the policy rule that fixes it, and never the AppRole secret.
func TestVaultListErrorNamesTheFix(t *testing.T) {
	conf := &kesconf.VaultKeyStore{Endpoint: "http://127.0.0.1:8200", Engine: "kv2", APIVersion: "v2", Prefix: "kes",
		AppRole: &kesconf.VaultAppRoleAuth{ID: "role-id", Secret: "super-secret-id"}}
	login, err := vaultLoginOf(conf)
	if err != nil {
		t.Fatal(err)
	}
	denied := &vaultapi.ResponseError{HTTPMethod: "LIST", URL: "http://127.0.0.1:8200/v1/kv2/metadata/kes", StatusCode: 403,
		Errors: []string{"1 error occurred:\n\t* permission denied\n\n"}}
	got := vaultListError(conf, vaultListPath(conf), login, denied).Error()
	for _, want := range []string{"list kv2/metadata/kes/ at Vault http://127.0.0.1:8200", "Vault answered 403: permission denied",
		"the Vault policy of the AppRole in the KES config lacks the list capability on kv2/metadata/kes/", `path "kv2/metadata/kes/" { capabilities = ["list"] }`} {
		if !strings.Contains(got, want) {
			t.Errorf("403 error %q does not say %q", got, want)
		}
	}
	bad := &vaultapi.ResponseError{HTTPMethod: "PUT", StatusCode: 400, Errors: []string{"invalid role or secret ID"}}
	got = vaultLoginError(conf, login, bad).Error()
	for _, want := range []string{"log in to Vault at http://127.0.0.1:8200 with AppRole", "Vault answered 400: invalid role or secret ID", "approle id and secret"} {
		if !strings.Contains(got, want) {
			t.Errorf("login error %q does not say %q", got, want)
		}
	}
	for _, e := range []error{vaultListError(conf, "kv2/metadata/kes", login, denied), vaultLoginError(conf, login, bad), vaultLoginError(conf, login, errors.New("dial tcp: refused"))} {
		if strings.Contains(e.Error(), "super-secret-id") {
			t.Errorf("error shows the AppRole secret: %v", e)
		}
	}
}

// Vault lists a folder below the prefix with a trailing '/': every step
// leaves it out as not a key.
func TestVaultFolderIsNotAKey(t *testing.T) {
	if why := notKeyReason("", 0, "archive/"); !strings.Contains(why, "a folder below the key store's prefix") {
		t.Errorf("notKeyReason(archive/) = %q", why)
	}
	if why := notKeyReason("", 0, "key-00001"); why != "" {
		t.Errorf("notKeyReason(key-00001) = %q", why)
	}
}

// The errors of KES's stores' Get that are about one entry: the entry is
// broken (named, never migrated) or not a KES key (counted); any other
// error stops the step. The AWS and GCP texts are the ones KES v0.24's
// stores build (aws/secrets-manager.go, gcp/secret-manager.go Get) around
// their SDKs' errors: no AWS or GCP service runs here.
func TestUnreadable(t *testing.T) {
	for _, c := range []struct {
		err   string
		class Class
		says  string
	}{
		{"vault: failed to read 'kes/stray': entry exists but no secret key is present", ClassForeign, "no field named after it"},
		{"vault: failed to read 'kes/x': invalid K/V format", ClassForeign, "not a string"},
		{"vault: failed to read 'kes/x': key is encrypted with vault transit key", ClassBroken, "transit key"},
		{"aws: cannot access 'app/db': DecryptionFailure: Access to KMS is not allowed", ClassBroken, "DecryptionFailure"},
		{"gcp: failed to read 'app-db': rpc error: code = FailedPrecondition desc = Secret Version [projects/1/secrets/app-db/versions/1] is in DESTROYED state.", ClassForeign, "version 1"},
		{"gcp: failed to read 'key-1': rpc error: code = Unavailable desc = connection refused", ClassKey, ""},
		{"aws: failed to read 'key-1': RequestError: send request failed", ClassKey, ""},
		{"vault: failed to read 'kes/x': Error making API request. Code: 403", ClassKey, ""},
		{"dial tcp 127.0.0.1:8200: connection refused", ClassKey, ""},
	} {
		class, got := Unreadable(errors.New(c.err))
		if class != c.class || (c.says == "") != (got == "") || !strings.Contains(got, c.says) {
			t.Errorf("Unreadable(%q) = %d, %q; want %d, saying %q", c.err, class, got, c.class, c.says)
		}
	}
	if class, why := Unreadable(nil); class != ClassKey || why != "" {
		t.Errorf("Unreadable(nil) = %d, %q", class, why)
	}
}

func TestVaultReason(t *testing.T) {
	for in, want := range map[string]string{
		"1 error occurred:\n\t* permission denied\n\n": "permission denied",
		"2 errors occurred:\n\t* a\n\t* b\n\n":         "a; b",
		"invalid role or secret ID":                    "invalid role or secret ID",
		"":                                             "no reason given",
		"1 error occurred:\n\t* no handler for route \"kv3/x\"\n": `no handler for route "kv3/x"`,
	} {
		if got := vaultReason(in); got != want {
			t.Errorf("vaultReason(%q) = %q, want %q", in, got, want)
		}
	}
}

// listVaultNames against a real Vault: kv v1 and v2 under a prefix, with a
// folder below it, logging in with an AppRole as KES would; a policy without
// list and a wrong secret id give Vault's reason and the fix.
func TestListVaultNamesRealVault(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	root, err := v.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, kv := range []testenv.VaultKV{testenv.VaultKV1, testenv.VaultKV2} {
		t.Run(kv.Engine, func(t *testing.T) {
			var want []string
			for i := range 5 {
				name := fmt.Sprintf("key-%d", i)
				want = append(want, name)
				put(t, root, kv, "team/kes/"+name)
			}
			put(t, root, kv, "team/kes/archive/old-key")
			put(t, root, kv, "team/other/not-ours")
			want = append(want, "archive/")
			slices.Sort(want)

			role, err := v.CreateAppRole(ctx, "list-"+kv.Engine, testenv.KESPolicy(kv, "team/kes", false))
			if err != nil {
				t.Fatal(err)
			}
			conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: kv.Engine, APIVersion: kv.Version, Prefix: "team/kes",
				AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID}}
			got, err := listVaultNames(ctx, conf)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("listed %q, want %q", got, want)
			}

			// an empty prefix lists nothing, without error
			other, err := v.CreateAppRole(ctx, "empty-"+kv.Engine, testenv.KESPolicy(kv, "team/none", false))
			if err != nil {
				t.Fatal(err)
			}
			empty := *conf
			empty.Prefix = "team/none"
			empty.AppRole = &kesconf.VaultAppRoleAuth{ID: other.RoleID, Secret: other.SecretID}
			if names, err := listVaultNames(ctx, &empty); err != nil || len(names) != 0 {
				t.Errorf("empty prefix: %q, %v", names, err)
			}

			noList, err := v.CreateAppRole(ctx, "nolist-"+kv.Engine, testenv.KESPolicy(kv, "team/kes", true))
			if err != nil {
				t.Fatal(err)
			}
			denied := *conf
			denied.AppRole = &kesconf.VaultAppRoleAuth{ID: noList.RoleID, Secret: noList.SecretID}
			_, err = listVaultNames(ctx, &denied)
			where := vaultListPath(conf) + "/"
			if err == nil || !strings.Contains(err.Error(), "Vault answered 403: permission denied") ||
				!strings.Contains(err.Error(), fmt.Sprintf(`path %q { capabilities = ["list"] }`, where)) {
				t.Errorf("policy without list: %v", err)
			}
			// the rule the error gives is the fix
			if err := root.Sys().PutPolicyWithContext(ctx, noList.Name, noList.Policy+fmt.Sprintf("path %q { capabilities = [\"list\"] }\n", where)); err != nil {
				t.Fatal(err)
			}
			if got, err := listVaultNames(ctx, &denied); err != nil || !slices.Equal(got, want) {
				t.Errorf("with the rule added: %q, %v", got, err)
			}

			wrong := *conf
			wrong.AppRole = &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: "00000000-0000-0000-0000-000000000000"}
			_, err = listVaultNames(ctx, &wrong)
			if err == nil || !strings.Contains(err.Error(), "invalid role or secret ID") || strings.Contains(err.Error(), role.SecretID) {
				t.Errorf("wrong secret id: %v", err)
			}
		})
	}
}

// put writes a KES-shaped entry (field = last path element) at p in kv.
func put(t *testing.T, c *vaultapi.Client, kv testenv.VaultKV, p string) {
	t.Helper()
	data := map[string]any{path.Base(p): "value"}
	full := kv.Engine + "/" + p
	if kv.Version == "v2" {
		data = map[string]any{"data": data}
		full = kv.Engine + "/data/" + p
	}
	if _, err := c.Logical().Write(full, data); err != nil {
		t.Fatalf("write %s at Vault: %v", full, err)
	}
}

// Vault over TLS: the listing trusts the CA the KES config names, and the
// operator's VAULT_* variables change nothing (VAULT_SKIP_VERIFY must not
// turn verification off, VAULT_TOKEN and VAULT_NAMESPACE must not be sent).
func TestListVaultNamesTLS(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{TLS: true})
	root, err := v.Client()
	if err != nil {
		t.Fatal(err)
	}
	put(t, root, testenv.VaultKV1, "kes/key-1")
	role, err := v.CreateAppRole(context.Background(), "tls", testenv.KESPolicy(testenv.VaultKV1, "kes", false))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_SKIP_VERIFY", "true")
	t.Setenv("VAULT_TOKEN", "not-a-token")
	t.Setenv("VAULT_NAMESPACE", "no-such-namespace")
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")
	conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: "kv1", Prefix: "kes", CAPath: v.CAFile,
		AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID}}
	got, err := listVaultNames(context.Background(), conf)
	if err != nil || !slices.Equal(got, []string{"key-1"}) {
		t.Fatalf("over TLS with the CA: %q, %v", got, err)
	}
	noCA := *conf
	noCA.CAPath = ""
	if _, err := listVaultNames(context.Background(), &noCA); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("over TLS without the CA, VAULT_SKIP_VERIFY set: %v; want a certificate error", err)
	}
}

// List on KES's own vault store against a real Vault: the listing
// is cross-checked through the Vault API, a folder is not a key, and a key
// created between KES's listing and Vault's is a refusal that names it.
func TestListKeyStoreVault(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	ctx := context.Background()
	role, err := v.CreateAppRole(ctx, "kes", testenv.KESPolicy(testenv.VaultKV2, "kes", false))
	if err != nil {
		t.Fatal(err)
	}
	conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: "kv2", APIVersion: "v2", Prefix: "kes",
		AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID}}
	ks, err := conf.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	for _, name := range []string{"key-1", "key-2"} {
		if err := ks.Create(ctx, name, []byte("material")); err != nil {
			t.Fatal(err)
		}
	}
	root, err := v.Client()
	if err != nil {
		t.Fatal(err)
	}
	put(t, root, testenv.VaultKV2, "kes/archive/old")

	l, err := List(ctx, ks, &kesconf.File{KeyStore: conf})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(l.Keys, []string{"key-1", "key-2"}) || len(l.NotKeys) != 1 || l.NotKeys[0].Name != "archive/" {
		t.Errorf("keys %q, not keys %+v", l.Keys, l.NotKeys)
	}
	if !strings.Contains(l.Check, "cross-checked by name against Vault's own listing of kv2/metadata/kes/ through the Vault API (3 entries)") {
		t.Errorf("check: %q", l.Check)
	}

	// a key created while the store is read
	_, err = List(ctx, createAfterList{ks, "key-3"}, &kesconf.File{KeyStore: conf})
	if err == nil || !strings.Contains(err.Error(), "only in Vault's own listing of kv2/metadata/kes/: key-3") {
		t.Errorf("a key created between the two listings: %v", err)
	}
}

// createAfterList is a KES key store whose List creates a key once it has
// listed: a key created at KES while the runbook reads the store.
type createAfterList struct {
	kesserver.KeyStore
	name string
}

func (c createAfterList) List(ctx context.Context, prefix string, n int) ([]string, string, error) {
	names, next, err := c.KeyStore.List(ctx, prefix, n)
	if err == nil {
		err = c.KeyStore.Create(ctx, c.name, []byte("material"))
	}
	return names, next, err
}

// Kubernetes auth logs in at the config's mount with the role and the JWT
// read from its file. No Kubernetes API is here to review the token, so the
// real Vault, having found the role, refuses the login for want of its
// Kubernetes configuration: the error says so, with Vault's reason, and
// never shows the JWT. (A successful Kubernetes login is not tested.)
func TestListVaultNamesKubernetesLogin(t *testing.T) {
	v := testenv.StartVault(t, testenv.VaultOptions{})
	ctx := context.Background()
	root, err := v.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, "k8s-kes", &vaultapi.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "auth/k8s-kes/role/kes", map[string]any{
		"bound_service_account_names": "kes", "bound_service_account_namespaces": "minio", "token_policies": "default",
	}); err != nil {
		t.Fatal(err)
	}
	jwt := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(jwt, []byte("eyJhbGciOiJSUzI1NiJ9.e30.c2lnbmF0dXJl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: "kv1", Prefix: "kes",
		Kubernetes: &kesconf.VaultKubernetesAuth{Engine: "k8s-kes", Role: "kes", JWT: jwt}}
	_, err = listVaultNames(ctx, conf)
	if err == nil {
		t.Fatal("Kubernetes login without a Kubernetes API: no error")
	}
	msg := err.Error()
	if !strings.Contains(msg, "log in to Vault at "+v.URL+" with Kubernetes (auth/k8s-kes/login): Vault answered") ||
		!strings.Contains(msg, "could not load backend configuration") || !strings.Contains(msg, "keystore.vault.kubernetes") {
		t.Errorf("error %q does not name the login and the settings to check", msg)
	}
	if strings.Contains(msg, "c2lnbmF0dXJl") {
		t.Errorf("error shows the JWT: %q", msg)
	}
}

package keystore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/minio/kes/kesconf"
)

// Defaults KES v0.24 applies to an unset keystore.vault field
// (internal/keystore/vault: EngineKV, APIv1, EngineAppRole, EngineKubernetes).
const (
	vaultDefaultEngine     = "kv"
	vaultDefaultAPIVersion = "v1"
	vaultDefaultAppRole    = "approle"
	vaultDefaultKubernetes = "kubernetes"
)

// vaultListPath is the Vault path whose LIST names every entry of a KES
// vault key store: "<engine>/<prefix>" for kv v1 and
// "<engine>/metadata/<prefix>" for kv v2, engine defaulting to "kv" and the
// version to "v1" as in KES v0.24 (internal/keystore/vault.Store.List).
// Vault checks a LIST against the path with a trailing slash, so the policy
// rule that allows it is for vaultListPath(conf) + "/".
func vaultListPath(conf *kesconf.VaultKeyStore) string {
	engine := vaultEngine(conf)
	if vaultAPIVersion(conf) == "v2" {
		return path.Join(engine, "metadata", conf.Prefix)
	}
	return path.Join(engine, conf.Prefix)
}

// vaultEngine is the kv engine's mount path, "kv" when unset as in KES.
func vaultEngine(conf *kesconf.VaultKeyStore) string {
	if conf.Engine == "" {
		return vaultDefaultEngine
	}
	return conf.Engine
}

func vaultAPIVersion(conf *kesconf.VaultKeyStore) string {
	if conf.APIVersion == "" {
		return vaultDefaultAPIVersion
	}
	return conf.APIVersion
}

// vaultLogin says how to log in to Vault the way KES does: the auth mount
// path ("auth/<engine>/login"), the namespace of the login request ("" for
// the root namespace) and its body (holds the AppRole secret or the
// Kubernetes JWT: never printed).
type vaultLogin struct {
	path      string
	namespace string
	method    string // "AppRole", "Kubernetes": for messages
	body      map[string]any
}

// vaultLoginOf builds the login KES v0.24 performs for conf
// (internal/keystore/vault/client.go): the auth method's namespace when set,
// "/" meaning the root namespace, else the store's namespace. A Kubernetes
// JWT that contains a slash is a file path, read here.
func vaultLoginOf(conf *kesconf.VaultKeyStore) (vaultLogin, error) {
	ns := func(authNS string) string {
		switch authNS {
		case "":
			return conf.Namespace
		case "/":
			return ""
		default:
			return authNS
		}
	}
	switch {
	case conf.AppRole != nil && conf.Kubernetes != nil:
		return vaultLogin{}, errors.New("the KES config names both approle and kubernetes auth for the vault key store; KES refuses that too: keep one")
	case conf.AppRole != nil:
		engine := conf.AppRole.Engine
		if engine == "" {
			engine = vaultDefaultAppRole
		}
		return vaultLogin{
			path:      path.Join("auth", engine, "login"),
			namespace: ns(conf.AppRole.Namespace),
			method:    "AppRole",
			body:      map[string]any{"role_id": conf.AppRole.ID, "secret_id": conf.AppRole.Secret},
		}, nil
	case conf.Kubernetes != nil:
		engine := conf.Kubernetes.Engine
		if engine == "" {
			engine = vaultDefaultKubernetes
		}
		jwt := conf.Kubernetes.JWT
		if strings.ContainsRune(jwt, '/') || strings.ContainsRune(jwt, os.PathSeparator) {
			b, err := os.ReadFile(jwt)
			if err != nil {
				return vaultLogin{}, fmt.Errorf("read the Kubernetes service account token for Vault: %w", err)
			}
			jwt = strings.TrimSpace(string(b))
		}
		return vaultLogin{
			path:      path.Join("auth", engine, "login"),
			namespace: ns(conf.Kubernetes.Namespace),
			method:    "Kubernetes",
			body:      map[string]any{"role": conf.Kubernetes.Role, "jwt": jwt},
		}, nil
	default:
		return vaultLogin{}, errors.New("the KES config names no auth method (approle or kubernetes) for the vault key store")
	}
}

// newVaultClient returns a Vault API client for conf's endpoint, TLS files
// and namespace, with no token. Unlike vaultapi.DefaultConfig it reads no
// VAULT_* environment variable: the operator's shell (VAULT_SKIP_VERIFY,
// VAULT_TOKEN, VAULT_NAMESPACE, VAULT_ADDR) must not change what is checked.
func newVaultClient(conf *kesconf.VaultKeyStore) (*vaultapi.Client, error) {
	if conf.Endpoint == "" {
		return nil, errors.New("the KES config names no vault endpoint")
	}
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		ForceAttemptHTTP2:   true,
		// A VaultReader's reads, many at once, each keep their connection
		// (HTTP/1.1 when Vault serves plain HTTP or no HTTP/2).
		MaxIdleConnsPerHost: VaultReads,
		IdleConnTimeout:     30 * time.Second,
	}
	cfg := &vaultapi.Config{
		Address: conf.Endpoint,
		HttpClient: &http.Client{
			Transport: transport,
			// Vault's client follows a standby's redirect itself.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		Timeout:      60 * time.Second,
		MinRetryWait: time.Second,
		MaxRetryWait: 1500 * time.Millisecond,
		MaxRetries:   2,
	}
	tlsFiles := &vaultapi.TLSConfig{ClientCert: conf.Certificate, ClientKey: conf.PrivateKey}
	if conf.CAPath != "" {
		// KES takes a directory as a CA path and a file as a CA file.
		fi, err := os.Stat(conf.CAPath)
		if err != nil {
			return nil, fmt.Errorf("read the Vault CA: %w", err)
		}
		if fi.IsDir() {
			tlsFiles.CAPath = conf.CAPath
		} else {
			tlsFiles.CACert = conf.CAPath
		}
	}
	if err := cfg.ConfigureTLS(tlsFiles); err != nil {
		return nil, fmt.Errorf("configure TLS for Vault: %w", err)
	}
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Vault client: %w", err)
	}
	// NewClient takes these two from the environment.
	c.ClearToken()
	c.ClearNamespace()
	if conf.Namespace != "" {
		c.SetNamespace(conf.Namespace)
	}
	return c, nil
}

// vaultLogIn logs in to conf's Vault as KES does (vaultLoginOf) and
// returns a client (newVaultClient) holding the token, or the login's error
// (vaultLoginError: never with the secret or the JWT).
func vaultLogIn(ctx context.Context, conf *kesconf.VaultKeyStore) (*vaultapi.Client, vaultLogin, error) {
	login, err := vaultLoginOf(conf)
	if err != nil {
		return nil, login, err
	}
	c, err := newVaultClient(conf)
	if err != nil {
		return nil, login, err
	}
	lc := c
	if login.namespace != conf.Namespace {
		lc = c.WithNamespace(login.namespace)
	}
	secret, err := lc.Logical().WriteWithContext(ctx, login.path, login.body)
	if err != nil {
		return nil, login, vaultLoginError(conf, login, err)
	}
	if secret == nil || secret.Auth == nil || secret.Auth.ClientToken == "" {
		return nil, login, fmt.Errorf("log in to Vault at %s (%s): Vault answered without a token", conf.Endpoint, login.path)
	}
	c.SetToken(secret.Auth.ClientToken)
	return c, login, nil
}

// revokeVaultToken revokes c's token, waiting at most 5 s: a failure leaves
// it to its TTL.
func revokeVaultToken(ctx context.Context, c *vaultapi.Client) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = c.Auth().Token().RevokeSelfWithContext(ctx, "")
}

// listVaultNames lists every entry name of a KES vault key store through the
// Vault API itself (github.com/hashicorp/vault/api), logging in as KES does
// (AppRole or Kubernetes, with the config's namespace): a second listing,
// independent of KES's code, for the completeness check.
//
// The names are what Vault's LIST answers at vaultListPath(conf), sorted;
// a name ending in "/" is a folder below the prefix, not a key. Vault's kv
// engines (v1 and v2) answer a LIST in one response: there is no page to
// follow. An empty or absent path gives no names.
//
// Errors say what Vault answered and how to fix it; a token whose policy
// lacks the list capability gets the policy rule to add. They never hold the
// AppRole secret, the JWT or the token.
func listVaultNames(ctx context.Context, conf *kesconf.VaultKeyStore) ([]string, error) {
	c, login, err := vaultLogIn(ctx, conf)
	if err != nil {
		return nil, err
	}
	// The token is ours alone; give it back rather than leave it to its TTL.
	defer revokeVaultToken(context.WithoutCancel(ctx), c)

	where := vaultListPath(conf)
	list, err := c.Logical().ListWithContext(ctx, where)
	if err != nil {
		return nil, vaultListError(conf, where, login, err)
	}
	if list == nil || list.Data == nil {
		return []string{}, nil // Vault answers 404 for a path with no entries
	}
	raw, ok := list.Data["keys"].([]any)
	if !ok {
		return nil, fmt.Errorf("list %s/ at Vault %s: the answer holds no list of keys (is %s a kv %s engine?)", where, conf.Endpoint, strings.SplitN(where, "/", 2)[0], vaultAPIVersion(conf))
	}
	names := make([]string, 0, len(raw))
	for _, v := range raw {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("list %s/ at Vault %s: a listed name is a %T, not a string", where, conf.Endpoint, v)
		}
		names = append(names, s)
	}
	slices.Sort(names)
	return names, nil
}

// VaultReads is how many reads to have in flight at a Vault store, each a
// round trip, and how many connections a VaultReader keeps open for them:
// 2,000 reads at 1 ms of round trip took 1.43 s 8 at once, 1.02 s 32 at
// once; at 5 ms 2.25 s and 1.34 s (a Vault on this 2-CPU machine, over TLS
// and HTTP/2).
const VaultReads = 32

// VaultReader reads the values of a KES vault key store through Vault's API
// over connections it keeps: KES's own vault store (kes@v0.24.0
// internal/keystore/vault, Connect) turns keep-alives off, so that each of
// its reads costs Vault a new TCP connection, and a TLS handshake where
// Vault serves HTTPS, as production Vaults do. Reading every key of a
// store of 1,000 that way made Vault's CPU the limit of a whole verified
// run (bench/migration, store shape "vault"). It logs in as KES does
// (vaultLoginOf) with a token of its own, which Close revokes.
type VaultReader struct {
	conf   *kesconf.VaultKeyStore
	client *vaultapi.Client
}

// NewVaultReader logs in to conf's Vault as KES does and returns a reader,
// or the login's error (vaultLogIn).
func NewVaultReader(ctx context.Context, conf *kesconf.VaultKeyStore) (*VaultReader, error) {
	c, _, err := vaultLogIn(ctx, conf)
	if err != nil {
		return nil, err
	}
	return &VaultReader{conf: conf, client: c}, nil
}

// Get returns the value KES's vault store's Get returns for name when that
// is a plain value: the string field named after the key in the kv v1
// secret PREFIX/NAME, or in version 1 of the kv v2 one (the version KES
// reads). ok is false for anything else (no such entry, no such field, a
// field that is not a string, a value sealed with a Vault transit key, any
// error): the caller then asks KES's store, which answers that case as KES
// does. Get is safe for concurrent use.
func (r *VaultReader) Get(ctx context.Context, name string) (value []byte, ok bool) {
	engine := vaultEngine(r.conf)
	location := path.Join(r.conf.Prefix, name)
	var entry *vaultapi.KVSecret
	var err error
	if vaultAPIVersion(r.conf) == "v2" {
		entry, err = r.client.KVv2(engine).GetVersion(ctx, location, 1)
	} else {
		entry, err = r.client.KVv1(engine).Get(ctx, location)
	}
	if err != nil || entry == nil {
		return nil, false
	}
	s, isString := entry.Data[name].(string)
	if !isString || strings.HasPrefix(s, "vault:v1:") {
		return nil, false
	}
	return []byte(s), true
}

// Close revokes the reader's token (within 5 s) and closes its idle
// connections: the client does not hand out its http.Client, and the copy
// CloneConfig makes shares its Transport (vault/api Client.CloneConfig).
func (r *VaultReader) Close() {
	revokeVaultToken(context.Background(), r.client)
	r.client.CloneConfig().HttpClient.CloseIdleConnections()
}

// VaultListRefusal lists a vault key store the way listVaultNames does and
// returns its error: nil for a store of another kind or one that lists.
func VaultListRefusal(ctx context.Context, conf *kesconf.File) error {
	v, ok := conf.KeyStore.(*kesconf.VaultKeyStore)
	if !ok {
		return nil
	}
	_, err := listVaultNames(ctx, v)
	return err
}

// entryProblems are the errors of KES v0.24's stores' Get that are
// properties of one entry, not failures to read the store, with what each
// makes of the entry. A Vault entry KES did not write (another
// application's, at KES's prefix) has no field named after it, or a field
// that is not a string (internal/keystore/vault.Store.Get); a KES key that
// KES sealed with a Vault transit key cannot be read without it. An AWS
// secret whose KMS key KES's credentials may not use (aws/secrets-manager.go
// Get: DecryptionFailure) may be KES's or not: it is named. A GCP secret
// whose version 1, the only one KES reads and writes, is disabled or
// destroyed (gcp/secret-manager.go Get: FailedPrecondition) is not one KES
// keeps: it deletes a key's whole secret.
var entryProblems = []struct {
	prefix, text string
	class        Class
	reason       string
}{
	{"", "entry exists but no secret key is present", ClassForeign, "a Vault entry with no field named after it, the field KES writes a key to"},
	{"", "invalid K/V format", ClassForeign, "a Vault entry whose field is not a string: not a value KES wrote"},
	{"", "key is encrypted with vault transit key", ClassBroken, "sealed with a Vault transit key, and the KES config names none: KES cannot read it"},
	{"aws: cannot access '", "", ClassBroken, "KES's credentials may not decrypt this secret (AWS DecryptionFailure): KES cannot read it"},
	{"gcp: failed to read '", "code = FailedPrecondition", ClassForeign, "its version 1, the only version KES reads, is disabled or destroyed: not a key KES keeps"},
}

// Unreadable says what an entry is whose read failed because of the entry
// itself (see entryProblems): ClassBroken or ClassForeign, with the reason.
// Any other failure gives ClassKey and "": it stops the step.
func Unreadable(err error) (Class, string) {
	if err == nil {
		return ClassKey, ""
	}
	msg := err.Error()
	for _, p := range entryProblems {
		if strings.HasPrefix(msg, p.prefix) && strings.Contains(msg, p.text) {
			return p.class, p.reason
		}
	}
	return ClassKey, ""
}

// vaultLoginError explains a failed login. Vault answers a wrong AppRole
// role or secret id with 400 "invalid role or secret ID" (not 403).
func vaultLoginError(conf *kesconf.VaultKeyStore, login vaultLogin, err error) error {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		reason := strings.Join(re.Errors, "; ")
		fix := "check the keystore.vault." + strings.ToLower(login.method) + " settings of the KES config against Vault"
		if login.method == "AppRole" {
			fix = "check keystore.vault.approle id and secret in the KES config (a secret_id may have expired or reached its use limit: generate a new one for the role)"
		}
		return fmt.Errorf("log in to Vault at %s with %s (%s): Vault answered %d: %s; %s", conf.Endpoint, login.method, login.path, re.StatusCode, vaultReason(reason), fix)
	}
	return fmt.Errorf("log in to Vault at %s with %s (%s): %w", conf.Endpoint, login.method, login.path, err)
}

// vaultListError explains a failed LIST. A 403 is a policy without the list
// capability (minio/minio#19372: MinIO keeps encrypting, nothing can list).
func vaultListError(conf *kesconf.VaultKeyStore, where string, login vaultLogin, err error) error {
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) {
		return fmt.Errorf("list %s/ at Vault %s: %w", where, conf.Endpoint, err)
	}
	reason := vaultReason(strings.Join(re.Errors, "; "))
	if re.StatusCode == http.StatusForbidden {
		who := "the AppRole"
		if login.method == "Kubernetes" {
			who = "the Kubernetes auth role"
		}
		return fmt.Errorf("list %s/ at Vault %s: Vault answered 403: %s; the Vault policy of %s in the KES config lacks the list capability on %s/: add it to that policy, e.g. path %q { capabilities = [\"list\"] }",
			where, conf.Endpoint, reason, who, where, where+"/")
	}
	return fmt.Errorf("list %s/ at Vault %s: Vault answered %d: %s", where, conf.Endpoint, re.StatusCode, reason)
}

// vaultReason turns Vault's multierror text ("1 error occurred:\n\t* permission
// denied\n\n") into one line.
func vaultReason(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		l = strings.TrimPrefix(l, "* ")
		if l == "" || strings.HasSuffix(l, "error occurred:") || strings.HasSuffix(l, "errors occurred:") {
			continue
		}
		parts = append(parts, l)
	}
	if len(parts) == 0 {
		return "no reason given"
	}
	return strings.Join(parts, "; ")
}

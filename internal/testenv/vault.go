package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
)

// Vault is a running HashiCorp Vault server in dev mode (in-memory storage,
// unsealed, plain HTTP on loopback), with a kv v1 engine mounted at "kv1/"
// and a kv v2 engine at "kv2/" and the AppRole auth method enabled. It is
// the key store behind KES in the vault tests: KES deployments mostly keep
// their keys in Vault (docs/domain.md, "KES stored keys").
type Vault struct {
	Version   string // VaultVersion
	URL       string // http://127.0.0.1:PORT (https with VaultOptions.TLS)
	CAFile    string // with VaultOptions.TLS: the CA of Vault's certificate
	RootToken string // the dev root token: test-only, for setting Vault up
	LogFile   string
	Dir       string

	proc *process
}

// VaultKV is a kv mount of the test Vault: its path and kv version.
type VaultKV struct {
	Engine  string // "kv1" or "kv2"
	Version string // "v1" or "v2" (KES's keystore.vault.version)
}

var (
	VaultKV1 = VaultKV{Engine: "kv1", Version: "v1"}
	VaultKV2 = VaultKV{Engine: "kv2", Version: "v2"}
)

// VaultOptions configures StartVault.
type VaultOptions struct {
	// TLS serves HTTPS with a CA of Vault's own (dev mode's -dev-tls),
	// whose certificate is then in Vault.CAFile.
	TLS bool
}

// StartVault starts a real Vault server and stops it when the test ends. It
// fails the test if the server cannot start or be set up.
func StartVault(t TB, opts VaultOptions) *Vault {
	t.Helper()
	skipShort(t, "a real Vault server")
	v, err := startVault(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartVault: %v", err)
	}
	return v
}

func startVault(t TB, opts VaultOptions) (*Vault, error) {
	bin, err := findBinary(binVault)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "vault-")
	if err != nil {
		return nil, err
	}
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	v := &Vault{
		Version:   binVault.Version,
		RootToken: "root-" + hex.EncodeToString(token),
		LogFile:   filepath.Join(dir, "vault.log"),
		Dir:       dir,
	}
	err = startWithPortRetry(func() error {
		port, err := freePort()
		if err != nil {
			return err
		}
		addr := "127.0.0.1:" + strconv.Itoa(port)
		v.URL = "http://" + addr
		args := []string{"server", "-dev", "-dev-root-token-id=" + v.RootToken,
			"-dev-listen-address=" + addr, "-dev-no-store-token", "-log-level=warn"}
		if opts.TLS {
			tlsDir := filepath.Join(dir, "tls")
			if err := os.MkdirAll(tlsDir, 0o700); err != nil {
				return err
			}
			v.URL = "https://" + addr
			v.CAFile = filepath.Join(tlsDir, "vault-ca.pem")
			args = append(args, "-dev-tls", "-dev-tls-cert-dir="+tlsDir)
		}
		// HOME: dev mode would write ~/.vault-token without
		// -dev-no-store-token; keep Vault out of the real home anyway.
		env := append(baseEnv("VAULT_", "HOME="), "HOME="+dir)
		v.proc, err = startProcess(procSpec{
			name:    "vault " + binVault.Version,
			path:    bin,
			args:    args,
			env:     env,
			dir:     dir,
			logFile: v.LogFile,
			ready: func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.URL+"/v1/sys/health", nil)
				if err != nil {
					return err
				}
				hc, err := v.httpClient() // the CA appears once Vault has started
				if err != nil {
					return err
				}
				resp, err := hc.Do(req)
				if err != nil {
					return err
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK { // 200: initialized, unsealed, active
					return fmt.Errorf("GET /v1/sys/health: %s", resp.Status)
				}
				return nil
			},
			readyTimeout: 60 * time.Second,
		})
		if err != nil && strings.Contains(logTail(v.LogFile, 40), "address already in use") {
			err = fmt.Errorf("%w: %v", errPortInUse, err)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(v.Stop)
	t.Logf("testenv: Vault %s at %s (log %s)", v.Version, v.URL, v.LogFile)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := v.setUp(ctx); err != nil {
		return nil, err
	}
	return v, nil
}

// setUp mounts kv1/ (kv v1) and kv2/ (kv v2) and enables AppRole auth.
func (v *Vault) setUp(ctx context.Context) error {
	c, err := v.Client()
	if err != nil {
		return err
	}
	for _, kv := range []VaultKV{VaultKV1, VaultKV2} {
		err := c.Sys().MountWithContext(ctx, kv.Engine, &vaultapi.MountInput{
			Type:    "kv",
			Options: map[string]string{"version": strings.TrimPrefix(kv.Version, "v")},
		})
		if err != nil {
			return fmt.Errorf("mount %s at Vault: %v", kv.Engine, err)
		}
	}
	if err := c.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		return fmt.Errorf("enable AppRole auth at Vault: %v", err)
	}
	return nil
}

// httpClient trusts CAFile, if any.
func (v *Vault) httpClient() (*http.Client, error) {
	if v.CAFile == "" {
		return &http.Client{Timeout: time.Minute}, nil
	}
	conf, err := clientTLS(v.CAFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: conf}}, nil
}

// Client returns a Vault API client with the root token. It reads no
// VAULT_* variable of the test's environment.
func (v *Vault) Client() (*vaultapi.Client, error) {
	hc, err := v.httpClient()
	if err != nil {
		return nil, err
	}
	c, err := vaultapi.NewClient(&vaultapi.Config{Address: v.URL, HttpClient: hc})
	if err != nil {
		return nil, err
	}
	c.ClearNamespace()
	c.SetToken(v.RootToken)
	return c, nil
}

// VaultAppRole is an AppRole of the test Vault with a policy for one KES key
// store: the role id and a secret id, the credentials KES logs in with.
type VaultAppRole struct {
	Name     string
	Policy   string // the policy's text
	RoleID   string
	SecretID string
}

// KESPolicy is the Vault policy KES needs for its keys under prefix in kv:
// create, read and delete on each key and, unless noList, list on the
// folder (Vault checks a LIST against the path with a trailing slash).
func KESPolicy(kv VaultKV, prefix string, noList bool) string {
	var b strings.Builder
	if kv.Version == "v2" {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"create\", \"read\", \"update\"]\n}\n", path.Join(kv.Engine, "data", prefix)+"/*")
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\", \"delete\"]\n}\n", path.Join(kv.Engine, "metadata", prefix)+"/*")
		if !noList {
			fmt.Fprintf(&b, "path %q {\n  capabilities = [\"list\"]\n}\n", path.Join(kv.Engine, "metadata", prefix)+"/")
		}
		return b.String()
	}
	fmt.Fprintf(&b, "path %q {\n  capabilities = [\"create\", \"read\", \"update\", \"delete\"]\n}\n", path.Join(kv.Engine, prefix)+"/*")
	if !noList {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"list\"]\n}\n", path.Join(kv.Engine, prefix)+"/")
	}
	return b.String()
}

// CreateAppRole writes policy as a Vault policy named name and an AppRole of
// that name whose tokens carry it, and returns the role's credentials.
func (v *Vault) CreateAppRole(ctx context.Context, name, policy string) (*VaultAppRole, error) {
	c, err := v.Client()
	if err != nil {
		return nil, err
	}
	if err := c.Sys().PutPolicyWithContext(ctx, name, policy); err != nil {
		return nil, fmt.Errorf("write Vault policy %s: %v", name, err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "auth/approle/role/"+name, map[string]any{
		"token_policies": []string{name},
		"token_ttl":      "1h",
	}); err != nil {
		return nil, fmt.Errorf("write Vault AppRole %s: %v", name, err)
	}
	s, err := c.Logical().ReadWithContext(ctx, "auth/approle/role/"+name+"/role-id")
	if err != nil || s == nil {
		return nil, fmt.Errorf("read role id of Vault AppRole %s: %v", name, err)
	}
	roleID, _ := s.Data["role_id"].(string)
	s, err = c.Logical().WriteWithContext(ctx, "auth/approle/role/"+name+"/secret-id", nil)
	if err != nil || s == nil {
		return nil, fmt.Errorf("generate secret id of Vault AppRole %s: %v", name, err)
	}
	secretID, _ := s.Data["secret_id"].(string)
	if roleID == "" || secretID == "" {
		return nil, fmt.Errorf("Vault AppRole %s: no role id or secret id in Vault's answer", name)
	}
	return &VaultAppRole{Name: name, Policy: policy, RoleID: roleID, SecretID: secretID}, nil
}

// KESKeyStore returns the keystore block of a KES config (YAML, indented for
// KESOptions.KeyStore) that keeps keys in kv under prefix and logs in with
// role; over TLS, it trusts CAFile.
func (v *Vault) KESKeyStore(kv VaultKV, prefix string, role *VaultAppRole) string {
	tls := ""
	if v.CAFile != "" {
		tls = fmt.Sprintf("    tls:\n      ca: %s\n", v.CAFile)
	}
	return fmt.Sprintf(`keystore:
  vault:
    endpoint: %s
    engine: %s
    version: %s
    prefix: %s
    approle:
      id: %s
      secret: %s
    status:
      ping: 10s
%s`, v.URL, kv.Engine, kv.Version, prefix, role.RoleID, role.SecretID, tls)
}

// Stop stops the server; its in-memory storage is gone with it.
func (v *Vault) Stop() {
	if v.proc != nil {
		v.proc.stop()
	}
}

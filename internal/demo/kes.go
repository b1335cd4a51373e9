package demo

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/kes-go"

	"github.com/runbook-dev/runbook/internal/devcert"
)

// KES is the demo's KES server, serving the bundled key store (an fs key
// store) as the object store's KMS before the cutover.
type KES struct {
	URL        string // https://127.0.0.1:PORT
	CAFile     string // the CA of its certificate
	ConfigFile string // the server config it runs with (the runbook reads its key store through it)
	Log        string
	APIKey     string // the admin's API key (kes:v1:…): lists keys for the runbook
	MinIOKey   string // MinIO's own API key, allowed what the KES docs give MinIO

	dir  string
	port int
	p    *proc
}

// minioPolicy is what MinIO's identity may do at KES: the policy of the KES
// documentation's MinIO integration (kes docs, "MinIO Object Storage"),
// /v1/status included so that MinIO can report its KMS status.
var minioPolicy = []string{
	"/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/bulk/decrypt",
	"/v1/key/list/*", "/v1/status", "/v1/metrics", "/v1/log/audit", "/v1/log/error",
}

const (
	kesAdminKeyFile = "admin.key" // 0600, like the emulator's root.key
	kesMinIOKeyFile = "minio.key"
)

// newKES writes KES's TLS material, API keys and config into dir, serving
// the key store at keyStore on 127.0.0.1:port.
func newKES(dir, keyStore string, port int) (*KES, error) {
	k := &KES{dir: dir, port: port, ConfigFile: filepath.Join(dir, "config.yaml"), Log: filepath.Join(dir, "kes.log")}
	tlsFiles, err := devcert.Generate(filepath.Join(dir, "tls"), "kes")
	if err != nil {
		return nil, fmt.Errorf("make KES's certificate: %w", err)
	}
	k.CAFile = tlsFiles.CAFile
	admin, err := kes.GenerateAPIKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	minio, err := kes.GenerateAPIKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	k.APIKey, k.MinIOKey = admin.String(), minio.String()
	for name, key := range map[string]string{kesAdminKeyFile: k.APIKey, kesMinIOKeyFile: k.MinIOKey} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(key+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("write KES's API keys: %w", err)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# The KES server of the runbook demo: the bundled key store, TLS, an admin\n# and MinIO's own identity with the policy of the KES docs.\nversion: v1\naddress: 127.0.0.1:%d\nadmin:\n  identity: %s\ntls:\n  key: %s\n  cert: %s\npolicy:\n  minio:\n    allow:\n",
		port, admin.Identity(), tlsFiles.KeyFile, tlsFiles.CertFile)
	for _, p := range minioPolicy {
		fmt.Fprintf(&b, "    - %s\n", p)
	}
	fmt.Fprintf(&b, "    identities:\n    - %s\nkeystore:\n  fs:\n    path: %s\n", minio.Identity(), keyStore)
	if err := os.WriteFile(k.ConfigFile, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("write KES's config: %w", err)
	}
	k.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	return k, nil
}

// openKES reads back what newKES wrote into dir.
func openKES(dir string, port int) (*KES, error) {
	k := &KES{dir: dir, port: port, ConfigFile: filepath.Join(dir, "config.yaml"), Log: filepath.Join(dir, "kes.log"),
		CAFile: filepath.Join(dir, "tls", "ca.pem"), URL: fmt.Sprintf("https://127.0.0.1:%d", port)}
	for name, dst := range map[string]*string{kesAdminKeyFile: &k.APIKey, kesMinIOKeyFile: &k.MinIOKey} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read KES's API keys: %w", err)
		}
		*dst = strings.TrimSpace(string(b))
	}
	return k, nil
}

// start runs the server and waits until it answers /version.
func (k *KES) start(ctx context.Context, bin string) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	addr := strings.TrimPrefix(k.URL, "https://")
	k.p, err = startProc("kes", k.dir, k.Log, serverEnv(), []string{bin, "server", "--config", k.ConfigFile, "--addr", addr})
	if err != nil {
		return err
	}
	err = k.p.waitReady(ctx, time.Minute, func(ctx context.Context) error {
		_, err := c.Version(ctx)
		return err
	})
	if err != nil {
		k.p.stop(5 * time.Second)
		return fmt.Errorf("start KES: %w", err)
	}
	return nil
}

// client is a kes-go client of the admin.
func (k *KES) client() (*kes.Client, error) {
	key, err := kes.ParseAPIKey(k.APIKey)
	if err != nil {
		return nil, err
	}
	cert, err := kes.GenerateCertificate(key)
	if err != nil {
		return nil, err
	}
	conf, err := clientTLS(k.CAFile)
	if err != nil {
		return nil, err
	}
	conf.Certificates = []tls.Certificate{cert}
	return kes.NewClientWithConfig(k.URL, conf), nil
}

// createKey creates name at KES, unless it is there.
func (k *KES) createKey(ctx context.Context, name string) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	if err := c.CreateKey(ctx, name); err != nil && !errors.Is(err, kes.ErrKeyExists) {
		return fmt.Errorf("create key %s at KES: %w", name, err)
	}
	return nil
}

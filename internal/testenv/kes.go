package testenv

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/minio/kes-go"
)

// KESOptions configures StartKES.
type KESOptions struct {
	// V023 starts KES v0.23.0 (JSON stored keys, msgpack ciphertexts)
	// instead of v0.24.0 (protobuf stored keys, raw ciphertexts).
	V023 bool
	// V022 starts KES v0.22.3 instead: the API before KES's refactor of
	// 2023-10-24 (keys listed by glob as a stream of JSON lines, glob
	// policies, a self-description for every identity), JSON stored keys.
	// It runs with --auth off, as KES v0.22 must to take the self-signed
	// client certificates of API keys.
	V022 bool

	// KeyStoreDir is the fs key store directory. Empty means a new
	// directory in the test's temp dir. Pointing a second server at the
	// directory of a stopped one restarts KES on the same keys.
	KeyStoreDir string

	// Keys creates this many keys (named KeyPrefix + "%05d") after the
	// server is ready, through the KES API.
	Keys      int
	KeyPrefix string // default "key-"

	// KeyStore replaces the fs key store: the whole top-level keystore
	// block of the kesconf YAML (see Vault.KESKeyStore). KeyStoreDir is
	// then unused.
	KeyStore string

	// ConfigExtra is appended verbatim to the generated kesconf YAML
	// (for example a policy block). It must not repeat a top-level
	// field the generated config already has.
	ConfigExtra string

	// MinIOPolicy, when set, gives MinIO an identity of its own (instead
	// of the admin's) whose policy allows exactly these API paths, as a
	// production KES does; KES.MinIOAPIKey is its API key.
	MinIOPolicy []string

	// Host runs the server inside this test host, listening on its
	// address, instead of on loopback.
	Host *TestHost
}

// KES is a running KES server.
type KES struct {
	Version     string // KESVersion, KES023Version or KES022Version
	URL         string // https://127.0.0.1:PORT (or the test host's address)
	Addr        string // 127.0.0.1:PORT
	CAFile      string // CA of the server certificate
	APIKey      string // the admin's kes:v1: API key
	MinIOAPIKey string // MinIO's own API key (KESOptions.MinIOPolicy), or ""
	Identity    string // hex SHA-256 of the admin's public key (admin.identity)
	ConfigFile  string // the kesconf YAML the server runs with
	KeyStoreDir string // the fs key store directory ("" with KESOptions.KeyStore)
	LogFile     string // the server's stdout and stderr
	Dir         string // the directory holding the files above

	proc *process
	host *TestHost // where it runs; nil: loopback
}

// StartKES starts a real KES server on an fs key store and stops it when
// the test ends. It fails the test if the server cannot start.
func StartKES(t TB, opts KESOptions) *KES {
	t.Helper()
	skipShort(t, "a real KES server")
	k, err := startKES(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartKES: %v", err)
	}
	return k
}

func startKES(t TB, opts KESOptions) (*KES, error) {
	bin := binKES
	switch {
	case opts.V022:
		bin = binKES022
	case opts.V023:
		bin = binKES023
	}
	path, err := findBinary(bin)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "kes-")
	if err != nil {
		return nil, err
	}
	var extraIPs []net.IP
	if opts.Host != nil {
		extraIPs = append(extraIPs, net.ParseIP(opts.Host.Addr))
	}
	tlsFiles, err := GenerateTLSFor(filepath.Join(dir, "tls"), "kes", extraIPs...)
	if err != nil {
		return nil, err
	}
	apiKey, err := kes.GenerateAPIKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	extra := opts.ConfigExtra
	var minioKey kes.APIKey
	if opts.MinIOPolicy != nil {
		if minioKey, err = kes.GenerateAPIKey(rand.Reader); err != nil {
			return nil, err
		}
		extra = "policy:\n  minio:\n    allow:\n"
		for _, p := range opts.MinIOPolicy {
			extra += "    - " + p + "\n"
		}
		extra += "    identities:\n    - " + minioKey.Identity().String() + "\n" + opts.ConfigExtra
	}
	k := &KES{
		Version:     bin.Version,
		CAFile:      tlsFiles.CAFile,
		APIKey:      apiKey.String(),
		Identity:    apiKey.Identity().String(),
		ConfigFile:  filepath.Join(dir, "kes-config.yaml"),
		KeyStoreDir: opts.KeyStoreDir,
		LogFile:     filepath.Join(dir, "kes.log"),
		Dir:         dir,
		host:        opts.Host,
	}
	if minioKey != nil {
		k.MinIOAPIKey = minioKey.String()
	}
	keystore := opts.KeyStore
	if keystore == "" {
		if k.KeyStoreDir == "" {
			k.KeyStoreDir = filepath.Join(dir, "keys")
		}
		if err := os.MkdirAll(k.KeyStoreDir, 0o700); err != nil {
			return nil, err
		}
		keystore = fmt.Sprintf("keystore:\n  fs:\n    path: %s\n", k.KeyStoreDir)
	} else {
		k.KeyStoreDir = ""
	}

	err = startWithPortRetry(func() error {
		if opts.Host != nil {
			k.Addr = opts.Host.HostPort(opts.Host.Port())
		} else {
			port, err := freePort()
			if err != nil {
				return err
			}
			k.Addr = "127.0.0.1:" + strconv.Itoa(port)
		}
		k.URL = "https://" + k.Addr
		config := fmt.Sprintf(`version: v1
address: %s
admin:
  identity: %s
tls:
  key: %s
  cert: %s
%s%s`, k.Addr, k.Identity, tlsFiles.KeyFile, tlsFiles.CertFile, keystore, extra)
		if err := os.WriteFile(k.ConfigFile, []byte(config), 0o600); err != nil {
			return err
		}
		client, err := k.client()
		if err != nil {
			return err
		}
		procPath, procArgs := path, []string{"server", "--config", k.ConfigFile, "--addr", k.Addr}
		if opts.V022 {
			procArgs = append(procArgs, "--auth", "off")
		}
		if opts.Host != nil {
			procPath, procArgs = opts.Host.Command(procPath, procArgs...)
		}
		k.proc, err = startProcess(procSpec{
			name:    "kes " + bin.Version,
			path:    procPath,
			args:    procArgs,
			env:     baseEnv("KES_"),
			dir:     dir,
			logFile: k.LogFile,
			ready: func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_, err := client.Version(ctx)
				return err
			},
			readyTimeout: 60 * time.Second,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(k.Stop)
	t.Logf("testenv: KES %s at %s (log %s)", k.Version, k.URL, k.LogFile)

	if opts.Keys > 0 {
		prefix := opts.KeyPrefix
		if prefix == "" {
			prefix = "key-"
		}
		if err := k.CreateKeys(context.Background(), prefix, opts.Keys); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// CreateKeys creates n keys named prefix + "%05d" through the KES API.
func (k *KES) CreateKeys(ctx context.Context, prefix string, n int) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	for i := range n {
		name := fmt.Sprintf("%s%05d", prefix, i)
		if err := c.CreateKey(ctx, name); err != nil {
			return fmt.Errorf("creating key %s at KES: %v", name, err)
		}
	}
	return nil
}

// Client returns a kes-go client authenticated as the admin that verifies
// the server certificate with CAFile.
func (k *KES) Client() *kes.Client {
	c, err := k.client()
	if err != nil {
		panic(fmt.Sprintf("testenv: KES client: %v", err)) // inputs were made by StartKES
	}
	return c
}

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

// PID is the server process's ID (0 when it is not running): a benchmark
// gives the server CPUs of its own through it.
func (k *KES) PID() int {
	if k.proc == nil || k.proc.cmd.Process == nil || k.proc.exited() {
		return 0
	}
	return k.proc.cmd.Process.Pid
}

// Stop stops the server (SIGTERM, then SIGKILL after 5 seconds). The key
// store directory stays. Stop is called at test end; calling it earlier is
// fine.
func (k *KES) Stop() {
	if k.proc != nil {
		k.proc.stop()
	}
}

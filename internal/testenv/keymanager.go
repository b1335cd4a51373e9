package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/emulator"
)

// KeyManagerOptions configures StartKeyManager.
type KeyManagerOptions struct {
	// Dir is the emulator's state directory. Empty means a new directory
	// in the test's temp dir. Reusing the directory of a closed emulator
	// restarts it on the same state.
	Dir string

	// Fault injection (see emulator.Config).
	FaultErrorRate float64
	FaultLatency   time.Duration
	FaultDropRate  float64
	// FaultRefuseFormats: ciphertext formats Decrypt refuses ("msgpack", "json").
	FaultRefuseFormats []string

	// Readings: how the emulator answers where the protocol leaves the
	// server open (emulator.Readings); zero: the most demanding.
	Readings emulator.Readings

	// Addr is where the emulator (in this process) listens; default
	// 127.0.0.1:0. A test that needs a fixed port (443, the default of an
	// https URL) listens on its test host's Peer address, which no other
	// test uses.
	Addr string

	// Host runs the emulator inside this test host, as a child process
	// (Bin emulate key-manager), listening on the host's address.
	Host *TestHost
	Bin  string // the runbook binary; default: runbook on PATH
}

// KeyManager is a running Key Manager emulator.
type KeyManager struct {
	URL        string           // https://127.0.0.1:PORT
	Addr       string           // 127.0.0.1:PORT
	CAFile     string           // CA of the server certificate
	RootAPIKey string           // the SysAdmin k1: API key
	Dir        string           // state directory
	LogFile    string           // the emulator's log lines (Config.Logf)
	Server     *emulator.Server // nil when it runs in a test host

	proc *process  // the child process, in a test host
	host *TestHost // where it runs; nil: loopback, in this process
}

// StartKeyManager starts the Key Manager emulator in this process and
// closes it when the test ends.
func StartKeyManager(t TB, opts KeyManagerOptions) *KeyManager {
	t.Helper()
	km, err := startKeyManager(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartKeyManager: %v", err)
	}
	return km
}

func startKeyManager(t TB, opts KeyManagerOptions) (*KeyManager, error) {
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp(t.TempDir(), "keymanager-"); err != nil {
			return nil, err
		}
	}
	logFile := filepath.Join(dir, "emulator.log")
	if opts.Host != nil {
		return startKeyManagerIn(t, opts, dir, logFile)
	}
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(lf, time.Now().Format("15:04:05.000000 ")+format+"\n", args...)
	}
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	srv, err := emulator.Start(emulator.Config{
		Addr:               addr,
		Dir:                dir,
		Hosts:              []string{"127.0.0.1", "localhost"},
		FaultErrorRate:     opts.FaultErrorRate,
		FaultLatency:       opts.FaultLatency,
		FaultDropRate:      opts.FaultDropRate,
		FaultRefuseFormats: opts.FaultRefuseFormats,
		Readings:           opts.Readings,
		Logf:               logf,
	})
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting the emulator: %v", err)
	}
	t.Cleanup(func() {
		_ = srv.Close()
		mu.Lock()
		defer mu.Unlock()
		lf.Close()
	})
	km := &KeyManager{
		URL:        srv.URL(),
		Addr:       srv.Addr(),
		CAFile:     srv.CAFile(),
		RootAPIKey: srv.RootAPIKey(),
		Dir:        dir,
		LogFile:    logFile,
		Server:     srv,
	}
	logf("readings %s", srv.Readings())
	t.Logf("testenv: Key Manager emulator at %s (dir %s, readings %s)", km.URL, dir, srv.Readings())
	return km, nil
}

// startKeyManagerIn runs the emulator as a child process inside
// opts.Host: `ip netns exec NS runbook emulate key-manager`, which writes its
// RUNBOOK_KM_* lines to an env file once it serves.
func startKeyManagerIn(t TB, opts KeyManagerOptions, dir, logFile string) (*KeyManager, error) {
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("runbook"); err != nil {
			return nil, fmt.Errorf("the emulator runs in the test host as `runbook emulate key-manager`, and runbook is not on PATH: %v", err)
		}
	}
	envFile := filepath.Join(dir, "emulator.env")
	args := []string{"emulate", "key-manager", "--addr", opts.Host.Addr + ":0", "--dir", filepath.Join(dir, "state"), "--env-file", envFile, "-v",
		"--fault-error-rate", strconv.FormatFloat(opts.FaultErrorRate, 'g', -1, 64),
		"--fault-latency", opts.FaultLatency.String(),
		"--fault-drop-rate", strconv.FormatFloat(opts.FaultDropRate, 'g', -1, 64)}
	args = append(args, opts.Readings.Args()...)
	for _, f := range opts.FaultRefuseFormats {
		args = append(args, "--fault-refuse-format", f)
	}
	path, args := opts.Host.Command(bin, args...)
	km := &KeyManager{Dir: dir, LogFile: logFile, host: opts.Host}
	var err error
	km.proc, err = startProcess(procSpec{
		name: "key manager emulator", path: path, args: args, env: baseEnv("RUNBOOK_"), dir: dir, logFile: logFile,
		ready: func() error {
			data, err := os.ReadFile(envFile)
			if err != nil {
				return err
			}
			vars := map[string]string{}
			for _, line := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					vars[k] = v
				}
			}
			km.URL, km.CAFile, km.RootAPIKey = vars["RUNBOOK_KM_SERVER"], vars["RUNBOOK_KM_CA"], vars["RUNBOOK_KM_API_KEY"]
			km.Addr = strings.TrimPrefix(km.URL, "https://")
			if km.URL == "" || km.CAFile == "" || km.RootAPIKey == "" {
				return fmt.Errorf("%s is incomplete", envFile)
			}
			c, err := KMSClient(km.Addr, km.CAFile, km.RootAPIKey)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_, err = c.Version(ctx, &kms.VersionRequest{})
			return err
		},
		readyTimeout: time.Minute,
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(km.proc.stop)
	t.Logf("testenv: Key Manager emulator at %s in test host %s (dir %s)", km.URL, opts.Host.NetNS, dir)
	return km, nil
}

// Client returns a kms-go client authenticated with the root API key that
// verifies the server certificate with CAFile.
func (km *KeyManager) Client() *kms.Client {
	c, err := KMSClient(km.Addr, km.CAFile, km.RootAPIKey)
	if err != nil {
		panic(fmt.Sprintf("testenv: Key Manager client: %v", err))
	}
	return c
}

// KMSClient returns a kms-go client for endpoint (host:port) that presents
// apiKey (k1:...) and trusts only the CAs in caFiles. (kms.NewClient needs a
// non-nil TLS config when an API key is given.)
func KMSClient(endpoint, caFile, apiKey string) (*kms.Client, error) {
	key, err := mtls.ParsePrivateKey(apiKey)
	if err != nil {
		return nil, err
	}
	conf, err := clientTLS(caFile)
	if err != nil {
		return nil, err
	}
	return kms.NewClient(&kms.Config{Endpoints: []string{endpoint}, APIKey: key, TLS: conf})
}

// NewAPIKey returns a fresh k1: API key and its h1: identity.
func NewAPIKey() (apiKey string, identity mtls.Identity, err error) {
	key, err := mtls.GenerateKeyEdDSA(nil)
	if err != nil {
		return "", mtls.Identity{}, err
	}
	return key.String(), key.Identity(), nil
}

// CreateEnclaveAdmin creates enclave (unless it exists) and an Admin
// identity in it, and returns that identity's k1: API key: what MinIO
// uses as MINIO_KMS_API_KEY.
func (km *KeyManager) CreateEnclaveAdmin(ctx context.Context, enclave string) (string, error) {
	c := km.Client()
	if err := c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: enclave}); err != nil && !errors.Is(err, kms.ErrEnclaveExists) {
		return "", fmt.Errorf("creating enclave %s: %v", enclave, err)
	}
	apiKey, id, err := NewAPIKey()
	if err != nil {
		return "", err
	}
	if err := c.CreateIdentity(ctx, enclave, &kms.CreateIdentityRequest{Identity: id, Privilege: kms.Admin}); err != nil {
		return "", fmt.Errorf("creating admin identity in enclave %s: %v", enclave, err)
	}
	return apiKey, nil
}

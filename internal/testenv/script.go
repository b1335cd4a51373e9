package testenv

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/emulator"
)

// Cmds returns testscript commands that start the real parts for the rest
// of the script and stop them when it ends:
//
//	test-host
//	    creates the script's test host (TestHost: a network namespace of
//	    its own with a veth to it); sets TEST_HOST (its address,
//	    10.253.N.2), TEST_PEER (the root namespace's side, 10.253.N.1)
//	    and TEST_NETNS (the namespace). The -netns flags below
//	    start a server inside it, listening on TEST_HOST.
//	kes-server [-v0.23 | -v0.22] [-keys N] [-key-prefix P] [-env PREFIX] [-keystore DIR] [-config-extra FILE] [-minio-policy PATHS]
//	    [-vault kv1|kv2 [-vault-prefix P] [-vault-no-list]] [-netns]
//	    a KES server on an fs key store (DIR, or a new one; FILE appended
//	    to its config, e.g. a policy block); sets PREFIX_SERVER (https URL),
//	    PREFIX_API_KEY (admin kes:v1: key), PREFIX_CA (CA file),
//	    PREFIX_CONFIG (kesconf YAML), PREFIX_KEYSTORE (fs dir) and
//	    PREFIX_LOG, PREFIX defaulting to KES. -minio-policy gives MinIO
//	    (minio-server -kes, minio-cluster -kes) an identity of its own whose
//	    policy allows exactly the comma-separated API paths; sets
//	    PREFIX_MINIO_API_KEY. With -vault ENGINE (kv1 or kv2: see
//	    vault-server) the keys live in the script's Vault instead,
//	    under -vault-prefix P (default "kes"), KES logging in with an
//	    AppRole of its own whose policy allows what KES needs, without the
//	    list capability if -vault-no-list; sets PREFIX_VAULT_ROLE_ID and
//	    PREFIX_VAULT_SECRET_ID (the AppRole's credentials) and no
//	    PREFIX_KEYSTORE.
//	vault-server [-tls]
//	    a real HashiCorp Vault in dev mode on loopback (plain HTTP, or with
//	    -tls HTTPS with a CA of its own, which KES configs then trust), kv
//	    v1 mounted at kv1/, kv v2 at kv2/, AppRole auth enabled; sets
//	    VAULT_URL, VAULT_CA (with -tls), VAULT_ROOT_TOKEN (test-only) and
//	    VAULT_LOG.
//	key-manager [-fault-error-rate F] [-fault-latency D] [-fault-drop-rate F] [-fault-refuse-format msgpack|json] [-netns | -addr A]
//	    [-write-answer R] [-mixed R] [-batch R] [-deleted-names R] [-dir DIR]
//	    the Key Manager emulator (with -netns a child process, runbook
//	    emulate key-manager, inside the test host; with -addr listening
//	    there, for example $TEST_PEER:443; with -dir on the state, root key
//	    and CA an earlier emulator left in DIR); sets KM_SERVER (https
//	    URL), KM_CA, KM_API_KEY (root k1: key), KM_DIR and KM_LOG. The
//	    readings (emulator.Readings) not given as flags come from the
//	    script's KM_READINGS, flags in the same syntax (set by a test that
//	    runs scripts under several readings), else the defaults.
//	minio-server [-kes | -km ENCLAVE] [-key NAME]
//	    a MinIO server; -kes connects it to the script's KES server (key
//	    NAME, default "minio-default-key", created if missing); -km
//	    creates ENCLAVE and an Admin identity at the script's Key Manager
//	    and connects MinIO to it (with -kes, the CA of a Key Manager the
//	    script started before is trusted too, for a cutover). Sets
//	    MINIO_ENDPOINT (host:port),
//	    MINIO_URL, MINIO_CA, MINIO_ROOT_USER, MINIO_ROOT_PASSWORD,
//	    MINIO_ENV_FILE, MINIO_CAS_DIR (certs/CAs), MINIO_LOG and
//	    MINIO_CONTROL_URL (see MinIOCtlMain: a restart command for runbooks
//	    under test).
//	minio-restart
//	    fully stops the script's MinIO and starts it again, re-reading
//	    MINIO_ENV_FILE (as a systemd restart would).
//	k8s-minio -kind Tenant|ObjectStore|StatefulSet [-pods N] [-kes] [-key NAME] [-policy P]
//	    MinIO on a real Kubernetes control plane (cmdK8sMinIO).
//	tcp-proxy NAME TARGET
//	    a TCP load balancer on 127.0.0.1 (Balancer) that passes every
//	    connection through to TARGET (host:port), TLS included, as an L4
//	    balancer in front of Key Manager nodes does; sets NAME (its
//	    127.0.0.1:PORT) and NAME_PORT.
//	tcp-proxy-stop NAME
//	    closes that balancer and every connection through it.
//	sshd-server [-path DIR] [-env NAME]...
//	    a real sshd on 127.0.0.1 (CmdSSHDServer); sets SSH_PORT,
//	    SSH_KNOWN_HOSTS, SSH_IDENTITY, SSH_USER and SSHD_LOG.
//
// None of them may be negated with '!'. Under go test -short (the fast
// tier; CI never passes it) each command that starts a real server skips
// its script, naming the server.
func Cmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	return map[string]func(ts *testscript.TestScript, neg bool, args []string){
		"k8s-minio":      ShortSkips("a real Kubernetes control plane", cmdK8sMinIO),
		"test-host":      ShortSkips("a network namespace (test host)", cmdTestHost),
		"kes-server":     ShortSkips("a real KES server", cmdKESServer),
		"key-manager":    cmdKeyManager,
		"minio-server":   ShortSkips("a real MinIO server", cmdMinIOServer),
		"minio-restart":  cmdMinIORestart,
		"sshd-server":    ShortSkips("a real sshd", CmdSSHDServer),
		"vault-server":   ShortSkips("a real Vault server", cmdVaultServer),
		"tcp-proxy":      cmdTCPProxy,
		"tcp-proxy-stop": cmdTCPProxyStop,
	}
}

// ShortSkips wraps a script command that starts a real server: under go
// test -short it skips the script, naming what it needs (what: "a real KES
// server"), as skipShort does for a Go test. (The emulator is ours and
// fast: it is not skipped.) The script's Params.Setup must call
// ScriptSetup.
func ShortSkips(what string, cmd func(ts *testscript.TestScript, neg bool, args []string)) func(ts *testscript.TestScript, neg bool, args []string) {
	return func(ts *testscript.TestScript, neg bool, args []string) {
		if testing.Short() {
			t, ok := ts.Value(scriptT{}).(testscript.T)
			if !ok {
				ts.Fatalf("testenv: the script's Setup does not call testenv.ScriptSetup")
			}
			t.Skip("needs " + what + " (the first real part this script starts): go test -short skips it (CI runs it)")
		}
		cmd(ts, neg, args)
	}
}

// scriptT keys the script's testscript.T in its Env.Values.
type scriptT struct{}

// ScriptSetup keeps the script's test for ShortSkips (a TestScript has no
// Skip of its own); every Params.Setup that uses Cmds calls it.
func ScriptSetup(e *testscript.Env) {
	e.Values[scriptT{}] = e.T()
}

// scriptTB adapts a TestScript to TB.
type scriptTB struct{ ts *testscript.TestScript }

func (s scriptTB) Helper()                           {}
func (s scriptTB) Fatalf(format string, args ...any) { s.ts.Fatalf(format, args...) }
func (s scriptTB) Logf(format string, args ...any)   { s.ts.Logf(format, args...) }
func (s scriptTB) Cleanup(f func())                  { s.ts.Defer(f) }
func (s scriptTB) TempDir() string {
	dir, err := os.MkdirTemp(s.ts.Getenv("WORK"), "testenv-")
	if err != nil {
		s.ts.Fatalf("testenv: %v", err)
	}
	return dir
}

// scriptState is what a script has started, for commands that connect to
// it.
type scriptState struct {
	kes   *KES
	km    *KeyManager
	minio *MinIO
	host  *TestHost
	vault *Vault
	roles int // AppRoles created at vault
}

var states sync.Map // *testscript.TestScript -> *scriptState

func stateOf(ts *testscript.TestScript) *scriptState {
	st, loaded := states.LoadOrStore(ts, &scriptState{})
	if !loaded {
		ts.Defer(func() { states.Delete(ts) })
	}
	return st.(*scriptState)
}

func newFlags(ts *testscript.TestScript, name string, neg bool) *flag.FlagSet {
	if neg {
		ts.Fatalf("%s: cannot be negated", name)
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parseFlags(ts *testscript.TestScript, fs *flag.FlagSet, args []string) {
	if err := fs.Parse(args); err != nil {
		ts.Fatalf("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		ts.Fatalf("%s: unexpected arguments %q", fs.Name(), fs.Args())
	}
}

func cmdKESServer(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "kes-server", neg)
	v023 := fs.Bool("v0.23", false, "start KES v0.23.0")
	v022 := fs.Bool("v0.22", false, "start KES v0.22.3 (the API before KES's refactor of 2023-10-24)")
	keys := fs.Int("keys", 0, "create N keys")
	prefix := fs.String("key-prefix", "key-", "name prefix of the created keys")
	env := fs.String("env", "KES", "prefix of the environment variables set")
	netns := fs.Bool("netns", false, "run inside the script's test host")
	keystore := fs.String("keystore", "", "serve this fs key store directory (default: a new one)")
	extra := fs.String("config-extra", "", "append this file to the kesconf YAML (e.g. a policy block)")
	minioPolicy := fs.String("minio-policy", "", "comma-separated API paths MinIO's own identity may use")
	vaultKV := fs.String("vault", "", "keep the keys in the script's Vault, in this kv engine: kv1 or kv2")
	vaultPrefix := fs.String("vault-prefix", "kes", "prefix of the keys in the Vault kv engine")
	vaultNoList := fs.Bool("vault-no-list", false, "the KES AppRole's Vault policy lacks the list capability")
	parseFlags(ts, fs, args)

	opts := KESOptions{V023: *v023, V022: *v022, Keys: *keys, KeyPrefix: *prefix}
	if *keystore != "" {
		opts.KeyStoreDir = ts.MkAbs(*keystore)
	}
	if *minioPolicy != "" {
		opts.MinIOPolicy = strings.Split(*minioPolicy, ",")
	}
	if *extra != "" {
		opts.ConfigExtra = ts.ReadFile(*extra)
	}
	if *netns {
		opts.Host = scriptHost(ts, "kes-server")
	}
	var role *VaultAppRole
	if *vaultKV != "" {
		role, opts.KeyStore = scriptVaultKeyStore(ts, *vaultKV, *vaultPrefix, *vaultNoList)
	}
	k, err := startKES(scriptTB{ts}, opts)
	if err != nil {
		ts.Fatalf("kes-server: %v", err)
	}
	st := stateOf(ts)
	if st.kes == nil || *env == "KES" {
		st.kes = k
	}
	ts.Setenv(*env+"_SERVER", k.URL)
	ts.Setenv(*env+"_API_KEY", k.APIKey)
	ts.Setenv(*env+"_CA", k.CAFile)
	ts.Setenv(*env+"_CONFIG", k.ConfigFile)
	ts.Setenv(*env+"_KEYSTORE", k.KeyStoreDir)
	if role != nil {
		ts.Setenv(*env+"_VAULT_ROLE_ID", role.RoleID)
		ts.Setenv(*env+"_VAULT_SECRET_ID", role.SecretID)
	}
	ts.Setenv(*env+"_LOG", k.LogFile)
	if k.MinIOAPIKey != "" {
		ts.Setenv(*env+"_MINIO_API_KEY", k.MinIOAPIKey)
	}
}

func cmdKeyManager(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "key-manager", neg)
	errRate := fs.Float64("fault-error-rate", 0, "fraction of requests answered with an error")
	latency := fs.Duration("fault-latency", 0, "added latency per request")
	dropRate := fs.Float64("fault-drop-rate", 0, "fraction of connections dropped")
	refuse := fs.String("fault-refuse-format", "", "ciphertext format Decrypt refuses: msgpack or json")
	netns := fs.Bool("netns", false, "run inside the script's test host, as a child process (runbook emulate key-manager)")
	dir := fs.String("dir", "", "the emulator's state directory: an existing one starts on its state, root key and CA (default: a new one)")
	addr := fs.String("addr", "", "listen here (in this process; default 127.0.0.1:0)")
	var readings emulator.Readings
	readings.Flags(fs)
	parseFlags(ts, fs, append(strings.Fields(ts.Getenv("KM_READINGS")), args...))

	opts := KeyManagerOptions{
		FaultErrorRate: *errRate,
		FaultLatency:   *latency,
		FaultDropRate:  *dropRate,
		Readings:       readings,
		Addr:           *addr,
	}
	if *refuse != "" {
		opts.FaultRefuseFormats = []string{*refuse}
	}
	if *netns {
		opts.Host = scriptHost(ts, "key-manager")
	}
	if *dir != "" {
		opts.Dir = ts.MkAbs(*dir)
	}
	km, err := startKeyManager(scriptTB{ts}, opts)
	if err != nil {
		ts.Fatalf("key-manager: %v", err)
	}
	stateOf(ts).km = km
	ts.Setenv("KM_SERVER", km.URL)
	ts.Setenv("KM_CA", km.CAFile)
	ts.Setenv("KM_API_KEY", km.RootAPIKey)
	ts.Setenv("KM_DIR", km.Dir)
	ts.Setenv("KM_LOG", km.LogFile)
}

func cmdMinIOServer(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "minio-server", neg)
	withKES := fs.Bool("kes", false, "connect to the script's KES server")
	enclave := fs.String("km", "", "connect to the script's Key Manager, in this enclave")
	key := fs.String("key", "minio-default-key", "default KMS key")
	parseFlags(ts, fs, args)

	st := stateOf(ts)
	if st.minio != nil {
		ts.Fatalf("minio-server: this script already started MinIO")
	}
	t := scriptTB{ts}
	var (
		m   *MinIO
		err error
	)
	switch {
	case *withKES && *enclave != "":
		ts.Fatalf("minio-server: -kes and -km are exclusive")
	case *withKES:
		if st.kes == nil {
			ts.Fatalf("minio-server -kes: run kes-server first")
		}
		if m, err = startMinIOWithKES(t, st.kes, *key); err == nil && st.km != nil {
			// a cutover to the Key Manager restarts MinIO, which must
			// trust it then
			err = m.AddCA(st.km.CAFile)
		}
	case *enclave != "":
		if st.km == nil {
			ts.Fatalf("minio-server -km: run key-manager first")
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var apiKey string
		if apiKey, err = st.km.CreateEnclaveAdmin(ctx, *enclave); err == nil {
			m, err = startMinIO(t, MinIOOptions{
				Env:     KeyManagerEnv(st.km, *enclave, apiKey, *key),
				CAFiles: []string{st.km.CAFile},
			})
		}
	default:
		m, err = startMinIO(t, MinIOOptions{})
	}
	if err != nil {
		ts.Fatalf("minio-server: %v", err)
	}
	st.minio = m
	setMinIOEnv(ts, m)
	ts.Setenv("MINIO_CONTROL_URL", m.ServeControl(t))
}

func setMinIOEnv(ts *testscript.TestScript, m *MinIO) {
	ts.Setenv("MINIO_ENDPOINT", m.Endpoint)
	ts.Setenv("MINIO_URL", m.URL)
	ts.Setenv("MINIO_CA", m.CAFile)
	ts.Setenv("MINIO_ROOT_USER", m.RootUser)
	ts.Setenv("MINIO_ROOT_PASSWORD", m.RootPassword)
	ts.Setenv("MINIO_ENV_FILE", m.EnvFile)
	ts.Setenv("MINIO_CAS_DIR", m.CAsDir)
	ts.Setenv("MINIO_LOG", m.LogFile)
}

func cmdMinIORestart(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "minio-restart", neg)
	parseFlags(ts, fs, args)
	m := stateOf(ts).minio
	if m == nil {
		ts.Fatalf("minio-restart: run minio-server first")
	}
	if err := m.restart(ts.Logf); err != nil {
		ts.Fatalf("minio-restart: %v", err)
	}
	setMinIOEnv(ts, m)
}

func cmdVaultServer(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "vault-server", neg)
	withTLS := fs.Bool("tls", false, "serve HTTPS with a CA of Vault's own")
	parseFlags(ts, fs, args)
	st := stateOf(ts)
	if st.vault != nil {
		ts.Fatalf("vault-server: this script already started Vault")
	}
	v, err := startVault(scriptTB{ts}, VaultOptions{TLS: *withTLS})
	if err != nil {
		ts.Fatalf("vault-server: %v", err)
	}
	st.vault = v
	ts.Setenv("VAULT_URL", v.URL)
	ts.Setenv("VAULT_CA", v.CAFile)
	ts.Setenv("VAULT_ROOT_TOKEN", v.RootToken)
	ts.Setenv("VAULT_LOG", v.LogFile)
}

// scriptVaultKeyStore creates an AppRole for a KES server at the script's
// Vault and returns it with the kesconf keystore block that uses it.
func scriptVaultKeyStore(ts *testscript.TestScript, engine, prefix string, noList bool) (*VaultAppRole, string) {
	st := stateOf(ts)
	if st.vault == nil {
		ts.Fatalf("kes-server -vault: run vault-server first")
	}
	var kv VaultKV
	switch engine {
	case VaultKV1.Engine:
		kv = VaultKV1
	case VaultKV2.Engine:
		kv = VaultKV2
	default:
		ts.Fatalf("kes-server -vault %s: the test Vault has kv1 (kv v1) and kv2 (kv v2)", engine)
	}
	st.roles++
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	role, err := st.vault.CreateAppRole(ctx, fmt.Sprintf("kes-%d", st.roles), KESPolicy(kv, prefix, noList))
	if err != nil {
		ts.Fatalf("kes-server -vault: %v", err)
	}
	return role, st.vault.KESKeyStore(kv, prefix, role)
}

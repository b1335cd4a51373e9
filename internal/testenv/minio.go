package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/kes-go"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// MinIOOptions configures StartMinIO.
type MinIOOptions struct {
	// Env is written to the MINIO_CONFIG_ENV_FILE, one KEY=value line
	// each, sorted, after MINIO_ROOT_USER and MINIO_ROOT_PASSWORD. This
	// is where the KMS variables go.
	Env map[string]string

	// RootUser and RootPassword default to generated values.
	RootUser     string
	RootPassword string

	// CAFiles are copied into certs/CAs before the start, e.g. the CA
	// of the Key Manager (MinIO has no other way to trust it).
	CAFiles []string

	// DataDir is the drive. Empty means a new directory in the test's
	// temp dir.
	DataDir string
}

// MinIO is a running single-node MinIO server serving HTTPS.
type MinIO struct {
	Endpoint     string // 127.0.0.1:PORT
	URL          string // https://127.0.0.1:PORT
	CAFile       string // CA of the server certificate
	RootUser     string
	RootPassword string
	EnvFile      string // MINIO_CONFIG_ENV_FILE
	LogFile      string // stdout and stderr of every start, appended
	CertsDir     string // --certs-dir (public.crt, private.key)
	CAsDir       string // certs/CAs: extra CAs MinIO trusts
	DataDir      string
	Dir          string

	bin  string
	t    TB
	mu   sync.Mutex // serialises restarts
	proc *process
}

// StartMinIO starts a real MinIO server and stops it when the test ends.
func StartMinIO(t TB, opts MinIOOptions) *MinIO {
	t.Helper()
	skipShort(t, "a real MinIO server")
	m, err := startMinIO(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartMinIO: %v", err)
	}
	return m
}

// StartMinIOWithKES creates keyName at k (if it is not there yet) and
// starts MinIO with MINIO_KMS_KES_ENDPOINT, _KEY_NAME, _API_KEY and
// _CAPATH pointing at k.
func StartMinIOWithKES(t TB, k *KES, keyName string) *MinIO {
	t.Helper()
	skipShort(t, "a real MinIO server")
	m, err := startMinIOWithKES(t, k, keyName)
	if err != nil {
		t.Fatalf("testenv: StartMinIOWithKES: %v", err)
	}
	return m
}

func startMinIOWithKES(t TB, k *KES, keyName string) (*MinIO, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := k.client()
	if err != nil {
		return nil, err
	}
	if err := c.CreateKey(ctx, keyName); err != nil && !errors.Is(err, kes.ErrKeyExists) {
		return nil, fmt.Errorf("creating key %s at KES: %v", keyName, err)
	}
	return startMinIO(t, MinIOOptions{Env: KESEnv(k, keyName)})
}

// KESEnv returns the MinIO variables that connect it to k with default key
// keyName, as MinIO's own identity when k has one (KESOptions.MinIOPolicy),
// else as the admin.
func KESEnv(k *KES, keyName string) map[string]string {
	apiKey := k.APIKey
	if k.MinIOAPIKey != "" {
		apiKey = k.MinIOAPIKey
	}
	return map[string]string{
		"MINIO_KMS_KES_ENDPOINT": k.URL,
		"MINIO_KMS_KES_KEY_NAME": keyName,
		"MINIO_KMS_KES_API_KEY":  apiKey,
		"MINIO_KMS_KES_CAPATH":   k.CAFile,
	}
}

// KeyManagerEnv returns the MinIO variables that connect it to km, enclave
// and default key keyName, authenticating with apiKey. MinIO must also
// trust km.CAFile (MinIOOptions.CAFiles or AddCA).
func KeyManagerEnv(km *KeyManager, enclave, apiKey, keyName string) map[string]string {
	return map[string]string{
		"MINIO_KMS_SERVER":  km.URL,
		"MINIO_KMS_ENCLAVE": enclave,
		"MINIO_KMS_API_KEY": apiKey,
		"MINIO_KMS_SSE_KEY": keyName,
	}
}

func startMinIO(t TB, opts MinIOOptions) (*MinIO, error) {
	bin, err := findBinary(binMinIO)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "minio-")
	if err != nil {
		return nil, err
	}
	m := &MinIO{
		RootUser:     opts.RootUser,
		RootPassword: opts.RootPassword,
		EnvFile:      filepath.Join(dir, "minio.env"),
		LogFile:      filepath.Join(dir, "minio.log"),
		CertsDir:     filepath.Join(dir, "certs"),
		DataDir:      opts.DataDir,
		Dir:          dir,
		bin:          bin,
		t:            t,
	}
	m.CAsDir = filepath.Join(m.CertsDir, "CAs")
	if m.RootUser == "" {
		m.RootUser = "runbook-root"
	}
	if m.RootPassword == "" {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		m.RootPassword = hex.EncodeToString(b)
	}
	if m.DataDir == "" {
		m.DataDir = filepath.Join(dir, "data")
	}
	if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(m.CAsDir, 0o700); err != nil {
		return nil, err
	}
	tlsFiles, err := GenerateTLS(filepath.Join(dir, "tls"), "minio")
	if err != nil {
		return nil, err
	}
	m.CAFile = tlsFiles.CAFile
	for src, dst := range map[string]string{
		tlsFiles.CertFile: filepath.Join(m.CertsDir, "public.crt"),
		tlsFiles.KeyFile:  filepath.Join(m.CertsDir, "private.key"),
		tlsFiles.CAFile:   filepath.Join(m.CAsDir, "minio-ca.pem"), // MinIO calls itself
	} {
		if err := copyFile(src, dst); err != nil {
			return nil, err
		}
	}
	for _, ca := range opts.CAFiles {
		if err := m.AddCA(ca); err != nil {
			return nil, err
		}
	}
	if err := m.WriteEnv(opts.Env); err != nil {
		return nil, err
	}
	if err := m.start(0); err != nil {
		return nil, err
	}
	t.Cleanup(m.Stop)
	if err := IAMLoaded(m.Admin(), 3*time.Minute); err != nil {
		return nil, fmt.Errorf("%w (its log: %s)", err, m.LogFile)
	}
	return m, nil
}

// IAMLoaded waits until a deployment's IAM has loaded after a start
// (ListUsers answers: MinIO's IAMSys.ListUsers waits for it), each attempt
// bounded, for at most timeout. MinIO answers S3 calls with its root
// credentials before its IAM has initialized and written its format file,
// which it seals under the default key of that moment (cmd/iam.go, Init;
// cmd/iam-store.go, saveIAMFormat): a script that changes the default key
// right after the start would otherwise, on a loaded machine, find the
// format sealed under the later key. MinIO loads IAM only once its
// configuration has loaded (cmd/server-main.go), so after it the
// configuration in memory is the loaded one, not the defaults.
func IAMLoaded(adm *madmin.AdminClient, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := adm.ListUsers(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("MinIO's IAM did not load within %s of the start: list users: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// AddCA copies a CA certificate into certs/CAs. It takes effect at the
// next start.
func (m *MinIO) AddCA(caFile string) error {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	sum := sha256hex(data)[:12]
	return os.WriteFile(filepath.Join(m.CAsDir, "ca-"+sum+".pem"), data, 0o644)
}

// WriteEnv rewrites the env file: root credentials, then env sorted by
// name. It takes effect at the next (full) restart.
func (m *MinIO) WriteEnv(env map[string]string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "MINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n", m.RootUser, m.RootPassword)
	// What a systemd unit's ExecStart=minio server $MINIO_OPTS … would pass
	// (start reads it from the file, as systemd does).
	fmt.Fprintf(&b, "MINIO_OPTS=\"--certs-dir %s\"\n", m.CertsDir)
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s\n", k, env[k])
	}
	return m.WriteEnvFile(b.String())
}

// WriteEnvFile replaces the env file's contents verbatim.
func (m *MinIO) WriteEnvFile(contents string) error {
	return os.WriteFile(m.EnvFile, []byte(contents), 0o600)
}

// start starts the process on port (0: a free one), retrying on a lost
// port race.
func (m *MinIO) start(port int) error {
	return startWithPortRetry(func() error {
		p := port
		port = 0 // a retry takes any free port
		if p == 0 {
			var err error
			if p, err = freePort(); err != nil {
				return err
			}
		}
		m.Endpoint = "127.0.0.1:" + strconv.Itoa(p)
		m.URL = "https://" + m.Endpoint
		httpClient, err := m.httpClient()
		if err != nil {
			return err
		}
		s3, err := m.client()
		if err != nil {
			return err
		}
		env := append(baseEnv("MINIO_"),
			"MINIO_CONFIG_ENV_FILE="+m.EnvFile,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
			"HOME="+m.Dir,
		)
		m.proc, err = startProcess(procSpec{
			name:         "minio",
			path:         m.bin,
			args:         append(append([]string{"server", "--address", m.Endpoint}, minioOpts(m.EnvFile, m.CertsDir)...), m.DataDir),
			env:          env,
			dir:          m.Dir,
			logFile:      m.LogFile,
			ready:        minioReady(m.URL, httpClient, s3),
			readyTimeout: 3 * time.Minute,
		})
		return err
	})
}

// minioReady reports a MinIO server ready once it is live, says nothing of a
// degraded state, and answers an authenticated call (the object layer is up;
// not yet IAM: the root credentials need none, IAMLoaded waits for it).
func minioReady(url string, httpClient *http.Client, s3 *minio.Client) func() error {
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/minio/health/live", nil)
		if err != nil {
			return err
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/minio/health/live: %s", resp.Status)
		}
		if s := resp.Header.Get("X-Minio-Server-Status"); s != "" {
			return fmt.Errorf("/minio/health/live: server status %q", s)
		}
		_, err = s3.ListBuckets(ctx)
		return err
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 5 seconds).
func (m *MinIO) Stop() {
	if m.proc != nil {
		m.proc.stop()
	}
}

// Exited reports whether the server process has exited (e.g. after a
// failed admin restart).
func (m *MinIO) Exited() bool { return m.proc != nil && m.proc.exited() }

// Restart fully stops the process and starts it again with the same
// arguments and env file (re-read from disk) on the same port if it is
// still free. It fails the test if the server does not come back.
func (m *MinIO) Restart() {
	m.t.Helper()
	if err := m.restart(m.t.Logf); err != nil {
		m.t.Fatalf("testenv: MinIO restart: %v", err)
	}
}

func (m *MinIO) restart(logf func(string, ...any)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Stop()
	port, _ := strconv.Atoi(strings.TrimPrefix(m.Endpoint, "127.0.0.1:"))
	old := m.Endpoint
	if err := m.start(port); err != nil {
		return err
	}
	if m.Endpoint != old {
		logf("testenv: MinIO moved from %s to %s on restart (port taken)", old, m.Endpoint)
	}
	return nil
}

// ServeControl serves a loopback HTTP endpoint through which another
// process can restart or stop this MinIO, the way an operator's restart
// command (systemctl restart minio) would: POST /restart or POST /stop;
// GET /log prints the last lines of its log.
// It returns the endpoint's URL (for MINIO_CONTROL_URL and MinIOCtlMain)
// and closes it at test end.
func (m *MinIO) ServeControl(t TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: MinIO control endpoint: %v", err)
	}
	logf := func(format string, args ...any) {
		if f, err := os.OpenFile(m.LogFile, os.O_WRONLY|os.O_APPEND, 0); err == nil {
			fmt.Fprintf(f, "=== testenv control: "+format+"\n", args...)
			f.Close()
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restart", func(w http.ResponseWriter, r *http.Request) {
		logf("restart requested")
		countRestart(m.RestartsFile(), "minio")
		if err := m.restart(logf); err != nil {
			logf("restart failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "restarted %s\n", m.Endpoint)
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		logf("stop requested")
		m.mu.Lock()
		m.Stop()
		m.mu.Unlock()
		fmt.Fprintln(w, "stopped")
	})
	mux.HandleFunc("GET /log", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s (%s):\n%s\n", m.Endpoint, m.LogFile, logTail(m.LogFile, 20))
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// RestartsFile is where the control endpoint appends one line per restart
// it is asked for: what a test counts restarts by.
func (m *MinIO) RestartsFile() string { return filepath.Join(m.Dir, "restarts") }

// countRestart appends a line to a restart counter file.
func countRestart(file, node string) {
	if f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		fmt.Fprintln(f, node)
		f.Close()
	}
}

// minioOpts are the words of MINIO_OPTS in an env file, as a unit's
// ExecStart=minio server $MINIO_OPTS passes them (split at whitespace);
// with --certs-dir certsDir added when they name none.
func minioOpts(envFile, certsDir string) []string {
	var words []string
	if data, err := os.ReadFile(envFile); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "MINIO_OPTS="); ok {
				words = strings.Fields(strings.Trim(v, `"'`))
			}
		}
	}
	for _, w := range words {
		if w == "--certs-dir" || w == "-S" || strings.HasPrefix(w, "--certs-dir=") {
			return words
		}
	}
	return append(words, "--certs-dir", certsDir)
}

// MinIOCtlMain is a command for testscript.Main's command map
// ("minio-ctl": testenv.MinIOCtlMain): 'minio-ctl restart|stop [NODE]' asks the
// control endpoint in $MINIO_CONTROL_URL (set by the minio-server script
// command) to fully restart or stop MinIO, waits for the result and exits
// non-zero on failure. A runbook under test can use it as its restart
// command.
func MinIOCtlMain() { os.Exit(minioCtl()) }

func minioCtl() int {
	if len(os.Args) < 2 || len(os.Args) > 3 || (os.Args[1] != "restart" && os.Args[1] != "stop" && os.Args[1] != "log") {
		fmt.Fprintln(os.Stderr, "usage: minio-ctl restart|stop|log [NODE]")
		return 2
	}
	url := os.Getenv("MINIO_CONTROL_URL")
	if url == "" {
		fmt.Fprintln(os.Stderr, "minio-ctl: MINIO_CONTROL_URL is not set")
		return 1
	}
	// A cluster's node (minio-cluster): named, or the node whose env file
	// the cutover names in RUNBOOK_NODE. A single server ignores it.
	node := os.Getenv("RUNBOOK_NODE")
	if len(os.Args) == 3 {
		node = os.Args[2]
	}
	target := url + "/" + os.Args[1] + "?node=" + neturl.QueryEscape(node)
	c := &http.Client{Timeout: 5 * time.Minute}
	var (
		resp *http.Response
		err  error
	)
	if os.Args[1] == "log" {
		resp, err = c.Get(target)
	} else {
		resp, err = c.Post(target, "text/plain", nil)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "minio-ctl: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "minio-ctl: %s failed: %s", os.Args[1], body)
		return 1
	}
	os.Stdout.Write(body)
	return 0
}

func (m *MinIO) httpClient() (*http.Client, error) {
	tr, err := m.transport()
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

func (m *MinIO) transport() (*http.Transport, error) {
	conf, err := clientTLS(m.CAFile)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = conf
	return tr, nil
}

// Client returns a minio-go client with the root credentials that verifies
// TLS with CAFile.
func (m *MinIO) Client() *minio.Client {
	c, err := m.client()
	if err != nil {
		panic(fmt.Sprintf("testenv: MinIO client: %v", err))
	}
	return c
}

func (m *MinIO) client() (*minio.Client, error) {
	tr, err := m.transport()
	if err != nil {
		return nil, err
	}
	return minio.New(m.Endpoint, &minio.Options{
		Creds:     credentials.NewStaticV4(m.RootUser, m.RootPassword, ""),
		Secure:    true,
		Transport: tr,
	})
}

// Admin returns a madmin-go client with the root credentials that verifies
// TLS with CAFile.
func (m *MinIO) Admin() *madmin.AdminClient {
	tr, err := m.transport()
	if err != nil {
		panic(fmt.Sprintf("testenv: MinIO admin client: %v", err))
	}
	adm, err := madmin.NewWithOptions(m.Endpoint, &madmin.Options{
		Creds:     credentials.NewStaticV4(m.RootUser, m.RootPassword, ""),
		Secure:    true,
		Transport: tr,
	})
	if err != nil {
		panic(fmt.Sprintf("testenv: MinIO admin client: %v", err))
	}
	return adm
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o600)
}

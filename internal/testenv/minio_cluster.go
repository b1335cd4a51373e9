package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/rogpeppe/go-internal/testscript"
)

// MinIOClusterOptions configures StartMinIOCluster.
type MinIOClusterOptions struct {
	Nodes         int // server processes; default 2
	DrivesPerNode int // default 2
	// Env is written to every node's env file after the root credentials,
	// sorted by name (as MinIO.WriteEnv does).
	Env     map[string]string
	CAFiles []string // copied into the shared certs/CAs
	// NoKeyManagerCA leaves the script's Key Manager CA out of certs/CAs
	// (CmdMinIOCluster): the nodes then cannot verify it.
	NoKeyManagerCA bool
	// BeforeKM runs every node on toolcache.MinIOBeforeKM, which reports
	// the release before MinIO's Key Manager client.
	BeforeKM bool
	// ReleaseBuild runs every node on toolcache.MinIO, built as MinIO
	// releases are (its admin API seals payloads under Argon2id), not the
	// fips-tagged build tests run: for benchmarks, which measure what
	// operators run.
	ReleaseBuild bool
	// Host is the test host every node runs in (required: in a container
	// MinIO refuses endpoints that resolve to loopback, "resolves to
	// localhost in a containerized deployment", and test traffic goes to
	// no other address of this machine).
	Host *TestHost
}

// MinIOCluster is a distributed MinIO deployment of several server processes
// inside a test host (MinIOClusterOptions.Host), each on its own port of the
// host's address, one erasure set over every node's drives. Each node has its
// own directory and its own env file (MINIO_CONFIG_ENV_FILE, given as the
// relative name "minio.env" from the node's working directory: MinIO
// requires every MINIO_* variable, this one included, to be the same on all
// nodes). The nodes must be restarted together when their environment
// changes: a node does not finish starting while its peers' MINIO_*
// environment differs from its own.
type MinIOCluster struct {
	Nodes        []*MinIONode
	URL          string // node 1's URL
	Endpoint     string // node 1's host:port
	CAFile       string
	CertsDir     string
	CAsDir       string
	RootUser     string
	RootPassword string
	Dir          string

	bin    string
	host   *TestHost // where every node runs and listens
	args   []string  // the endpoints, shared by every node
	drives int       // per node
}

// MinIONode is one server process of a MinIOCluster.
type MinIONode struct {
	Name     string // node1, node2, ...
	Endpoint string // TEST_HOST:PORT
	URL      string
	Dir      string // working directory
	EnvFile  string // absolute path of its env file
	LogFile  string

	c    *MinIOCluster
	mu   sync.Mutex
	proc *process
}

// StartMinIOCluster starts a distributed MinIO and stops it at test end.
func StartMinIOCluster(t TB, opts MinIOClusterOptions) *MinIOCluster {
	t.Helper()
	skipShort(t, "a real MinIO server")
	c, err := startMinIOCluster(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartMinIOCluster: %v", err)
	}
	return c
}

func startMinIOCluster(t TB, opts MinIOClusterOptions) (*MinIOCluster, error) {
	c, err := newMinIOCluster(t, opts)
	if err != nil {
		return nil, err
	}
	t.Cleanup(c.Stop)
	var lastErr error
	for range 3 { // a lost port race: all nodes take new ports
		if lastErr = c.startAll(); !errors.Is(lastErr, errPortInUse) {
			break
		}
		c.Stop()
	}
	if lastErr != nil {
		c.Stop()
		return nil, lastErr
	}
	adm, err := c.Admin()
	if err != nil {
		return nil, err
	}
	if err := IAMLoaded(adm, 3*time.Minute); err != nil {
		var logs []string
		for _, n := range c.Nodes {
			logs = append(logs, n.LogFile)
		}
		return nil, fmt.Errorf("%w (the nodes' logs: %s)", err, strings.Join(logs, ", "))
	}
	return c, nil
}

// newMinIOCluster prepares a cluster's directories, certificates and env
// files without starting any node (the Kubernetes node agent starts each
// node when its pod is scheduled).
func newMinIOCluster(t TB, opts MinIOClusterOptions) (*MinIOCluster, error) {
	if opts.Nodes <= 0 {
		opts.Nodes = 2
	}
	if opts.DrivesPerNode <= 0 {
		opts.DrivesPerNode = 2
	}
	if opts.Host == nil {
		return nil, errors.New("a MinIO cluster runs in a test host (MinIOClusterOptions.Host, StartTestHost): in a container MinIO refuses endpoints on loopback")
	}
	tool := binMinIO
	switch {
	case opts.BeforeKM && opts.ReleaseBuild:
		return nil, errors.New("MinIOClusterOptions: BeforeKM and ReleaseBuild are two different builds; choose one")
	case opts.BeforeKM:
		tool = binMinIOBeforeKM
	case opts.ReleaseBuild:
		tool = binMinIORelease
	}
	bin, err := findBinary(tool)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "minio-cluster-")
	if err != nil {
		return nil, err
	}
	c := &MinIOCluster{Dir: dir, bin: bin, CertsDir: filepath.Join(dir, "certs"), RootUser: "runbook-root"}
	c.CAsDir = filepath.Join(c.CertsDir, "CAs")
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	c.RootPassword = hex.EncodeToString(b)
	if err := os.MkdirAll(c.CAsDir, 0o700); err != nil {
		return nil, err
	}
	c.host = opts.Host
	tlsFiles, err := GenerateTLSFor(filepath.Join(dir, "tls"), "minio", net.ParseIP(c.host.Addr))
	if err != nil {
		return nil, err
	}
	c.CAFile = tlsFiles.CAFile
	for src, dst := range map[string]string{
		tlsFiles.CertFile: filepath.Join(c.CertsDir, "public.crt"),
		tlsFiles.KeyFile:  filepath.Join(c.CertsDir, "private.key"),
		tlsFiles.CAFile:   filepath.Join(c.CAsDir, "minio-ca.pem"),
	} {
		if err := copyFile(src, dst); err != nil {
			return nil, err
		}
	}
	for _, ca := range opts.CAFiles {
		data, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(c.CAsDir, "ca-"+sha256hex(data)[:12]+".pem"), data, 0o644); err != nil {
			return nil, err
		}
	}
	var env strings.Builder
	fmt.Fprintf(&env, "MINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n", c.RootUser, c.RootPassword)
	// What a systemd unit's ExecStart=minio server $MINIO_OPTS … would
	// pass (startNode reads it from the file, as systemd does).
	fmt.Fprintf(&env, "MINIO_OPTS=\"--certs-dir %s\"\n", c.CertsDir)
	keys := make([]string, 0, len(opts.Env))
	for k := range opts.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&env, "%s=%s\n", k, opts.Env[k])
	}
	for i := range opts.Nodes {
		n := &MinIONode{Name: fmt.Sprintf("node%d", i+1), c: c}
		n.Dir = filepath.Join(dir, n.Name)
		n.EnvFile = filepath.Join(n.Dir, "minio.env")
		n.LogFile = filepath.Join(n.Dir, "minio.log")
		for d := range opts.DrivesPerNode {
			if err := os.MkdirAll(filepath.Join(n.Dir, fmt.Sprintf("data%d", d+1)), 0o700); err != nil {
				return nil, err
			}
		}
		if err := os.WriteFile(n.EnvFile, []byte(env.String()), 0o600); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, n)
	}
	c.drives = opts.DrivesPerNode
	return c, nil
}

// assignEndpoints gives every node a fresh port of the test host and sets
// the endpoint list all nodes share.
func (c *MinIOCluster) assignEndpoints() {
	c.args = nil
	for _, n := range c.Nodes {
		n.Endpoint = c.host.HostPort(c.host.Port())
		n.URL = "https://" + n.Endpoint
		for d := range c.drives {
			c.args = append(c.args, n.URL+filepath.Join(n.Dir, fmt.Sprintf("data%d", d+1)))
		}
	}
	c.URL, c.Endpoint = c.Nodes[0].URL, c.Nodes[0].Endpoint
}

func (c *MinIOCluster) startAll() error {
	c.assignEndpoints()
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i, n := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.mu.Lock()
			defer n.mu.Unlock()
			errs[i] = n.start()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// start runs the node's process and waits until it serves (the caller
// holds n.mu).
func (n *MinIONode) start() error {
	c := n.c
	tr, err := c.transport()
	if err != nil {
		return err
	}
	httpClient := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	s3, err := minio.New(n.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(c.RootUser, c.RootPassword, ""), Secure: true, Transport: tr})
	if err != nil {
		return err
	}
	env := append(baseEnv("MINIO_"),
		"MINIO_CONFIG_ENV_FILE=minio.env", // relative: the same on every node
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=1", // drives on the root file system are fine here
		"HOME="+n.Dir,
	)
	args := append([]string{"server", "--address", n.Endpoint}, minioOpts(n.EnvFile, c.CertsDir)...)
	path, args := c.host.Command(c.bin, append(args, c.args...)...)
	n.proc, err = startProcess(procSpec{
		name: "minio " + n.Name, path: path, args: args, env: env, dir: n.Dir, logFile: n.LogFile,
		ready:        minioReady(n.URL, httpClient, s3),
		readyTimeout: 3 * time.Minute,
	})
	return err
}

// Restart fully stops the node and starts it again on the same port,
// re-reading its env file. It returns once the node serves, which needs
// every other node to run with the same MINIO_* environment.
func (n *MinIONode) Restart() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		n.proc.stop()
	}
	return n.start()
}

// StopNode stops the node's process.
func (n *MinIONode) StopNode() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil {
		n.proc.stop()
	}
}

// Stop stops every node.
func (c *MinIOCluster) Stop() {
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.StopNode() }()
	}
	wg.Wait()
}

// RestartsFile is where the control endpoint appends one line (the node's
// name) per restart it is asked for: what a test counts restarts by.
func (c *MinIOCluster) RestartsFile() string { return filepath.Join(c.Dir, "restarts") }

// Node finds a node by name ("node2"), number ("2") or env file path.
func (c *MinIOCluster) Node(id string) (*MinIONode, error) {
	for i, n := range c.Nodes {
		if id == n.Name || id == strconv.Itoa(i+1) || id == n.EnvFile {
			return n, nil
		}
		if abs, err := filepath.Abs(id); err == nil && abs == n.EnvFile {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node %q (use node1..node%d, a number, or the node's env file)", id, len(c.Nodes))
}

func (c *MinIOCluster) transport() (*http.Transport, error) {
	conf, err := clientTLS(c.CAFile)
	if err != nil {
		return nil, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = conf
	return tr, nil
}

// Admin returns a madmin client for node 1.
func (c *MinIOCluster) Admin() (*madmin.AdminClient, error) {
	tr, err := c.transport()
	if err != nil {
		return nil, err
	}
	return madmin.NewWithOptions(c.Endpoint, &madmin.Options{Creds: credentials.NewStaticV4(c.RootUser, c.RootPassword, ""), Secure: true, Transport: tr})
}

// ServeControl serves the loopback control endpoint of MinIOCtlMain for the
// cluster: POST /restart?node=N, POST /stop?node=N, GET /log?node=N&n=LINES.
func (c *MinIOCluster) ServeControl(t TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: MinIO control endpoint: %v", err)
	}
	note := func(n *MinIONode, format string, args ...any) {
		if f, err := os.OpenFile(n.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			fmt.Fprintf(f, "=== testenv control: "+format+"\n", args...)
			f.Close()
		}
	}
	node := func(w http.ResponseWriter, r *http.Request) *MinIONode {
		n, err := c.Node(r.URL.Query().Get("node"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return nil
		}
		return n
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restart", func(w http.ResponseWriter, r *http.Request) {
		if n := node(w, r); n != nil {
			note(n, "restart requested")
			countRestart(c.RestartsFile(), n.Name)
			if err := n.Restart(); err != nil {
				note(n, "restart failed: %v", err)
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintf(w, "restarted %s at %s\n", n.Name, n.Endpoint)
		}
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		if n := node(w, r); n != nil {
			note(n, "stop requested")
			n.StopNode()
			fmt.Fprintf(w, "stopped %s\n", n.Name)
		}
	})
	mux.HandleFunc("GET /log", func(w http.ResponseWriter, r *http.Request) {
		if n := node(w, r); n != nil {
			lines, _ := strconv.Atoi(r.URL.Query().Get("n"))
			if lines <= 0 {
				lines = 20
			}
			fmt.Fprintf(w, "%s (%s):\n%s\n", n.Name, n.LogFile, logTail(n.LogFile, lines))
		}
	})
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// CmdMinIOCluster is the script command
//
//	minio-cluster -netns [-nodes N] [-drives D] [-kes] [-key NAME] [-trust-km=false] [-release-before-km]
//
// a distributed MinIO of N server processes (default 2) with D drives each
// (default 2) inside the script's test host (test-host; -netns is required,
// and says so in the script); -kes connects it to the script's KES server
// (default key NAME, "minio-default-key", created if missing), which must
// run in the test host too (kes-server -netns). The CA of the script's Key
// Manager, if one was started, is trusted; it must run in the test host
// (key-manager -netns), where the nodes can reach it; with -trust-km=false
// it is not; with -release-before-km every node reports MinIO
// RELEASE.2024-05-07T06-41-25Z (toolcache.MinIOBeforeKM). Every node's env file sets MINIO_OPTS="--certs-dir DIR" and
// the node starts with those words, as a unit's ExecStart=minio server
// $MINIO_OPTS would. Sets MINIO_ENDPOINT, MINIO_URL (node 1), MINIO_CA,
// MINIO_ROOT_USER, MINIO_ROOT_PASSWORD, MINIO_NODES, MINIO_ENV_FILE_i,
// MINIO_SERVER_i (HOST:PORT as the object store lists it), MINIO_LOG_i and
// MINIO_DIR_i for each node i, MINIO_ENV_FILE (node 1's), MINIO_NODES_MAP
// (the aistor block's nodes map of every server, as an HCL value for
// RUNBOOK_VAR_nodes), MINIO_CERTS_DIR, MINIO_CAS_DIR, MINIO_RESTARTS (one
// line per restart asked of the control endpoint) and MINIO_CONTROL_URL
// (minio-ctl restart|stop|log NODE; NODE defaults to $RUNBOOK_NODE, which
// the cutover sets to the node's env file).
func CmdMinIOCluster(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "minio-cluster", neg)
	nodes := fs.Int("nodes", 2, "server processes")
	drives := fs.Int("drives", 2, "drives per node")
	withKES := fs.Bool("kes", false, "connect to the script's KES server")
	key := fs.String("key", "minio-default-key", "default KMS key")
	netns := fs.Bool("netns", false, "run inside the script's test host (required)")
	trustKM := fs.Bool("trust-km", true, "put the script's Key Manager CA into certs/CAs")
	beforeKM := fs.Bool("release-before-km", false, "run the MinIO that reports the release before the Key Manager client")
	parseFlags(ts, fs, args)
	if !*netns {
		ts.Fatalf("minio-cluster: the nodes run in the script's test host: run test-host first and pass -netns (in a container MinIO refuses endpoints on loopback)")
	}
	st := stateOf(ts)
	opts := MinIOClusterOptions{Nodes: *nodes, DrivesPerNode: *drives, Host: scriptHost(ts, "minio-cluster"), BeforeKM: *beforeKM}
	if st.km != nil && st.km.host != opts.Host {
		ts.Fatalf("minio-cluster: the script's Key Manager runs outside the test host, where the nodes cannot reach it: start it with key-manager -netns")
	}
	if *withKES {
		if st.kes == nil {
			ts.Fatalf("minio-cluster -kes: run kes-server first")
		}
		if st.kes.host != opts.Host {
			ts.Fatalf("minio-cluster -kes: the script's KES runs outside the test host, where the nodes cannot reach it: start it with kes-server -netns")
		}
		ensureKESKey(ts, "minio-cluster", st.kes, *key)
		opts.Env = KESEnv(st.kes, *key)
	}
	if st.km != nil && *trustKM {
		opts.CAFiles = append(opts.CAFiles, st.km.CAFile)
	}
	start := time.Now()
	c, err := startMinIOCluster(scriptTB{ts}, opts)
	if err != nil {
		ts.Fatalf("minio-cluster: %v", err)
	}
	ts.Logf("minio-cluster: %d nodes up in %s", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	ts.Setenv("MINIO_ENDPOINT", c.Endpoint)
	ts.Setenv("MINIO_URL", c.URL)
	ts.Setenv("MINIO_CA", c.CAFile)
	ts.Setenv("MINIO_ROOT_USER", c.RootUser)
	ts.Setenv("MINIO_ROOT_PASSWORD", c.RootPassword)
	ts.Setenv("MINIO_NODES", strconv.Itoa(len(c.Nodes)))
	var nodeMap []string
	for i, n := range c.Nodes {
		nodeMap = append(nodeMap, fmt.Sprintf("%q = { env_file = %q }", n.Endpoint, n.EnvFile))
		ts.Setenv(fmt.Sprintf("MINIO_SERVER_%d", i+1), n.Endpoint)
		ts.Setenv(fmt.Sprintf("MINIO_ENV_FILE_%d", i+1), n.EnvFile)
		ts.Setenv(fmt.Sprintf("MINIO_LOG_%d", i+1), n.LogFile)
		ts.Setenv(fmt.Sprintf("MINIO_DIR_%d", i+1), n.Dir)
	}
	ts.Setenv("MINIO_ENV_FILE", c.Nodes[0].EnvFile)
	ts.Setenv("MINIO_NODES_MAP", "{ "+strings.Join(nodeMap, ", ")+" }")
	ts.Setenv("MINIO_CERTS_DIR", c.CertsDir)
	ts.Setenv("MINIO_CAS_DIR", c.CAsDir)
	ts.Setenv("MINIO_RESTARTS", c.RestartsFile())
	ts.Setenv("MINIO_CONTROL_URL", c.ServeControl(scriptTB{ts}))
}

package demo

import (
	"context"
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

	"github.com/runbook-dev/runbook/internal/devcert"
)

// MinIO is the demo's object store: one or several server processes on this
// machine, each with its own port, directory and env file, forming one
// deployment (several nodes: one erasure set over one drive per node).
type MinIO struct {
	Nodes        []*Node
	CAFile       string // the CA of the nodes' certificate
	CertsDir     string // --certs-dir of every node (public.crt, private.key, CAs/)
	RootUser     string
	RootPassword string

	bin     string
	address string   // the IP every node listens on
	args    []string // the drives, the same on every node

	mu     sync.Mutex // guards closed
	closed bool       // Close began: no node starts again
}

// Node is one MinIO server process.
type Node struct {
	Name    string // node1, node2, …
	URL     string // https://ADDRESS:PORT
	Port    int
	Dir     string // its working directory
	EnvFile string // its env file, MINIO_CONFIG_ENV_FILE (the cutover edits it)
	Log     string // its stdout and stderr, every start appended

	m  *MinIO
	mu sync.Mutex // serialises starts, restarts and stops
	p  *proc
}

// rootUser is the demo's MinIO admin. Its password is random.
const rootUser = "demo-admin"

// newMinIO lays out nodes under dir (created by the caller): a certificate
// for address, the CAs the nodes trust, each node's directory, drive and
// env file (env after the root credentials, sorted by name).
func newMinIO(dir, bin, address string, ports []int, env map[string]string, trust ...string) (*MinIO, error) {
	m := &MinIO{bin: bin, address: address, CertsDir: filepath.Join(dir, "certs"), RootUser: rootUser}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	m.RootPassword = hex.EncodeToString(b)
	tlsFiles, err := devcert.Generate(filepath.Join(dir, "tls"), "minio", net.ParseIP(address))
	if err != nil {
		return nil, fmt.Errorf("make MinIO's certificate: %w", err)
	}
	m.CAFile = tlsFiles.CAFile
	cas := filepath.Join(m.CertsDir, "CAs")
	if err := os.MkdirAll(cas, 0o700); err != nil {
		return nil, err
	}
	copies := map[string]string{
		tlsFiles.CertFile: filepath.Join(m.CertsDir, "public.crt"),
		tlsFiles.KeyFile:  filepath.Join(m.CertsDir, "private.key"),
		tlsFiles.CAFile:   filepath.Join(cas, "minio-ca.pem"), // the nodes call each other
	}
	for i, ca := range trust {
		copies[ca] = filepath.Join(cas, fmt.Sprintf("trusted-%d.pem", i+1))
	}
	for src, dst := range copies {
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			return nil, err
		}
	}
	var text strings.Builder
	fmt.Fprintf(&text, "# MinIO's settings on this node, as /etc/default/minio holds them.\nMINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n", m.RootUser, m.RootPassword)
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&text, "%s=%s\n", k, env[k])
	}
	for i, port := range ports {
		n := m.node(dir, i, port)
		if err := os.MkdirAll(filepath.Join(n.Dir, "data"), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(n.EnvFile, []byte(text.String()), 0o600); err != nil {
			return nil, fmt.Errorf("write env file of %s: %w", n.Name, err)
		}
	}
	return m, nil
}

// openMinIO finds again the nodes newMinIO laid out, for a restart of the
// demo's servers after an interruption.
func openMinIO(dir, bin, address string, ports []int) (*MinIO, error) {
	m := &MinIO{bin: bin, address: address, CertsDir: filepath.Join(dir, "certs"), RootUser: rootUser, CAFile: filepath.Join(dir, "tls", "ca.pem")}
	for i, port := range ports {
		m.node(dir, i, port)
	}
	env, err := os.ReadFile(m.Nodes[0].EnvFile)
	if err != nil {
		return nil, fmt.Errorf("read env file of node1: %w", err)
	}
	for _, line := range strings.Split(string(env), "\n") {
		if v, ok := strings.CutPrefix(line, "MINIO_ROOT_PASSWORD="); ok {
			m.RootPassword = v
		}
	}
	if m.RootPassword == "" {
		return nil, fmt.Errorf("%s sets no MINIO_ROOT_PASSWORD", m.Nodes[0].EnvFile)
	}
	return m, nil
}

// node adds node i (0-based) on port to m: its paths and the drive
// arguments every node starts with.
func (m *MinIO) node(dir string, i, port int) *Node {
	n := &Node{Name: fmt.Sprintf("node%d", i+1), Port: port, m: m}
	n.Dir = filepath.Join(dir, n.Name)
	n.EnvFile = filepath.Join(n.Dir, "minio.env")
	n.Log = filepath.Join(n.Dir, "minio.log")
	n.URL = "https://" + net.JoinHostPort(m.address, strconv.Itoa(port))
	m.Nodes = append(m.Nodes, n)
	drive := filepath.Join(n.Dir, "data")
	if i == 0 {
		m.args = []string{drive} // one node: a plain drive path
	} else {
		if i == 1 {
			m.args[0] = m.Nodes[0].URL + m.args[0]
		}
		m.args = append(m.args, n.URL+drive)
	}
	return n
}

// URL is the deployment's address for clients: node 1.
func (m *MinIO) URL() string { return m.Nodes[0].URL }

// startAll starts every node's process at once; settle waits until they
// serve.
func (m *MinIO) startAll() error {
	var errs []error
	for _, n := range m.Nodes {
		n.mu.Lock()
		errs = append(errs, n.start())
		n.mu.Unlock()
	}
	return errors.Join(errs...)
}

// settle waits up to timeout until every node serves (readyCheck: a node of
// several needs its peers) and names each node that does not, with its
// log's last lines; errors wrap errPortInUse when a node's port was taken.
func (m *MinIO) settle(ctx context.Context, timeout time.Duration) error {
	errs := make([]error, len(m.Nodes))
	m.each(func(i int, n *Node) {
		ready, err := n.readyCheck()
		if err == nil {
			err = n.p.waitReady(ctx, timeout, ready)
		}
		if err != nil {
			errs[i] = fmt.Errorf("%s: %w", n.Name, err)
		}
	})
	return errors.Join(errs...)
}

// each runs fn for every node at once, each under its node's lock.
func (m *MinIO) each(fn func(i int, n *Node)) {
	var wg sync.WaitGroup
	for i, n := range m.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.mu.Lock()
			defer n.mu.Unlock()
			fn(i, n)
		}()
	}
	wg.Wait()
}

// start runs the node's process (the caller holds n.mu); it re-reads its
// env file, as every start of MinIO does.
func (n *Node) start() error {
	m := n.m
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return errors.New("the demo is stopping")
	}
	env := serverEnv(
		"MINIO_CONFIG_ENV_FILE=minio.env", // relative: the same on every node, as MinIO requires of MINIO_*
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_CI_CD=1", // drives on the root file system are fine for a demo
		"HOME="+n.Dir,
	)
	argv := append([]string{m.bin, "server", "--certs-dir", m.CertsDir, "--address", strings.TrimPrefix(n.URL, "https://")}, m.args...)
	var err error
	n.p, err = startProc("minio "+n.Name, n.Dir, n.Log, env, argv)
	return err
}

// readyCheck reports the node ready once /minio/health/live answers 200
// without a degraded server status and ListBuckets succeeds (the object
// layer and IAM are up).
func (n *Node) readyCheck() (func(context.Context) error, error) {
	hc, err := n.m.httpClient()
	if err != nil {
		return nil, err
	}
	s3, err := n.m.s3(n)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		code, status, err := n.live(ctx, hc)
		switch {
		case err != nil:
			return err
		case code != http.StatusOK:
			return fmt.Errorf("/minio/health/live: %d", code)
		case status != "":
			return fmt.Errorf("/minio/health/live: server status %q", status)
		}
		_, err = s3.ListBuckets(ctx)
		return err
	}, nil
}

// live asks /minio/health/live: its status code and MinIO's server status
// header ("" once the object layer is up; MinIO cmd/healthcheck-handler.go).
func (n *Node) live(ctx context.Context, hc *http.Client) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL+"/minio/health/live", nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Minio-Server-Status"), nil
}

// restart stops the node and starts it again, re-reading its env file, as
// `systemctl restart minio` does on a host; it returns the new process's
// id once the node's HTTP server is live (more needs its peers, restarted
// at the same time: the cutover waits for that itself).
func (n *Node) restart(ctx context.Context) (pid int, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.p.stop(10 * time.Second)
	if err := n.start(); err != nil {
		return 0, err
	}
	hc, err := n.m.httpClient()
	if err != nil {
		return 0, err
	}
	return n.p.cmd.Process.Pid, n.p.waitReady(ctx, 3*time.Minute, func(ctx context.Context) error {
		_, _, err := n.live(ctx, hc) // any answer: its HTTP server runs
		return err
	})
}

// stopAll stops every node; no node starts after it.
func (m *MinIO) stopAll() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.each(func(_ int, n *Node) { n.p.stop(10 * time.Second) })
}

// nodeByEnvFile finds the node whose env file is path.
func (m *MinIO) nodeByEnvFile(path string) (*Node, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	for _, n := range m.Nodes {
		if n.EnvFile == abs {
			return n, nil
		}
	}
	return nil, fmt.Errorf("no node of the demo has the env file %s", path)
}

func (m *MinIO) httpClient() (*http.Client, error) {
	tr, err := m.transport()
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, nil
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

// s3 is a client of node n with the root credentials.
func (m *MinIO) s3(n *Node) (*minio.Client, error) {
	tr, err := m.transport()
	if err != nil {
		return nil, err
	}
	return minio.New(strings.TrimPrefix(n.URL, "https://"), &minio.Options{Creds: credentials.NewStaticV4(m.RootUser, m.RootPassword, ""), Secure: true, Transport: tr})
}

// admin is an admin client of node n with the root credentials.
func (m *MinIO) admin(n *Node) (*madmin.AdminClient, error) {
	tr, err := m.transport()
	if err != nil {
		return nil, err
	}
	return madmin.NewWithOptions(strings.TrimPrefix(n.URL, "https://"), &madmin.Options{Creds: credentials.NewStaticV4(m.RootUser, m.RootPassword, ""), Secure: true, Transport: tr})
}

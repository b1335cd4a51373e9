package steps

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/madmin-go/v3"

	"github.com/runbook-dev/runbook/engine"
)

// nodeFacts is what Observe found of one node, before any change.
type nodeFacts struct {
	server    storeServer
	how       string // why its env file is its own
	release   string // the release it runs, as the plan shows it
	certsDir  string // the certs dir its MinIO loads
	certsFrom string // where that came from
	trust     string // what the check from the node found
	needCA    bool   // it lacks the Key Manager's CA, which install_ca installs
}

func (f nodeFacts) summary() string {
	if f.server.Endpoint == "" {
		return "not matched to a server"
	}
	return fmt.Sprintf("server %s (%s); %s; certs dir %s (%s); %s", serverLabel(f.server), f.how, f.release, f.certsDir, f.certsFrom, f.trust)
}

// matchServers reads the object store's servers (every pool) and pairs
// each with its env file, refusing any server no file covers and any file
// that matches no server (aistor_nodes.go matchNodes).
func (l *linuxPlatform) matchServers(ctx context.Context, r *engine.Run) error {
	admin, _, err := l.a.Clients(r)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	info, err := admin.ServerInfo(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("list the object store's servers (admin server info) to match them with the env files: %w", err)
	}
	servers := storeServers(info)
	refs := make([]fileRef, len(l.nodes))
	for i, n := range l.nodes {
		refs[i] = fileRef{Name: n.Name, Server: l.specs[i].Server}
		if n.Remote() && refs[i].Server == "" {
			refs[i].Host, _, _ = net.SplitHostPort(n.Host)
		}
	}
	matches, problems := matchNodes(ctx, servers, refs, systemResolver)
	if len(problems) > 0 {
		return engine.Refusef("the env files do not match the object store's servers one to one: %s. Every server must be cut over with its own env file, or it keeps the others waiting at start-up for peers with its environment, or stays on KES beside nodes on the Key Manager (docs/domain.md: Restarting a cluster). List each server's file: ssh://user@HOST/path in env_files matches the server on HOST; a local file needs its server named, nodes = { \"HOST:PORT\" = { env_file = \"PATH\" } }, HOST:PORT as `mc admin info` lists the servers (%s). Nothing was changed", strings.Join(problems, "; "), serverList(servers))
	}
	for _, m := range matches {
		for i, n := range l.nodes {
			if n.Name == m.File.Name {
				l.facts[i].server, l.facts[i].how = m.Server, m.How
			}
		}
	}
	return nil
}

// storeServers lists the servers of every pool as ServerInfo reports them.
func storeServers(info madmin.InfoMessage) []storeServer {
	var out []storeServer
	for _, s := range info.Servers {
		pools := s.PoolNumbers
		if len(pools) == 0 && s.PoolNumber > 0 && s.PoolNumber < math.MaxInt {
			pools = []int{s.PoolNumber} // MaxInt: several pools, not listed
		}
		out = append(out, storeServer{Endpoint: s.Endpoint, Pools: pools, State: s.State, Version: s.Version, Env: s.MinioEnvVars})
	}
	// ServerInfo answers in no fixed order: by pool, then endpoint.
	sort.SliceStable(out, func(i, j int) bool {
		if pi, pj := out[i].firstPool(), out[j].firstPool(); pi != pj {
			return pi < pj
		}
		return out[i].Endpoint < out[j].Endpoint
	})
	return out
}

func serverList(servers []storeServer) string {
	var names []string
	for _, s := range servers {
		names = append(names, serverLabel(s))
	}
	return "its servers: " + strings.Join(names, ", ")
}

// nodeChecks checks every node, in parallel, before any change: that its
// release has the Key Manager client, which certs dir its MinIO loads, and
// that from the node every Key Manager endpoint is reached and its
// certificate verified by the CAs that MinIO will load there (docs/domain.md, "What MinIO asks of the Key Manager":
// certs/CAs and the system roots; MinIO has no Key Manager CA variable).
// It refuses with every node's problem; what cannot be told is a risk.
func (l *linuxPlatform) nodeChecks(ctx context.Context, r *engine.Run, env map[string]string) ([]string, error) {
	var ca []byte
	if l.target.CAFile != "" {
		var err error
		if ca, err = r.ReadFile(l.target.CAFile); err != nil {
			return nil, fmt.Errorf("read the Key Manager's CA file: %w", err)
		}
	}
	problems := make([][]string, len(l.nodes))
	risks := make([]string, len(l.nodes))
	var wg sync.WaitGroup
	for i := range l.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			risks[i], problems[i] = l.checkNode(ctx, r, i, env, ca)
		}()
	}
	wg.Wait()
	var all, said []string
	for i, p := range problems {
		for _, x := range p {
			all = append(all, fmt.Sprintf("node %s (env file %s): %s", l.facts[i].server.Endpoint, l.nodes[i].Name, x))
		}
		if risks[i] != "" {
			said = append(said, fmt.Sprintf("node %s: %s", l.facts[i].server.Endpoint, risks[i]))
		}
	}
	if len(all) > 0 {
		return nil, engine.Refusef("%s. Nothing was changed, no node restarted", strings.Join(all, "; "))
	}
	return said, nil
}

// checkNode checks node i: problems refuse the cutover, risk is what the
// plan says could not be checked.
func (l *linuxPlatform) checkNode(ctx context.Context, r *engine.Run, i int, env map[string]string, ca []byte) (risk string, problems []string) {
	f := &l.facts[i]
	why, refuse := releaseCheck(f.server.Version)
	switch {
	case refuse:
		problems = append(problems, why)
		f.release = "release too old"
	case why != "":
		risk = why
		f.release = fmt.Sprintf("release unknown (%s)", f.server.Version)
	default:
		t, _ := minioRelease(f.server.Version)
		f.release = releaseTag(t)
	}
	dir, from, err := l.certsDirOf(ctx, r, i, env)
	if err != nil {
		return risk, append(problems, err.Error())
	}
	f.certsDir, f.certsFrom = dir, from
	trust, lacksCA, err := l.trustFrom(ctx, r, i, dir, ca)
	switch {
	case err != nil:
		problems = append(problems, err.Error())
	case lacksCA != "" && !l.target.InstallCA:
		problems = append(problems, lacksCA)
	case lacksCA != "":
		f.needCA = true
		f.trust = fmt.Sprintf("lacks the Key Manager's CA: install_ca puts %s into %s", l.target.CAFile, path.Join(dir, "CAs"))
	default:
		f.trust = trust
	}
	return risk, problems
}

// certsDirOf finds the certs dir node i's MinIO loads: the runbook's
// certs_dir (the node's, then the aistor block's); with restart =
// "systemd", the minio unit's ExecStart (its $MINIO_OPTS expanded, as
// systemd does) or else the default ${HOME}/.minio/certs of the unit's
// User (MinIO cmd/config-dir.go); with a restart command, MINIO_OPTS of
// the env file.
func (l *linuxPlatform) certsDirOf(ctx context.Context, r *engine.Run, i int, env map[string]string) (dir, from string, err error) {
	n := l.nodes[i]
	local := func(p string) string {
		if n.Remote() {
			return p
		}
		return r.Path(p)
	}
	if d := l.specs[i].CertsDir; d != "" {
		return local(d), fmt.Sprintf("certs_dir of nodes[%q]", l.specs[i].Server), nil
	}
	if d := l.a.CertsDir(); d != "" {
		return local(d), "certs_dir of the aistor block", nil
	}
	if l.a.RestartMode() == "systemd" {
		u, err := readUnitEnv(ctx, r, n)
		if err != nil {
			return "", "", err
		}
		vars := map[string]string{}
		for k, v := range u.Environment {
			vars[k] = v
		}
		for k, v := range env { // EnvironmentFile= overrides Environment=
			vars[k] = v
		}
		if d := minioArgsCertsDir(expandUnitWords(unitExecArgv(u.ExecStart), vars)); d != "" {
			return d, fmt.Sprintf("the %s unit's ExecStart", systemdUnit), nil
		}
		who := u.User
		if who == "" {
			who = "root"
		}
		home, err := homeOf(ctx, r, n, who)
		if err != nil {
			return "", "", err
		}
		return path.Join(home, ".minio", "certs"), fmt.Sprintf("MinIO's default for the unit's user %s", who), nil
	}
	if d := minioArgsCertsDir(strings.Fields(env["MINIO_OPTS"])); d != "" {
		return local(d), "MINIO_OPTS in its env file", nil
	}
	return "", "", fmt.Errorf("cannot tell which certs dir its MinIO loads (the CAs it will trust the Key Manager by): its env file's MINIO_OPTS names no --certs-dir, and restart = \"command\" has no unit to read; set certs_dir on the aistor block (or for this node in nodes), or --certs-dir in MINIO_OPTS")
}

// homeOf is the home directory of a user on the node.
func homeOf(ctx context.Context, r *engine.Run, n *envNode, who string) (string, error) {
	if !n.Remote() {
		u, err := user.Lookup(who)
		if err != nil {
			return "", fmt.Errorf("find the home of the %s unit's user %s: %w", systemdUnit, who, err)
		}
		return u.HomeDir, nil
	}
	out, err := n.pool.run(ctx, r, n, "getent passwd "+shellQuote(who)+" | cut -d: -f6", nil)
	home := strings.TrimSpace(string(out))
	if err != nil || home == "" {
		return "", fmt.Errorf("find the home of the %s unit's user %s on %s (getent passwd): %v", systemdUnit, who, n.Host, err)
	}
	return home, nil
}

// trustFrom reaches every Key Manager endpoint from node i (over ssh, a
// connection the node's sshd opens: direct-tcpip; from this host for a
// local file) and verifies its certificate against the roots MinIO will
// load there: the node's system roots and every file of certsDir/CAs
// (minio/pkg certs.GetRootCAs). err: an endpoint not reached, or not
// verified even with ca; lacksCA: verified only once ca is added.
func (l *linuxPlatform) trustFrom(ctx context.Context, r *engine.Run, i int, certsDir string, ca []byte) (trust, lacksCA string, err error) {
	n := l.nodes[i]
	cas, err := readNodeCAs(ctx, r, n, path.Join(certsDir, "CAs"))
	if err != nil {
		return "", "", err
	}
	roots, err := nodeSystemRoots(ctx, r, n)
	if err != nil {
		return "", "", err
	}
	pool := roots.Clone()
	pool.AppendCertsFromPEM(cas)
	var withCA *x509.CertPool
	if len(ca) > 0 {
		withCA = pool.Clone()
		withCA.AppendCertsFromPEM(ca)
	}
	var lacking []string
	for _, ep := range l.target.Endpoints {
		u, perr := url.Parse(ep)
		if perr != nil || u.Host == "" {
			return "", "", fmt.Errorf("key manager endpoint %q is not a URL", ep)
		}
		addr := u.Host
		if u.Port() == "" {
			addr = net.JoinHostPort(u.Hostname(), "443")
		}
		chain, derr := peerChain(ctx, r, n, addr, u.Hostname())
		if derr != nil {
			return "", "", fmt.Errorf("cannot reach the Key Manager %s from the node (%s): MinIO would fail to connect to its KMS at start-up; open the way from this node to %s", ep, derr, addr)
		}
		if verr := verifyChain(chain, pool, u.Hostname()); verr != nil {
			if withCA == nil || verifyChain(chain, withCA, u.Hostname()) != nil {
				return "", "", fmt.Errorf("the CAs its MinIO will load (%s/CAs, %d certificate(s), and the node's system roots) do not verify the Key Manager %s (%v), and neither does the key_manager block's ca_file: MinIO would exit at start-up with \"Failed to connect to KMS\"; put the CA that signed the Key Manager's certificate into %s/CAs", certsDir, countCerts(cas), ep, verr, certsDir)
			}
			lacking = append(lacking, ep)
		}
	}
	if len(lacking) > 0 {
		return "", fmt.Sprintf("the CAs its MinIO will load (certs dir %s: %s/CAs, %d certificate(s), and the node's system roots) do not verify the Key Manager %s (its certificate is signed by an authority they lack), so MinIO would exit at start-up with \"Failed to connect to KMS\" (MinIO has no Key Manager CA variable: MINIO_KMS_KES_CAPATH is KES's alone); put the Key Manager's CA (%s) into %s/CAs on every node, or set install_ca = true on the cutover block to have it installed (and removed again by a rollback)", certsDir, certsDir, countCerts(cas), strings.Join(lacking, ", "), l.target.CAFile, certsDir), nil
	}
	return fmt.Sprintf("reaches the Key Manager (%s) and verifies its certificate", strings.Join(l.target.Endpoints, ", ")), "", nil
}

// peerChain opens a TLS connection to addr from the node and returns the
// certificates the server presented (verified by verifyChain, so that a
// server that then wants a client certificate still shows its chain).
func peerChain(ctx context.Context, r *engine.Run, n *envNode, addr, serverName string) ([]*x509.Certificate, error) {
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var conn net.Conn
	var err error
	if n.Remote() {
		c, cerr := n.pool.client(dctx, r, n)
		if cerr != nil {
			return nil, cerr
		}
		conn, err = c.DialContext(dctx, "tcp", addr)
	} else {
		conn, err = (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var chain []*x509.Certificate
	tc := tls.Client(conn, &tls.Config{
		ServerName:         serverName,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified by verifyChain against the node's roots
		VerifyConnection: func(cs tls.ConnectionState) error {
			chain = cs.PeerCertificates
			return nil
		},
	})
	herr := tc.HandshakeContext(dctx)
	if len(chain) == 0 {
		if herr == nil {
			herr = errors.New("no certificate presented")
		}
		return nil, fmt.Errorf("TLS handshake: %w", herr)
	}
	return chain, nil
}

func verifyChain(chain []*x509.Certificate, roots *x509.CertPool, host string) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host})
	return err
}

func countCerts(pemData []byte) int {
	n := 0
	for rest := pemData; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return n
		}
		if b.Type == "CERTIFICATE" {
			n++
		}
	}
}

// readNodeCAs concatenates every readable top-level file of dir on the node
// (what certs.GetRootCAs adds); nothing when dir does not exist.
func readNodeCAs(ctx context.Context, r *engine.Run, n *envNode, dir string) ([]byte, error) {
	if !n.Remote() {
		entries, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", dir, err)
		}
		var b bytes.Buffer
		for _, e := range entries {
			if data, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil {
				b.Write(data)
				b.WriteByte('\n')
			}
		}
		return b.Bytes(), nil
	}
	script := "d=" + shellQuote(dir) + `; [ -d "$d" ] || exit 0; for f in "$d"/* "$d"/.[!.]* "$d"/..?*; do if [ -f "$f" ] && [ -r "$f" ]; then cat -- "$f"; echo; fi; done; true`
	out, err := n.pool.run(ctx, r, n, script, nil)
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", dir, n.Host, err)
	}
	return out, nil
}

// systemRootFiles are where Go (crypto/x509 root_linux.go), and so MinIO,
// finds a Linux host's system roots: the first that exists.
var systemRootFiles = []string{
	"/etc/ssl/certs/ca-certificates.crt",
	"/etc/pki/tls/certs/ca-bundle.crt",
	"/etc/ssl/ca-bundle.pem",
	"/etc/pki/tls/cacert.pem",
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
	"/etc/ssl/cert.pem",
}

// nodeSystemRoots are the node's system roots: this host's for a local
// file, else read over ssh.
func nodeSystemRoots(ctx context.Context, r *engine.Run, n *envNode) (*x509.CertPool, error) {
	if !n.Remote() {
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			return x509.NewCertPool(), nil
		}
		return pool, nil
	}
	var q []string
	for _, f := range systemRootFiles {
		q = append(q, shellQuote(f))
	}
	out, err := n.pool.run(ctx, r, n, "for f in "+strings.Join(q, " ")+`; do if [ -r "$f" ]; then cat -- "$f"; break; fi; done; true`, nil)
	if err != nil {
		return nil, fmt.Errorf("read the system roots on %s: %w", n.Host, err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(out)
	return pool, nil
}

// nodeTable is the table of nodes that the plan (as markdown) and runbook
// status show.
func (l *linuxPlatform) nodeTable() *engine.Table {
	t := &engine.Table{Title: "nodes", Header: []string{"server", "pool", "env file", "host", "release", "certs dir", "checks"}}
	for i, n := range l.nodes {
		f := l.facts[i]
		host := "this host"
		if n.Remote() {
			host = n.Host
		}
		t.Rows = append(t.Rows, []string{f.server.Endpoint, f.server.poolsLabel(), n.Name, host, f.release, fmt.Sprintf("%s (%s)", f.certsDir, f.certsFrom), f.trust})
	}
	return t
}

// The Key Manager's CA, installed where a node lacks it (install_ca).

// caFileName is the name the CA gets in a node's certs/CAs: by its content,
// so a file of that name with other content is never someone else's.
func caFileName(ca []byte) string {
	sum := sha256.Sum256(ca)
	return "runbook-key-manager-" + hex.EncodeToString(sum[:])[:12] + ".crt"
}

// caInstall is one node's CA file that a cutover attempt installs.
type caInstall struct {
	Node   string `json:"node"` // the node's env file, as in the runbook
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// caAction is the plan's line for install_ca, "" when no node needs it.
func (l *linuxPlatform) caAction() string {
	var where []string
	for i, f := range l.facts {
		if f.needCA {
			where = append(where, fmt.Sprintf("%s on %s", path.Join(f.certsDir, "CAs"), l.nodes[i].Name))
		}
	}
	if len(where) == 0 {
		return ""
	}
	return fmt.Sprintf("install the Key Manager's CA (%s) as %s into %s (install_ca = true; 0644, written atomically); rollback removes each file again if unchanged", l.target.CAFile, "runbook-key-manager-….crt", strings.Join(where, ", "))
}

// installCAs records, once per attempt and before any is written, which
// nodes get the Key Manager's CA, then writes each that is missing. A
// resume finds the list in the journal; Observe made it (apply runs
// Observe before an attempt's first change).
func (l *linuxPlatform) installCAs(ctx context.Context, r *engine.Run, g int) error {
	// A list that does not decode is an error: read as absent, a CA
	// written already would not be known as runbook's.
	plan, recorded, err := caInstallItem(g).Get(r)
	if err != nil {
		return err
	}
	if !recorded {
		if !l.target.InstallCA {
			return nil
		}
		if !l.observed {
			// A resume of an attempt killed before this list was recorded:
			// nothing was written yet, so the nodes are as they were.
			if _, err := l.Observe(ctx, r); err != nil {
				return err
			}
		}
		ca, err := r.ReadFile(l.target.CAFile)
		if err != nil {
			return fmt.Errorf("read the Key Manager's CA file: %w", err)
		}
		sum := sha256.Sum256(ca)
		plan = []caInstall{}
		for i, f := range l.facts {
			if f.needCA {
				plan = append(plan, caInstall{Node: l.nodes[i].Name, Path: path.Join(f.certsDir, "CAs", caFileName(ca)), SHA256: hex.EncodeToString(sum[:])})
			}
		}
		if len(plan) == 0 {
			return nil
		}
		if err := caInstallItem(g).Put(r, plan); err != nil {
			return err
		}
	}
	if len(plan) == 0 {
		return nil
	}
	ca, err := r.ReadFile(l.target.CAFile)
	if err != nil {
		return fmt.Errorf("read the Key Manager's CA file: %w", err)
	}
	for _, in := range plan {
		n := l.nodeNamed(in.Node)
		if n == nil {
			return fmt.Errorf("install the Key Manager's CA: node %s is no longer in the runbook", in.Node)
		}
		if sum := sha256.Sum256(ca); hex.EncodeToString(sum[:]) != in.SHA256 {
			return fmt.Errorf("install the Key Manager's CA: %s changed since the attempt began (sha256 %x, recorded %s); roll back and plan again", l.target.CAFile, sum, in.SHA256)
		}
		data, exists, err := readNodeFile(ctx, r, n, in.Path)
		if err != nil {
			return err
		}
		switch {
		case exists && envSHA256(data) == in.SHA256:
			continue
		case exists:
			return fmt.Errorf("install the Key Manager's CA on %s: %s exists with other content (sha256 %s); remove it and resume", n.Name, in.Path, envSHA256(data))
		}
		dir := path.Dir(in.Path)
		if err := mkdirNode(ctx, r, n, dir); err != nil {
			return err
		}
		f := &envNode{Name: in.Path, Path: in.Path, Host: n.Host, User: n.User, pool: n.pool}
		if err := f.write(ctx, r, ca, fileMeta{Mode: 0o644, UID: -1, GID: -1}); err != nil {
			return fmt.Errorf("install the Key Manager's CA on %s: %w", n.Name, err)
		}
		r.Logf("installed the Key Manager's CA as %s on %s", in.Path, n.Name)
	}
	return nil
}

// removeCAs removes the CA files attempt g installed: only a file that
// still has the content it wrote (anything else is left, and said).
func (l *linuxPlatform) removeCAs(ctx context.Context, r *engine.Run, g int) error {
	plan, _, err := caInstallItem(g).Get(r)
	if err != nil {
		return err
	}
	for _, in := range plan {
		n := l.nodeNamed(in.Node)
		if n == nil {
			r.Warnf("the Key Manager's CA %s on %s is left: that node is no longer in the runbook", in.Path, in.Node)
			continue
		}
		data, exists, err := readNodeFile(ctx, r, n, in.Path)
		if err != nil {
			return err
		}
		switch {
		case !exists:
			continue
		case envSHA256(data) != in.SHA256:
			r.Warnf("left %s on %s: it changed since the cutover installed it (sha256 %s)", in.Path, n.Name, envSHA256(data))
			continue
		}
		if err := removeNodeFile(ctx, r, n, in.Path); err != nil {
			return err
		}
		r.Logf("removed the Key Manager's CA %s from %s", in.Path, n.Name)
	}
	return nil
}

func (l *linuxPlatform) nodeNamed(name string) *envNode {
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// readNodeFile reads a file on the node; exists is false when it is not
// there.
func readNodeFile(ctx context.Context, r *engine.Run, n *envNode, p string) (data []byte, exists bool, err error) {
	if !n.Remote() {
		data, err = os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("read %s: %w", p, err)
		}
		return data, true, nil
	}
	out, err := n.pool.run(ctx, r, n, "p="+shellQuote(p)+`; if [ -e "$p" ]; then printf 1; cat -- "$p"; else printf 0; fi`, nil)
	if err != nil || len(out) == 0 {
		return nil, false, fmt.Errorf("read %s on %s: %v", p, n.Host, err)
	}
	return out[1:], out[0] == '1', nil
}

func mkdirNode(ctx context.Context, r *engine.Run, n *envNode, dir string) error {
	if !n.Remote() {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", dir, err)
		}
		return nil
	}
	if _, err := n.pool.run(ctx, r, n, "mkdir -p -- "+shellQuote(dir), nil); err != nil {
		return fmt.Errorf("create %s on %s: %w", dir, n.Host, err)
	}
	return nil
}

// removeNodeFile removes a file and makes the removal durable (fsync of
// its directory).
func removeNodeFile(ctx context.Context, r *engine.Run, n *envNode, p string) error {
	if !n.Remote() {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
		d, err := os.Open(filepath.Dir(p))
		if err != nil {
			return err
		}
		defer d.Close()
		return d.Sync()
	}
	if _, err := n.pool.run(ctx, r, n, "rm -f -- "+shellQuote(p)+" && sync "+shellQuote(path.Dir(p)), nil); err != nil {
		return fmt.Errorf("remove %s on %s: %w", p, n.Host, err)
	}
	return nil
}

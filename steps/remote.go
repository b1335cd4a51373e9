package steps

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/runbook-dev/runbook/engine"
)

// envNode is one node's environment file: a local path, or a path on a host
// reached through ssh (ssh://user@host[:port]/path).
type envNode struct {
	Name string // as written in env_files: the node's name in messages and checkpoints
	Path string // local: resolved against the runbook folder; ssh: the remote path
	Host string // ssh: host:port; "" for a local file
	User string // ssh user

	pool *sshPool
}

// fileMeta is what an atomic rewrite keeps of the file it replaces.
type fileMeta struct {
	Mode     os.FileMode
	UID, GID int
}

// parseEnvNode reads one env_files entry.
func parseEnvNode(entry string) (*envNode, error) {
	if !strings.Contains(entry, "://") {
		if entry == "" {
			return nil, errors.New("an env_files entry is empty")
		}
		return &envNode{Name: entry, Path: entry}, nil
	}
	u, err := url.Parse(entry)
	if err != nil {
		return nil, fmt.Errorf("env file %q: %w", entry, err)
	}
	if u.Scheme != "ssh" {
		return nil, fmt.Errorf("env file %q: only local paths and ssh://user@host[:port]/path are supported", entry)
	}
	if u.User == nil || u.User.Username() == "" || u.Hostname() == "" || u.Path == "" || u.Path == "/" {
		return nil, fmt.Errorf("env file %q: write it as ssh://user@host[:port]/path", entry)
	}
	if _, set := u.User.Password(); set {
		return nil, fmt.Errorf("env file %q: a password in the URL is not accepted; use ssh_identity (a key file) or an ssh agent", hostOnly(entry))
	}
	port := u.Port()
	if port == "" {
		port = "22"
	}
	return &envNode{Name: entry, Path: u.Path, Host: net.JoinHostPort(u.Hostname(), port), User: u.User.Username()}, nil
}

func hostOnly(entry string) string {
	if u, err := url.Parse(entry); err == nil {
		return u.Hostname()
	}
	return "(unparsable)"
}

// Remote reports whether the file is reached through ssh.
func (n *envNode) Remote() bool { return n.Host != "" }

// read returns the file's content and metadata.
func (n *envNode) read(ctx context.Context, r *engine.Run) ([]byte, fileMeta, error) {
	if !n.Remote() {
		p := r.Path(n.Path)
		data, err := r.ReadFile(n.Path)
		if err != nil {
			return nil, fileMeta{}, fmt.Errorf("read env file %s: %w", n.Name, err)
		}
		meta, err := localMeta(p)
		if err != nil {
			return nil, fileMeta{}, fmt.Errorf("read env file %s: %w", n.Name, err)
		}
		return data, meta, nil
	}
	out, err := n.pool.run(ctx, r, n, "stat -c '%a %u %g' -- "+shellQuote(n.Path)+" && cat -- "+shellQuote(n.Path), nil)
	if err != nil {
		return nil, fileMeta{}, fmt.Errorf("read env file %s: %w", n.Name, err)
	}
	head, data, ok := bytes.Cut(out, []byte("\n"))
	var meta fileMeta
	var mode uint64
	if ok {
		f := strings.Fields(string(head))
		if len(f) == 3 {
			mode, err = strconv.ParseUint(f[0], 8, 32)
			if err == nil {
				meta.UID, err = strconv.Atoi(f[1])
			}
			if err == nil {
				meta.GID, err = strconv.Atoi(f[2])
			}
			ok = err == nil
		} else {
			ok = false
		}
	}
	if !ok {
		return nil, fileMeta{}, fmt.Errorf("read env file %s: unexpected answer from stat on the host", n.Name)
	}
	meta.Mode = os.FileMode(mode) & os.ModePerm
	r.RecordInput("file "+n.Name, envSHA256(data))
	return data, meta, nil
}

func localMeta(p string) (fileMeta, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return fileMeta{}, err
	}
	m := fileMeta{Mode: fi.Mode().Perm(), UID: -1, GID: -1}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		m.UID, m.GID = int(st.Uid), int(st.Gid)
	}
	return m, nil
}

// write replaces the file atomically, keeping its mode and owner: a temp
// file beside it, fsync, rename, fsync of the directory (over ssh: the same
// with cat, chmod, chown, sync and mv).
func (n *envNode) write(ctx context.Context, r *engine.Run, data []byte, meta fileMeta) error {
	if !n.Remote() {
		if err := writeLocalAtomic(r.Path(n.Path), data, meta); err != nil {
			return fmt.Errorf("write env file %s: %w", n.Name, err)
		}
		return nil
	}
	dir, base := path.Dir(n.Path), path.Base(n.Path)
	tmp := path.Join(dir, "."+base+".runbook.tmp")
	chown := ""
	if meta.UID >= 0 {
		chown = fmt.Sprintf("chown %d:%d \"$t\"; ", meta.UID, meta.GID)
	}
	script := fmt.Sprintf("set -e; umask 077; t=%s; cat > \"$t\"; chmod %o \"$t\"; %ssync \"$t\"; mv -f \"$t\" %s; sync %s",
		shellQuote(tmp), meta.Mode, chown, shellQuote(n.Path), shellQuote(dir))
	if _, err := n.pool.run(ctx, r, n, script, data); err != nil {
		return fmt.Errorf("write env file %s: %w", n.Name, err)
	}
	return nil
}

func writeLocalAtomic(p string, data []byte, meta fileMeta) (err error) {
	dir, base := filepath.Split(p)
	tmp := filepath.Join(dir, "."+base+".runbook.tmp")
	os.Remove(tmp) // a leftover of an interrupted write
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(meta.Mode); err != nil {
		return err
	}
	if meta.UID >= 0 && (meta.UID != os.Getuid() || meta.GID != os.Getgid()) {
		if err = f.Chown(meta.UID, meta.GID); err != nil {
			return fmt.Errorf("keep the file's owner %d:%d: %w", meta.UID, meta.GID, err)
		}
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, p); err != nil {
		return err
	}
	d, err := os.Open(filepath.Clean(dir))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// exec runs argv on the node's host (locally for a local file) with env
// added, and returns its combined output.
func (n *envNode) exec(ctx context.Context, r *engine.Run, argv []string, env map[string]string) ([]byte, error) {
	if !n.Remote() {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = r.Path(".")
		cmd.Env = engine.ChildEnv(env)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		return out, err
	}
	var sb strings.Builder
	for _, k := range sortedMapKeys(env) {
		sb.WriteString(k + "=" + shellQuote(env[k]) + " ")
	}
	for i, a := range argv {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(shellQuote(a))
	}
	return n.pool.run(ctx, r, n, sb.String()+" 2>&1", nil)
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:=@%+,", c))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// sshPool holds one ssh connection per user@host for the duration of a step.
type sshPool struct {
	knownHosts string // known_hosts file
	identity   string // private key file; "" = agent, then ~/.ssh/id_*

	mu    sync.Mutex
	conns map[string]*ssh.Client
}

func newSSHPool(knownHosts, identity string) *sshPool {
	return &sshPool{knownHosts: knownHosts, identity: identity, conns: map[string]*ssh.Client{}}
}

func (p *sshPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, c := range p.conns {
		c.Close()
		delete(p.conns, k)
	}
}

func (p *sshPool) client(ctx context.Context, r *engine.Run, n *envNode) (*ssh.Client, error) {
	key := n.User + "@" + n.Host
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[key]; ok {
		return c, nil
	}
	khFile := p.knownHosts
	if khFile == "" {
		home, _ := os.UserHomeDir()
		khFile = filepath.Join(home, ".ssh", "known_hosts")
	} else {
		khFile = r.Path(khFile)
	}
	hostKeys, err := knownhosts.New(khFile)
	if err != nil {
		return nil, fmt.Errorf("read known hosts %s: %w", khFile, err)
	}
	auths, err := p.auth(r)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User: n.User,
		Auth: auths,
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := hostKeys(hostname, remote, key)
			var ke *knownhosts.KeyError
			if errors.As(err, &ke) {
				if len(ke.Want) == 0 {
					return fmt.Errorf("host key of %s is unknown: it is not in %s (add it after checking its fingerprint %s out of band)", hostname, khFile, ssh.FingerprintSHA256(key))
				}
				return fmt.Errorf("host key of %s does not match %s (it presented %s): refusing to connect — possible man in the middle", hostname, khFile, ssh.FingerprintSHA256(key))
			}
			return err
		},
		HostKeyAlgorithms: nil,
		Timeout:           15 * time.Second,
	}
	d := net.Dialer{Timeout: 15 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", n.Host)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", n.Host, err)
	}
	cc, chans, reqs, err := ssh.NewClientConn(conn, n.Host, cfg)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("ssh to %s@%s: %w", n.User, n.Host, err)
	}
	c := ssh.NewClient(cc, chans, reqs)
	p.conns[key] = c
	return c, nil
}

func (p *sshPool) auth(r *engine.Run) ([]ssh.AuthMethod, error) {
	if p.identity != "" {
		pem, err := os.ReadFile(r.Path(p.identity))
		if err != nil {
			return nil, fmt.Errorf("read ssh identity: %w", err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			return nil, fmt.Errorf("read ssh identity %s: %w (a passphrase-protected key must be served by an ssh agent)", p.identity, err)
		}
		return []ssh.AuthMethod{ssh.PublicKeys(signer)}, nil
	}
	var methods []ssh.AuthMethod
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
		if conn, err := net.Dial("unix", sock); err == nil {
			methods = append(methods, ssh.PublicKeysCallback(agent.NewClient(conn).Signers))
		}
	}
	home, _ := os.UserHomeDir()
	var signers []ssh.Signer
	for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		pem, err := os.ReadFile(filepath.Join(home, ".ssh", name))
		if err != nil {
			continue
		}
		if s, err := ssh.ParsePrivateKey(pem); err == nil {
			signers = append(signers, s)
		}
	}
	if len(signers) > 0 {
		methods = append(methods, ssh.PublicKeys(signers...))
	}
	if len(methods) == 0 {
		return nil, errors.New("no ssh credentials: set ssh_identity on the aistor block, or run an ssh agent")
	}
	return methods, nil
}

// run runs a shell command line on the node's host, with stdin if given, and
// returns stdout; on failure the error carries the end of stderr.
func (p *sshPool) run(ctx context.Context, r *engine.Run, n *envNode, cmdline string, stdin []byte) ([]byte, error) {
	c, err := p.client(ctx, r, n)
	if err != nil {
		return nil, err
	}
	s, err := c.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open ssh session on %s: %w", n.Host, err)
	}
	defer s.Close()
	var stdout, stderr bytes.Buffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if stdin != nil {
		s.Stdin = bytes.NewReader(stdin)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(cmdline) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		msg := strings.TrimSpace(r.Redact(stderr.String()))
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if msg != "" {
			return append(stdout.Bytes(), stderr.Bytes()...), fmt.Errorf("on %s: %w: %s", n.Host, err, msg)
		}
		return append(stdout.Bytes(), stderr.Bytes()...), fmt.Errorf("on %s: %w", n.Host, err)
	}
	return stdout.Bytes(), nil
}

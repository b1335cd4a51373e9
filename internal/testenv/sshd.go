package testenv

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/crypto/ssh"

	"github.com/runbook-dev/runbook/internal/toolcache"
)

// SSHDOptions configures StartSSHD.
type SSHDOptions struct {
	// SetEnv is set in every session (sshd_config SetEnv; it overrides
	// sshd's defaults, PATH included). Values must not hold spaces or
	// quotes.
	SetEnv map[string]string
}

// SSHD is a real OpenSSH server (Debian's openssh-server) on loopback,
// accepting one generated client key for the current user.
type SSHD struct {
	Port       int
	Addr       string // 127.0.0.1:PORT
	User       string // the current user
	Identity   string // the client's private key (OpenSSH format, 0600)
	KnownHosts string // known_hosts with [127.0.0.1]:PORT and the host key
	Config     string // the sshd_config
	LogFile    string // sshd -e output
	Dir        string

	proc *process
}

// sshdPath is where Debian's openssh-server puts sshd (which needs an
// absolute path to re-execute itself).
const sshdPath = "/usr/sbin/sshd"

// StartSSHD starts sshd and stops it when the test ends.
func StartSSHD(t TB, opts SSHDOptions) *SSHD {
	t.Helper()
	skipShort(t, "a real sshd")
	s, err := startSSHD(t, opts)
	if err != nil {
		t.Fatalf("testenv: StartSSHD: %v", err)
	}
	return s
}

func startSSHD(t TB, opts SSHDOptions) (*SSHD, error) {
	if err := toolcache.Executable(sshdPath); err != nil {
		return nil, fmt.Errorf("sshd (Debian openssh-server) is missing: run scripts/install-test-deps.sh (%v)", err)
	}
	u, err := user.Current()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(t.TempDir(), "sshd-")
	if err != nil {
		return nil, err
	}
	s := &SSHD{
		User:       u.Username,
		Identity:   filepath.Join(dir, "id_ed25519"),
		KnownHosts: filepath.Join(dir, "known_hosts"),
		Config:     filepath.Join(dir, "sshd_config"),
		LogFile:    filepath.Join(dir, "sshd.log"),
		Dir:        dir,
	}
	hostKeyFile := filepath.Join(dir, "ssh_host_ed25519_key")
	hostPub, err := writeSSHKey(hostKeyFile)
	if err != nil {
		return nil, err
	}
	clientPub, err := writeSSHKey(s.Identity)
	if err != nil {
		return nil, err
	}
	authKeys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authKeys, ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		return nil, err
	}
	// sshd's privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, fmt.Errorf("sshd needs /run/sshd: %v", err)
	}
	var setEnv strings.Builder // one line: sshd takes the first SetEnv only
	for _, k := range sortedKeys(opts.SetEnv) {
		v := opts.SetEnv[k]
		if strings.ContainsAny(v, " \t\"'") {
			return nil, fmt.Errorf("sshd SetEnv %s: the value holds a space or a quote", k)
		}
		if setEnv.Len() == 0 {
			setEnv.WriteString("SetEnv")
		}
		fmt.Fprintf(&setEnv, " %s=%s", k, v)
	}
	if setEnv.Len() > 0 {
		setEnv.WriteString("\n")
	}
	err = startWithPortRetry(func() error {
		if s.Port, err = freePort(); err != nil {
			return err
		}
		s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
		config := fmt.Sprintf(`# written by internal/testenv (sshd-server)
ListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile %s
AuthorizedKeysFile %s
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
LogLevel VERBOSE
%s`, s.Port, hostKeyFile, filepath.Join(dir, "sshd.pid"), authKeys, setEnv.String())
		if err := os.WriteFile(s.Config, []byte(config), 0o600); err != nil {
			return err
		}
		kh := fmt.Sprintf("[127.0.0.1]:%d %s", s.Port, ssh.MarshalAuthorizedKey(hostPub))
		if err := os.WriteFile(s.KnownHosts, []byte(kh), 0o600); err != nil {
			return err
		}
		s.proc, err = startProcess(procSpec{
			name: "sshd", path: sshdPath, args: []string{"-D", "-e", "-f", s.Config},
			env: baseEnv(), dir: dir, logFile: s.LogFile,
			ready: func() error {
				c, err := net.DialTimeout("tcp", s.Addr, time.Second)
				if err != nil {
					return err
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				line, err := bufio.NewReader(c).ReadString('\n')
				if err != nil {
					return err
				}
				if !strings.HasPrefix(line, "SSH-2.0-") {
					return fmt.Errorf("%s answers %q, not an ssh banner", s.Addr, line)
				}
				return nil
			},
			readyTimeout: 30 * time.Second,
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	t.Cleanup(s.Stop)
	t.Logf("testenv: sshd at %s for %s (config %s)", s.Addr, s.User, s.Config)
	return s, nil
}

// writeSSHKey writes a new ed25519 private key in OpenSSH format (0600) and
// returns its public key.
func writeSSHKey(file string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	return ssh.NewPublicKey(pub)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Stop stops sshd.
func (s *SSHD) Stop() {
	if s.proc != nil {
		s.proc.stop()
	}
}

// CmdSSHDServer is the script command
//
//	sshd-server [-path DIR] [-env NAME]...
//
// a real sshd (/usr/sbin/sshd, Debian openssh-server) on 127.0.0.1 that
// accepts a generated key for the current user. -path DIR puts DIR (relative
// to the script's directory) first on the sessions' PATH, before the
// script's PATH (for example a recording systemctl); -env NAME passes the
// script's variable NAME into every session. Sets SSH_PORT, SSH_KNOWN_HOSTS
// (a known_hosts file holding [127.0.0.1]:PORT and the host key),
// SSH_IDENTITY (the client key file), SSH_USER and SSHD_LOG.
func CmdSSHDServer(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "sshd-server", neg)
	pathDir := fs.String("path", "", "directory put first on the sessions' PATH")
	var envNames listValue
	fs.Var(&envNames, "env", "script variable passed into every session (repeatable)")
	parseFlags(ts, fs, args)
	opts := SSHDOptions{SetEnv: map[string]string{}}
	if *pathDir != "" {
		opts.SetEnv["PATH"] = ts.MkAbs(*pathDir) + ":" + ts.Getenv("PATH")
	}
	for _, n := range envNames {
		opts.SetEnv[n] = ts.Getenv(n)
	}
	s, err := startSSHD(scriptTB{ts}, opts)
	if err != nil {
		ts.Fatalf("sshd-server: %v", err)
	}
	ts.Setenv("SSH_PORT", strconv.Itoa(s.Port))
	ts.Setenv("SSH_KNOWN_HOSTS", s.KnownHosts)
	ts.Setenv("SSH_IDENTITY", s.Identity)
	ts.Setenv("SSH_USER", s.User)
	ts.Setenv("SSHD_LOG", s.LogFile)
}

type listValue []string

func (l *listValue) String() string     { return strings.Join(*l, ",") }
func (l *listValue) Set(v string) error { *l = append(*l, v); return nil }

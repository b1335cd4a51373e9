// Package testenv starts the real parts that runbook's tests run against: a
// KES server (v0.24.0, or v0.23.0 for the msgpack/JSON era), a MinIO server,
// a HashiCorp Vault server (KES's key store in the vault tests) and the Key
// Manager emulator, each on free loopback ports with per-test TLS material
// (Vault: plain HTTP), their output captured to a log file and stopped at
// test end.
//
// The KES, MinIO and Vault binaries come from scripts/build-real-servers.sh.
// Set RUNBOOK_KES_BIN, RUNBOOK_KES023_BIN, RUNBOOK_MINIO_BIN and
// RUNBOOK_VAULT_BIN, or let the package find them in the build cache
// (RUNBOOK_TOOLS_CACHE, default $HOME/.cache/runbook/tools). A missing binary fails the test; it is never
// skipped.
//
// The same start logic serves Go tests (StartKES, StartMinIO, ...) and
// testscript scripts (Cmds).
package testenv

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// TB is what the start functions need from a test: *testing.T and
// *testing.B satisfy it, and Cmds adapts a testscript.TestScript to it.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Versions of the real servers, as pinned by the tools modules. They are part
// of the cache path that scripts/build-real-servers.sh writes.
const (
	KESVersion    = "v0.24.0"
	KES023Version = "v0.23.0"
	MinIOVersion  = "v0.0.0-20260212201848-7aac2a2c5b7c"
	VaultVersion  = "v1.21.4"
)

type binary struct {
	env     string // environment variable naming the binary
	name    string // cache directory prefix and binary name
	version string
	toolDir string // tools module, relative to the repository root
}

var (
	binKES    = binary{"RUNBOOK_KES_BIN", "kes", KESVersion, "tools/kes"}
	binKES023 = binary{"RUNBOOK_KES023_BIN", "kes", KES023Version, "tools/kes-v0.23"}
	binMinIO  = binary{"RUNBOOK_MINIO_BIN", "minio", MinIOVersion, "tools/minio"}
	binVault  = binary{"RUNBOOK_VAULT_BIN", "vault", VaultVersion, "tools/vault"}
)

// findBinary returns the path of b, or an error that tells the user how to
// build it.
func findBinary(b binary) (string, error) {
	const hint = "run scripts/build-real-servers.sh (it prints the RUNBOOK_*_BIN lines to export)"
	if p := os.Getenv(b.env); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%s=%s: %v; %s", b.env, p, err, hint)
		}
		return p, nil
	}
	p, err := cachePath(b)
	if err != nil {
		return "", fmt.Errorf("%s is not set and the build cache cannot be located: %v; %s", b.env, err, hint)
	}
	if err := checkExecutable(p); err != nil {
		return "", fmt.Errorf("%s is not set and %s %s is not in the build cache (%v); %s", b.env, b.name, b.version, err, hint)
	}
	return p, nil
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", p)
	}
	return nil
}

// cachePath computes the path scripts/build-real-servers.sh builds b to:
// $RUNBOOK_TOOLS_CACHE/<name>-<version>-<sha256(go.sum, *.patch)[:8]>/<name>.
func cachePath(b binary) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	// The key is go.sum followed by the module's patches, in name order.
	keyed := []string{filepath.Join(root, b.toolDir, "go.sum")}
	patches, err := filepath.Glob(filepath.Join(root, b.toolDir, "*.patch"))
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range append(keyed, patches...) {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		h.Write(data)
	}
	sum := h.Sum(nil)
	cache := os.Getenv("RUNBOOK_TOOLS_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "runbook", "tools")
	}
	dir := fmt.Sprintf("%s-%s-%s", b.name, b.version, hex.EncodeToString(sum)[:8])
	return filepath.Join(cache, dir, b.name), nil
}

// repoRoot walks up from the working directory to the root of the runbook
// module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/runbook-dev/runbook\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no enclosing github.com/runbook-dev/runbook module")
		}
		dir = parent
	}
}

// mustBinary is findBinary that fails the test.
func mustBinary(t TB, b binary) string {
	t.Helper()
	p, err := findBinary(b)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// freePort returns a loopback port that was free a moment ago. The caller
// must cope with losing the race for it (startProcess retries). Tests
// replace it to provoke the race.
var freePort = loopbackPort

func loopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// process is a started server.
type process struct {
	name    string
	cmd     *exec.Cmd
	logFile string
	done    chan struct{} // closed when the process has exited
	waitErr error

	stopOnce sync.Once
}

// procSpec describes how to start a server and how to tell it is ready.
type procSpec struct {
	name    string   // for messages: "kes", "minio"
	path    string   // binary
	args    []string // arguments
	env     []string // full environment
	dir     string   // working directory
	logFile string   // stdout+stderr go here (appended)
	// ready reports nil once the server serves; it is polled until
	// readyTimeout.
	ready        func() error
	readyTimeout time.Duration
}

// errPortInUse reports that the server could not bind its port: the caller
// picks another one and tries again.
var errPortInUse = errors.New("port in use")

// startProcess starts spec and waits until it is ready. On failure it stops
// the process and returns an error carrying the tail of the log; if the log
// says the address was in use, the error wraps errPortInUse.
func startProcess(spec procSpec) (*process, error) {
	lf, err := os.OpenFile(spec.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "=== testenv: %s %s %s\n", time.Now().Format(time.RFC3339Nano), spec.path, strings.Join(spec.args, " "))
	cmd := exec.Command(spec.path, spec.args...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %v", spec.name, err)
	}
	p := &process{name: spec.name, cmd: cmd, logFile: spec.logFile, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		lf.Close()
		close(p.done)
	}()

	start := time.Now()
	deadline := start.Add(spec.readyTimeout)
	var lastErr error
	for {
		select {
		case <-p.done:
			tail := logTail(spec.logFile, 40)
			err := fmt.Errorf("%s exited before it was ready (%v); last lines of %s:\n%s", spec.name, p.waitErr, spec.logFile, tail)
			if strings.Contains(tail, "already in use") { // KES: "bind: address already in use"; MinIO: "Specified port is already in use"
				err = fmt.Errorf("%w: %v", errPortInUse, err)
			}
			return nil, err
		default:
		}
		if lastErr = spec.ready(); lastErr == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("%s not ready after %v (last check: %v); last lines of %s:\n%s",
				spec.name, spec.readyTimeout, lastErr, spec.logFile, logTail(spec.logFile, 40))
		}
		select {
		case <-p.done:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM, waits up to 5 seconds and then kills the process.
// It is safe to call more than once.
func (p *process) stop() {
	p.stopOnce.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail returns the last n lines of a file.
func logTail(file string, n int) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(cannot read log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// baseEnv returns the test process's environment without the variables that
// configure the servers, so that a developer's shell cannot leak into them.
func baseEnv(dropPrefixes ...string) []string {
	var env []string
outer:
	for _, kv := range os.Environ() {
		for _, p := range dropPrefixes {
			if strings.HasPrefix(kv, p) {
				continue outer
			}
		}
		env = append(env, kv)
	}
	return env
}

// startWithPortRetry calls try with fresh ports until it does not fail with
// errPortInUse (at most 5 times).
func startWithPortRetry(try func() error) error {
	var err error
	for range 5 {
		if err = try(); !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

func sha256hex(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

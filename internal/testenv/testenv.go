// Package testenv starts the real parts that runbook's tests run against: a
// KES server (v0.24.0, or v0.23.0 for the msgpack/JSON era), a MinIO server,
// a HashiCorp Vault server (KES's key store in the vault tests) and the Key
// Manager emulator, each on free loopback ports with per-test TLS material
// (Vault: plain HTTP), their output captured to a log file and stopped at
// test end.
//
// The KES, MinIO and Vault binaries come from scripts/build-real-servers.sh.
// Set RUNBOOK_KES_BIN, RUNBOOK_KES023_BIN, RUNBOOK_KES022_BIN,
// RUNBOOK_MINIO_FIPS_BIN (the MinIO tests run: toolcache.MinIOFIPS says
// why), RUNBOOK_MINIO_BIN (MinIO as operators run it: MinIOClusterOptions.
// ReleaseBuild), RUNBOOK_MINIO_BEFORE_KM_BIN (reporting an older release)
// and RUNBOOK_VAULT_BIN, or let the package find them in the build cache
// (internal/toolcache: RUNBOOK_TOOLS_CACHE, default
// $HOME/.cache/runbook/tools). A missing binary fails the test; it is never
// skipped.
//
// The same start logic serves Go tests (StartKES, StartMinIO, ...) and
// testscript scripts (Cmds).
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/toolcache"
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

// skipShort skips a Go test under go test -short, naming what it needs
// (what: "a real KES server"): -short is the fast tier, which runs only what needs none (CI
// never passes it). Scripts' server commands skip the same way (ShortSkips).
func skipShort(t TB, what string) {
	if st, ok := t.(testing.TB); ok && testing.Short() {
		st.Helper()
		st.Skipf("needs %s: go test -short skips it (CI runs it)", what)
	}
}

// Versions of the real servers, as pinned by the tools modules
// (internal/toolcache, which finds them in the build cache).
var (
	KESVersion    = toolcache.KES.Version
	KES023Version = toolcache.KES023.Version
	KES022Version = toolcache.KES022.Version
	MinIOVersion  = toolcache.MinIO.Version
	VaultVersion  = toolcache.Vault.Version
)

var (
	binKES    = toolcache.KES
	binKES023 = toolcache.KES023
	binKES022 = toolcache.KES022
	// the fips-tagged MinIO: admin payloads under PBKDF2, not Argon2id
	binMinIO        = toolcache.MinIOFIPS
	binMinIORelease = toolcache.MinIO
	// the same MinIO, reporting the release before the Key Manager client
	binMinIOBeforeKM = toolcache.MinIOBeforeKM
	binVault         = toolcache.Vault
)

// findBinary returns the path of b (its RUNBOOK_*_BIN variable, else the
// build cache), or an error that tells the user how to build it.
func findBinary(b toolcache.Tool) (string, error) { return toolcache.Find(b) }

// mustBinary is findBinary that fails the test.
func mustBinary(t TB, b toolcache.Tool) string {
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

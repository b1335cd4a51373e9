package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/rogpeppe/go-internal/testscript"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"minio-ctl": MinIOCtlMain})
}

// fatalTB records the first Fatalf and stops the goroutine, like testing.T.
type fatalTB struct {
	t     *testing.T
	fatal string
}

func (f *fatalTB) Helper()                         {}
func (f *fatalTB) Logf(format string, args ...any) { f.t.Logf(format, args...) }
func (f *fatalTB) Cleanup(fn func())               { f.t.Cleanup(fn) }
func (f *fatalTB) TempDir() string                 { return f.t.TempDir() }
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func runFatal(t *testing.T, fn func(TB)) string {
	f := &fatalTB{t: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return f.fatal
}

// A missing binary fails the test, naming the script that builds it.
func TestMissingBinaryFails(t *testing.T) {
	t.Setenv("RUNBOOK_KES_BIN", filepath.Join(t.TempDir(), "no-such-kes"))
	msg := runFatal(t, func(tb TB) { StartKES(tb, KESOptions{}) })
	if !strings.Contains(msg, "RUNBOOK_KES_BIN") || !strings.Contains(msg, "scripts/build-real-servers.sh") {
		t.Fatalf("StartKES with a missing binary: Fatalf(%q); want it to name RUNBOOK_KES_BIN and the build script", msg)
	}

	t.Setenv("RUNBOOK_MINIO_FIPS_BIN", "")
	t.Setenv("RUNBOOK_TOOLS_CACHE", t.TempDir())
	msg = runFatal(t, func(tb TB) { StartMinIO(tb, MinIOOptions{}) })
	if !strings.Contains(msg, "not in the build cache") || !strings.Contains(msg, "scripts/build-real-servers.sh") {
		t.Fatalf("StartMinIO with an empty cache: Fatalf(%q)", msg)
	}

	t.Setenv("RUNBOOK_VAULT_BIN", filepath.Join(t.TempDir(), "no-such-vault"))
	msg = runFatal(t, func(tb TB) { StartVault(tb, VaultOptions{}) })
	if !strings.Contains(msg, "RUNBOOK_VAULT_BIN") || !strings.Contains(msg, "scripts/build-real-servers.sh") {
		t.Fatalf("StartVault with a missing binary: Fatalf(%q)", msg)
	}
}

// A server that cannot start fails with its log tail.
func TestStartFailureShowsLog(t *testing.T) {
	mustBinary(t, binKES)
	msg := runFatal(t, func(tb TB) {
		StartKES(tb, KESOptions{ConfigExtra: "bogus_top_level: [\n"})
	})
	if !strings.Contains(msg, "kes v0.24.0 exited before it was ready") || !strings.Contains(msg, "kes.log") {
		t.Fatalf("StartKES with a broken config: Fatalf(%q)", msg)
	}
}

func TestKESKeysAndRestartOnSameStore(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := StartKES(t, KESOptions{Keys: 5, KeyPrefix: "pre-"})
	names, _, err := k.Client().ListKeys(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 5 || names[0] != "pre-00000" || names[4] != "pre-00004" {
		t.Fatalf("keys %v", names)
	}
	k.Stop()
	if _, err := k.Client().Version(ctx); err == nil {
		t.Fatal("KES still answers after Stop")
	}
	k2 := StartKES(t, KESOptions{KeyStoreDir: k.KeyStoreDir})
	if _, err := k2.Client().DescribeKey(ctx, "pre-00003"); err != nil {
		t.Fatalf("key lost across a restart on the same store: %v", err)
	}
	if _, err := kes.ParseAPIKey(k2.APIKey); err != nil {
		t.Fatal(err)
	}
}

func TestScripts(t *testing.T) {
	cmds := Cmds()
	// Test-only commands that use nothing but the environment the
	// testenv commands set, the way a runbook under test would.
	cmds["kes-list"] = func(ts *testscript.TestScript, neg bool, args []string) {
		key, err := kes.ParseAPIKey(ts.Getenv("KES_API_KEY"))
		ts.Check(err)
		cert, err := kes.GenerateCertificate(key)
		ts.Check(err)
		conf, err := clientTLS(ts.Getenv("KES_CA"))
		ts.Check(err)
		conf.Certificates = append(conf.Certificates, cert)
		c := kes.NewClientWithConfig(ts.Getenv("KES_SERVER"), conf)
		names, _, err := c.ListKeys(context.Background(), "", 10000)
		ts.Check(err)
		for _, n := range names {
			fmt.Fprintln(ts.Stdout(), n)
		}
	}
	cmds["minio-kms-status"] = func(ts *testscript.TestScript, neg bool, args []string) {
		tr, err := (&MinIO{CAFile: ts.Getenv("MINIO_CA")}).transport()
		ts.Check(err)
		adm, err := madmin.NewWithOptions(ts.Getenv("MINIO_ENDPOINT"), &madmin.Options{
			Creds:     credentials.NewStaticV4(ts.Getenv("MINIO_ROOT_USER"), ts.Getenv("MINIO_ROOT_PASSWORD"), ""),
			Secure:    true,
			Transport: tr,
		})
		ts.Check(err)
		st, err := adm.KMSStatus(context.Background())
		if neg {
			if err == nil {
				ts.Fatalf("minio-kms-status succeeded")
			}
			return
		}
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "name: %s\ndefault-key: %s\n", st.Name, st.DefaultKeyID)
		for _, s := range st.Endpoints {
			fmt.Fprintf(ts.Stdout(), "endpoint: %s\n", s)
		}
	}
	testscript.Run(t, testscript.Params{
		Dir:  filepath.Join("testdata", "script"),
		Cmds: cmds,
		Setup: func(env *testscript.Env) error {
			ScriptSetup(env)
			env.Setenv("HOME", env.WorkDir)
			return nil
		},
	})
}

// Fault options reach the emulator.
func TestKeyManagerFaults(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	km := StartKeyManager(t, KeyManagerOptions{FaultErrorRate: 1})
	start := time.Now()
	if err := km.Client().CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}); err == nil {
		t.Fatal("CreateEnclave succeeded with FaultErrorRate 1")
	} else {
		t.Logf("CreateEnclave with FaultErrorRate 1: %v (after %v)", err, time.Since(start))
	}

	km = StartKeyManager(t, KeyManagerOptions{FaultLatency: 300 * time.Millisecond})
	start = time.Now()
	if err := km.Client().CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Fatalf("CreateEnclave took %v with FaultLatency 300ms", d)
	}
}

// Losing the race for a port (another process binds it between freePort and
// the server's start) makes the start retry on another port.
func TestPortRaceRetry(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	var calls atomic.Int32
	freePort = func() (int, error) {
		if calls.Add(1) == 1 {
			return busyPort, nil
		}
		return loopbackPort()
	}
	defer func() { freePort = loopbackPort }()

	start := time.Now()
	k := StartKES(t, KESOptions{})
	t.Logf("KES started in %v", time.Since(start))
	if k.Addr == busy.Addr().String() || calls.Load() < 2 {
		t.Fatalf("KES at %s after %d port picks; want a retry away from busy port %d", k.Addr, calls.Load(), busyPort)
	}
	calls.Store(0)
	start = time.Now()
	m := StartMinIO(t, MinIOOptions{})
	t.Logf("MinIO started in %v", time.Since(start))
	if m.Endpoint == busy.Addr().String() || calls.Load() < 2 {
		t.Fatalf("MinIO at %s after %d port picks; want a retry away from busy port %d", m.Endpoint, calls.Load(), busyPort)
	}
	for _, f := range []string{k.LogFile, m.LogFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(data), "already in use") {
			t.Errorf("%s does not show the lost race", f)
		}
	}
}

// A test host is a namespace of the test's own: KES started in it listens
// on the host's address (not on any address of the root namespace), answers
// from the root namespace through the veth, and the namespace and its veth
// are gone after Close.
func TestTestHost(t *testing.T) {
	h := StartTestHost(t)
	if !strings.HasPrefix(h.Addr, "10.253.") || !strings.HasSuffix(h.Addr, ".2") {
		t.Fatalf("test host address %s, want 10.253.N.2", h.Addr)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.String() == h.Addr {
			t.Fatalf("%s is an address of the root namespace", h.Addr)
		}
	}
	k := StartKES(t, KESOptions{Host: h})
	if want := "https://" + h.Addr + ":"; !strings.HasPrefix(k.URL, want) {
		t.Fatalf("KES URL %s, want %s…", k.URL, want)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := k.Client().Version(ctx); err != nil {
		t.Fatalf("KES in the test host does not answer from the root namespace: %v", err)
	}
	out, err := exec.Command("ip", "netns", "exec", h.NetNS, "ip", "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil || !strings.Contains(string(out), h.Addr+"/30") {
		t.Fatalf("inside %s: %v\n%s", h.NetNS, err, out)
	}
	k.Stop()
	h.Close()
	if out, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(out), h.NetNS) {
		t.Fatalf("namespace %s left behind:\n%s", h.NetNS, out)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput(); strings.Contains(string(out), h.rootLink+"@") || strings.Contains(string(out), h.rootLink+":") {
		t.Fatalf("veth %s left behind", h.rootLink)
	}
}

// sshd accepts the generated key for the current user, presents the host
// key in the known_hosts file it wrote, and sets the session environment.
func TestSSHD(t *testing.T) {
	dir := t.TempDir()
	s := StartSSHD(t, SSHDOptions{SetEnv: map[string]string{"PATH": dir + ":/usr/bin:/bin", "RUNBOOK_TEST_MARK": "marked"}})
	pemBytes, err := os.ReadFile(s.Identity)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		t.Fatal(err)
	}
	hostKeys, err := knownhosts.New(s.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ssh.Dial("tcp", s.Addr, &ssh.ClientConfig{User: s.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)}, HostKeyCallback: hostKeys, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("ssh to %s: %v (sshd log:\n%s)", s.Addr, err, logTail(s.LogFile, 20))
	}
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	// (the user's shell start-up files may put more in front of PATH)
	out, err := sess.CombinedOutput(`echo "$(id -un) $RUNBOOK_TEST_MARK :$PATH"`)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if want := s.User + " marked :"; !strings.HasPrefix(string(out), want) || !strings.Contains(string(out), ":"+dir+":/usr/bin:/bin") {
		t.Fatalf("session says %q, want %q… with %s:/usr/bin:/bin in PATH", out, want, dir)
	}
}

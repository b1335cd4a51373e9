package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestHost is a test host of the project's own: a network namespace that
// the test created, joined to the root namespace by a veth pair
// (10.253.N.1/30 on the root side, 10.253.N.2/30 inside). Servers started
// in it (Command) listen on Addr, which the test and the runbook under test
// reach through the veth. It exists because MinIO in a container refuses
// endpoints that resolve to loopback, and test traffic may go nowhere but
// loopback and such hosts: never to the machine's real network address.
//
// Creating it needs root and `ip` (Debian iproute2); without them
// StartTestHost fails, saying why. It is removed when the test ends.
type TestHost struct {
	NetNS string // namespace name, rbt-<pid>-<n>
	Addr  string // 10.253.N.2: the servers' address
	Peer  string // 10.253.N.1: the root namespace's side

	ip       string // path of the ip program
	rootLink string // veth end in the root namespace
	nextPort atomic.Int32
	stopOnce sync.Once
}

var testHostSeq atomic.Int32

// StartTestHost creates a test host and removes it when the test ends.
func StartTestHost(t TB) *TestHost {
	t.Helper()
	skipShort(t, "a network namespace (test host)")
	h, err := startTestHost(t)
	if err != nil {
		t.Fatalf("testenv: StartTestHost: %v", err)
	}
	return h
}

func startTestHost(t TB) (*TestHost, error) {
	ip, err := exec.LookPath("ip")
	if err != nil {
		return nil, fmt.Errorf("a test host is a network namespace made with `ip netns` (Debian iproute2), and ip is not installed: run scripts/install-test-deps.sh (%v)", err)
	}
	seq := int(testHostSeq.Add(1))
	h := &TestHost{ip: ip, NetNS: fmt.Sprintf("rbt-%d-%d", os.Getpid(), seq)}
	h.nextPort.Store(9000)
	if _, err := h.run("netns", "add", h.NetNS); err != nil {
		return nil, fmt.Errorf("create network namespace %s (the tests run as root: they must be able to): %v", h.NetNS, err)
	}
	t.Cleanup(h.Close)
	// N (the third octet) must not collide with a test host of a test
	// running in parallel, here or in another test process: the veth
	// names carry N, so "File exists" says it is taken.
	start := os.Getpid()*31 + seq*7
	var lastErr error
	for i := range 256 {
		n := (start + i) % 256
		rootLink, nsLink := fmt.Sprintf("rbt%dh", n), fmt.Sprintf("rbt%dn", n)
		if used, err := h.subnetInUse(n); err != nil {
			return nil, err
		} else if used {
			continue
		}
		out, err := h.run("link", "add", rootLink, "type", "veth", "peer", "name", nsLink)
		if err != nil {
			if strings.Contains(out, "File exists") {
				lastErr = err
				continue
			}
			return nil, fmt.Errorf("create veth pair %s/%s: %v", rootLink, nsLink, err)
		}
		h.rootLink = rootLink
		h.Peer = fmt.Sprintf("10.253.%d.1", n)
		h.Addr = fmt.Sprintf("10.253.%d.2", n)
		steps := [][]string{
			{"link", "set", nsLink, "netns", h.NetNS},
			{"addr", "add", h.Peer + "/30", "dev", rootLink},
			{"link", "set", rootLink, "up"},
			{"netns", "exec", h.NetNS, ip, "addr", "add", h.Addr + "/30", "dev", nsLink},
			{"netns", "exec", h.NetNS, ip, "link", "set", nsLink, "up"},
			{"netns", "exec", h.NetNS, ip, "link", "set", "lo", "up"},
		}
		for _, s := range steps {
			if _, err := h.run(s...); err != nil {
				return nil, fmt.Errorf("set up test host %s: %v", h.NetNS, err)
			}
		}
		t.Logf("testenv: test host %s at %s (network namespace %s, veth %s)", h.NetNS, h.Addr, h.NetNS, rootLink)
		return h, nil
	}
	return nil, fmt.Errorf("no free 10.253.N.0/30 subnet for a test host: %v", lastErr)
}

// subnetInUse reports whether the root namespace already has an address in
// 10.253.n.0/30.
func (h *TestHost) subnetInUse(n int) (bool, error) {
	out, err := h.run("-o", "-4", "addr", "show", "to", fmt.Sprintf("10.253.%d.0/30", n))
	if err != nil {
		return false, fmt.Errorf("list addresses: %v", err)
	}
	return strings.TrimSpace(out) != "", nil
}

func (h *TestHost) run(args ...string) (string, error) {
	out, err := exec.Command(h.ip, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Command returns the program and arguments that run path with args inside
// the test host. `ip netns exec` execs the program in place, so the process
// started is the server itself (its pid, Pdeathsig and signals are the
// server's).
func (h *TestHost) Command(path string, args ...string) (string, []string) {
	return h.ip, append([]string{"netns", "exec", h.NetNS, path}, args...)
}

// Port returns a TCP port for a server of the test host. The namespace is
// the test's own and only its servers listen there, so ports are handed out
// in turn; a server that finds its port taken anyway asks for the next.
func (h *TestHost) Port() int { return int(h.nextPort.Add(1)) }

// HostPort is Addr:port.
func (h *TestHost) HostPort(port int) string { return h.Addr + ":" + strconv.Itoa(port) }

// Close removes the namespace and the veth pair. Servers in it must have
// been stopped (cleanups run in reverse order, so those started after the
// host are).
func (h *TestHost) Close() {
	h.stopOnce.Do(func() {
		_, _ = h.run("netns", "del", h.NetNS)
		if h.rootLink != "" {
			if out, err := h.run("link", "del", h.rootLink); err != nil && !strings.Contains(out, "Cannot find device") {
				fmt.Fprintf(os.Stderr, "testenv: remove test host link %s: %v\n", h.rootLink, err)
			}
		}
	})
}

// errNoTestHost is returned by the -netns commands when the script did not
// create a test host.
var errNoTestHost = errors.New("-netns: run test-host first")

// cmdTestHost is the script command
//
//	test-host
//
// which creates the script's test host (TestHost) and sets TEST_HOST (its
// address), TEST_NETNS (its namespace) and TEST_PEER (the root
// namespace's side of its link: an address of this machine that only it
// reaches).
func cmdTestHost(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "test-host", neg)
	parseFlags(ts, fs, args)
	st := stateOf(ts)
	if st.host != nil {
		ts.Fatalf("test-host: this script already created its test host")
	}
	h, err := startTestHost(scriptTB{ts})
	if err != nil {
		ts.Fatalf("test-host: %v", err)
	}
	st.host = h
	ts.Setenv("TEST_HOST", h.Addr)
	ts.Setenv("TEST_NETNS", h.NetNS)
	ts.Setenv("TEST_PEER", h.Peer)
}

// scriptHost returns the script's test host for a command's -netns flag.
func scriptHost(ts *testscript.TestScript, name string) *TestHost {
	h := stateOf(ts).host
	if h == nil {
		ts.Fatalf("%s %v", name, errNoTestHost)
	}
	return h
}

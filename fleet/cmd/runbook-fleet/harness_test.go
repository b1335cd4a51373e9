package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"
	commonpb "go.temporal.io/api/common/v1"
	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet/devserver"
	"github.com/runbook-dev/runbook/fleet/rollout"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// The tests run the real parts: this test binary re-executed as
// runbook-fleet (commands and worker processes), the real runbook built from
// the core module, an embedded Temporal server, real KES servers, the Key
// Manager emulator and a real MinIO.

var (
	runbookBin string // built once by TestMain
	sharedAddr string // the embedded server the tests share (a test that kills its server runs its own)
)

func TestMain(m *testing.M) {
	switch filepath.Base(os.Args[0]) {
	case "minio-ctl":
		testenv.MinIOCtlMain()
	}
	if os.Getenv("RUNBOOK_FLEET_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "runbook-fleet-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	runbookBin = filepath.Join(dir, "bin", "runbook")
	build := exec.Command("go", "build", "-o", runbookBin, "./cmd/runbook")
	build.Dir = "../../.."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build runbook: %v\n%s", err, out)
		return 1
	}
	self, _ := os.Executable()
	if err := os.Symlink(self, filepath.Join(dir, "bin", "minio-ctl")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	os.Setenv("PATH", filepath.Join(dir, "bin")+":"+os.Getenv("PATH"))
	srv, err := devserver.Start(filepath.Join(dir, "temporal"), "default")
	if err != nil {
		fmt.Fprintf(os.Stderr, "start the shared Temporal server: %v\n", err)
		return 1
	}
	defer srv.Stop()
	sharedAddr = srv.Address
	return m.Run()
}

// fleetEnv is a fleet under test: its folder, fleet file and deployments.
type fleetEnv struct {
	t       *testing.T
	dir     string
	file    string
	name    string
	km      *testenv.KeyManager
	stores  map[string]string // deployment → its KES fs key store
	secrets []string          // every secret the var files hold
	extra   []string          // environment of the processes started
	workers []*workerProc
}

// deploymentSpec is how newFleet makes a deployment.
type deploymentSpec struct {
	keys int
}

// fleetSpec is the fleet file's rollout and Temporal parts.
type fleetSpec struct {
	name        string
	deployments int
	keys        int
	canary      int // how many of the first deployments are the canary
	waveSize    int
	maxConc     int
	maxErrors   int
	approval    string // the approval block, verbatim
	address     string // "": the shared server; "embedded": the fleet's own
	kmLatency   time.Duration
	minio       bool // the last deployment is a real MinIO, cut over
}

// newFleet starts a KES server per deployment (its own key store, keys
// named after it) and the Key Manager emulator, and writes the fleet file,
// the runbook and one var file per deployment.
func newFleet(t *testing.T, spec fleetSpec) *fleetEnv {
	t.Helper()
	dir := t.TempDir()
	fe := &fleetEnv{t: t, dir: dir, name: spec.name, stores: map[string]string{}}
	fe.km = testenv.StartKeyManager(t, testenv.KeyManagerOptions{FaultLatency: spec.kmLatency})
	src, err := os.ReadFile("../../testdata/kes-to-km.hcl")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "kes-to-km.hcl"), string(src))
	os.MkdirAll(filepath.Join(dir, "emulated"), 0o755)
	var names []string
	for i := 1; i <= spec.deployments; i++ {
		name := fmt.Sprintf("%s-%02d", spec.name, i)
		names = append(names, name)
		k := testenv.StartKES(t, testenv.KESOptions{Keys: spec.keys, KeyPrefix: name + "-key-"})
		fe.stores[name] = k.KeyStoreDir
		fe.secrets = append(fe.secrets, k.APIKey, fe.km.RootAPIKey)
		vars := map[string]string{
			"kes_server": k.URL, "kes_api_key": k.APIKey, "kes_ca": k.CAFile, "kes_config": k.ConfigFile,
			"km_server": fe.km.URL, "km_ca": fe.km.CAFile, "sysadmin_api_key": fe.km.RootAPIKey,
			"enclave": name, "fail_marker": filepath.Join(dir, "fail-"+name), "hold_marker": filepath.Join(dir, "hold-"+name),
		}
		folder := "emulated"
		if spec.minio && i == spec.deployments {
			folder = "minio"
			m := testenv.StartMinIOWithKES(t, k, "minio-default-key")
			if err := m.AddCA(fe.km.CAFile); err != nil {
				t.Fatal(err)
			}
			fe.extra = append(fe.extra, "MINIO_CONTROL_URL="+m.ServeControl(t))
			for k, v := range map[string]string{"minio_endpoint": m.URL, "root_user": m.RootUser, "root_password": m.RootPassword, "minio_ca": m.CAFile, "restart": "command"} {
				vars[k] = v
			}
			fe.secrets = append(fe.secrets, m.RootPassword)
			vars["env_files"] = fmt.Sprintf("[%q]", m.EnvFile)
			vars["restart_command"] = `["minio-ctl", "restart"]`
		} else {
			// The rehearsal has no object store for these deployments;
			// their target stops before the cutover, which alone uses it.
			for k, v := range map[string]string{"minio_endpoint": "https://127.0.0.1:9", "root_user": "none", "root_password": "none", "minio_ca": k.CAFile} {
				vars[k] = v
			}
		}
		os.MkdirAll(filepath.Join(dir, folder), 0o755)
		var b strings.Builder
		for _, key := range sortedKeys(vars) {
			v := vars[key]
			if !strings.HasPrefix(v, "[") {
				v = fmt.Sprintf("%q", v)
			}
			fmt.Fprintf(&b, "%s = %s\n", key, v)
		}
		write(t, filepath.Join(dir, folder, name+".hcl"), b.String())
	}
	var canary []string
	for _, n := range names[:spec.canary] {
		canary = append(canary, fmt.Sprintf("%q", n))
	}
	temporal := fmt.Sprintf("temporal {\n  address = %q\n}\n", sharedAddr)
	if spec.address == "embedded" {
		temporal = ""
	}
	minio := ""
	if spec.minio {
		minio = "deployments \"minio\" {\n  dir = \"minio\"\n}\n"
	}
	text := fmt.Sprintf(`fleet {
  name    = %q
  runbook = "kes-to-km.hcl"
}

deployments "emulated" {
  dir     = "emulated"
  targets = ["exec.site_check"]
}

%s
rollout {
  canary          = [%s]
  wave_size       = %d
  max_concurrency = %d
  max_errors      = %d
%s}

%s`, spec.name, minio, strings.Join(canary, ", "), spec.waveSize, spec.maxConc, spec.maxErrors, spec.approval, temporal)
	fe.file = filepath.Join(dir, "fleet.hcl")
	write(t, fe.file, text)
	return fe
}

func write(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys(m map[string]string) []string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// command is runbook-fleet (this test binary) with the fleet's environment.
func (fe *fleetEnv) command(args ...string) *exec.Cmd {
	self, _ := os.Executable()
	cmd := exec.Command(self, args...)
	cmd.Dir = fe.dir
	cmd.Env = append(append(os.Environ(), "RUNBOOK_FLEET_TEST_MAIN=1", "RUNBOOK_BIN="+runbookBin, "RUNBOOK_FLEET_HEARTBEAT_TIMEOUT=15s"), fe.extra...)
	return cmd
}

// run runs runbook-fleet and returns its output and exit code.
func (fe *fleetEnv) run(args ...string) (string, int) {
	fe.t.Helper()
	cmd := fe.command(args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		fe.t.Fatalf("runbook fleet %s: %v", strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// must runs runbook-fleet and fails the test unless it exits 0.
func (fe *fleetEnv) must(args ...string) string {
	fe.t.Helper()
	out, code := fe.run(args...)
	if code != 0 {
		fe.t.Fatalf("runbook fleet %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// workerProc is a worker process.
type workerProc struct {
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// startWorker starts a worker process for host; it is stopped (SIGTERM)
// when the test ends unless killed before.
func (fe *fleetEnv) startWorker(host string) *workerProc {
	fe.t.Helper()
	log := filepath.Join(fe.dir, fmt.Sprintf("worker-%s-%d.log", host, time.Now().UnixNano()))
	f, err := os.Create(log)
	if err != nil {
		fe.t.Fatal(err)
	}
	cmd := fe.command("worker", fe.file, "--host", host)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		fe.t.Fatal(err)
	}
	w := &workerProc{cmd: cmd, log: log, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(w.exited)
	}()
	fe.workers = append(fe.workers, w)
	fe.t.Cleanup(w.stop)
	return w
}

// kill9 kills the worker as kill -9 would, and waits for it.
func (w *workerProc) kill9() {
	w.cmd.Process.Kill()
	<-w.exited
}

// stop stops the worker as Ctrl-C would, and waits for it.
func (w *workerProc) stop() {
	w.cmd.Process.Signal(syscall.SIGTERM)
	<-w.exited
}

// logWorkers logs every worker's output, for a failure's cause.
func (fe *fleetEnv) logWorkers() {
	fe.t.Helper()
	for _, w := range fe.workers {
		fe.t.Logf("%s:\n%s", w.log, readFile(fe.t, w.log))
	}
}

// stopWorkers stops every worker of the fleet.
func (fe *fleetEnv) stopWorkers() {
	for _, w := range fe.workers {
		w.stop()
	}
}

// replay replays a deployment's journal.
func (fe *fleetEnv) replay(name string) *engine.JournalState {
	fe.t.Helper()
	js, err := engine.Replay(fe.records(name))
	if err != nil {
		fe.t.Fatal(err)
	}
	return js
}

// noSecrets searches everything the fleet produced (its folder but the
// journals' secrets/ and backups/, the worker logs) and the history of
// every workflow it ran on Temporal for each secret of the var files.
func (fe *fleetEnv) noSecrets() {
	fe.t.Helper()
	fe.secretsIn(append(fe.producedFiles(), fe.histories()...))
}

// noSecretsBefore is noSecrets for a fleet that never started a rollout:
// its folder, and the given outputs of its commands.
func (fe *fleetEnv) noSecretsBefore(outputs ...string) {
	fe.t.Helper()
	texts := fe.producedFiles()
	for i, o := range outputs {
		texts = append(texts, fmt.Sprintf("output %d\x00%s", i+1, o))
	}
	fe.secretsIn(texts)
}

// producedFiles are the files of the fleet's folder, but the journals'
// secrets/ and backups/, the servers' folders and the embedded server's
// SQLite: each as "PATH\x00CONTENT".
func (fe *fleetEnv) producedFiles() []string {
	var texts []string
	filepath.WalkDir(fe.dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if n := d.Name(); n == "secrets" || n == "backups" || n == "emulated" || n == "minio" {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".db") || strings.HasSuffix(p, ".db-wal") {
			return nil // the embedded server's SQLite: its histories are read below
		}
		raw, err := os.ReadFile(p)
		if err == nil {
			texts = append(texts, p+"\x00"+string(raw))
		}
		return nil
	})
	return texts
}

// histories are the histories of every workflow the fleet ran on Temporal,
// payloads decoded, each as "history of ID\x00CONTENT".
func (fe *fleetEnv) histories() []string {
	var texts []string
	c := fe.client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids := []string{rollout.FleetWorkflowID(fe.name)}
	for _, ws := range fe.status().Status.Waves {
		for _, d := range ws.Deployments {
			ids = append(ids, d.WorkflowID)
		}
	}
	for _, id := range ids {
		iter := c.GetWorkflowHistory(ctx, id, "", false, 0)
		var b strings.Builder
		for iter.HasNext() {
			ev, err := iter.Next()
			if err != nil {
				fe.t.Fatalf("history of %s: %v", id, err)
			}
			raw, _ := protojson.Marshal(ev)
			b.Write(raw)
			// payloads are base64 in JSON: decode them too
			for _, p := range payloadsOf(ev) {
				b.Write(p)
			}
		}
		texts = append(texts, "history of "+id+"\x00"+b.String())
	}
	return texts
}

// secretsIn fails the test for each secret of the var files in texts.
func (fe *fleetEnv) secretsIn(texts []string) {
	fe.t.Helper()
	for _, s := range fe.secrets {
		for _, t := range texts {
			if strings.Contains(t, s) {
				name, _, _ := strings.Cut(t, "\x00")
				fe.t.Errorf("a secret (%.8s…) is in %s", s, name)
			}
		}
	}
}

// status is fleet status -json.
func (fe *fleetEnv) status() *statusReport {
	fe.t.Helper()
	out := fe.must("status", fe.file, "-json")
	var r statusReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		fe.t.Fatalf("status -json: %v\n%s", err, out)
	}
	return &r
}

// waitFor polls status until cond holds, up to timeout.
func (fe *fleetEnv) waitFor(what string, timeout time.Duration, cond func(*statusReport) bool) *statusReport {
	fe.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, code := fe.run("status", fe.file, "-json")
		if code == 0 {
			var r statusReport
			if json.Unmarshal([]byte(out), &r) == nil && cond(&r) {
				return &r
			}
		}
		if time.Now().After(deadline) {
			text, _ := fe.run("status", fe.file)
			fe.logWorkers()
			fe.t.Fatalf("waited %s for %s; status:\n%s", timeout, what, text)
		}
		time.Sleep(time.Second)
	}
}

func finished(r *statusReport) bool { return r.State != "running" }

// journal is a deployment's journal directory.
func (fe *fleetEnv) journal(name string) string {
	return filepath.Join(fe.dir, ".runbook-fleet", fe.name, "journals", name)
}

func (fe *fleetEnv) planDir(name string) string {
	return filepath.Join(fe.dir, ".runbook-fleet", fe.name, "plan", "deployments", name)
}

// records reads a deployment's journal.
func (fe *fleetEnv) records(name string) []engine.Record {
	fe.t.Helper()
	recs, _, err := engine.ReadJournal(fe.journal(name))
	if err != nil {
		fe.t.Fatalf("read the journal of %s: %v", name, err)
	}
	return recs
}

// checkKeys proves that deployment name's enclave holds exactly the keys
// of its KES store and that its verification (a round trip per key) passed.
func (fe *fleetEnv) checkKeys(name string) {
	fe.t.Helper()
	entries, err := os.ReadDir(fe.stores[name])
	if err != nil {
		fe.t.Fatal(err)
	}
	var want []string
	for _, e := range entries {
		want = append(want, e.Name())
	}
	c, err := testenv.KMSClient(fe.km.URL, fe.km.CAFile, fe.km.RootAPIKey)
	if err != nil {
		fe.t.Fatal(err)
	}
	var got []string
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for at := ""; ; {
		page, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: name, ContinueAt: at})
		if err != nil {
			fe.t.Fatalf("list the keys of enclave %s: %v", name, err)
		}
		for _, k := range page.Items {
			got = append(got, k.Name)
		}
		if at = page.ContinueAt; at == "" {
			break
		}
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(want, ",") != strings.Join(got, ",") {
		fe.t.Errorf("enclave %s holds %d key(s), its KES store %d:\n got %v\nwant %v", name, len(got), len(want), got, want)
	}
	js, err := engine.Replay(fe.records(name))
	if err != nil {
		fe.t.Fatal(err)
	}
	if st := js.Step("verification.keys"); st.State != engine.StateDone {
		fe.t.Errorf("%s: verification.keys is %s, not done: %s", name, st.State, st.Error)
	}
}

// span is when a deployment's runs wrote their journal: first and last record.
type span struct {
	name       string
	start, end time.Time
}

func (fe *fleetEnv) spans(names []string) []span {
	var out []span
	for _, n := range names {
		recs := fe.records(n)
		if len(recs) == 0 {
			continue
		}
		out = append(out, span{n, recs[0].Time, recs[len(recs)-1].Time})
	}
	return out
}

// maxOverlap is the most spans open at one instant.
func maxOverlap(spans []span) int {
	type ev struct {
		t     time.Time
		delta int
	}
	var evs []ev
	for _, s := range spans {
		evs = append(evs, ev{s.start, +1}, ev{s.end, -1})
	}
	sort.Slice(evs, func(i, j int) bool {
		if evs[i].t.Equal(evs[j].t) {
			return evs[i].delta < evs[j].delta // an end before a start at the same instant
		}
		return evs[i].t.Before(evs[j].t)
	})
	n, most := 0, 0
	for _, e := range evs {
		n += e.delta
		most = max(most, n)
	}
	return most
}

// procWatch samples the live runbook processes of each journal, to prove
// that two attempts of one deployment never overlapped.
type procWatch struct {
	mu      sync.Mutex
	overlap []string
	seen    map[string]map[int]bool // journal → pids seen
	stop    chan struct{}
	done    chan struct{}
}

func watchRunbooks(t *testing.T) *procWatch {
	w := &procWatch{seen: map[string]map[int]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			live := map[string][]int{}
			parent := map[int]int{}
			entries, _ := os.ReadDir("/proc")
			for _, e := range entries {
				var pid int
				if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
					continue
				}
				raw, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
				if err != nil {
					continue
				}
				args := strings.Split(string(bytes.TrimRight(raw, "\x00")), "\x00")
				if len(args) < 2 || args[0] != runbookBin {
					continue
				}
				ppid, alive := procParent(pid)
				if !alive {
					continue // gone, or a zombie: exited, not yet reaped
				}
				parent[pid] = ppid
				for i, a := range args {
					if a == "-journal" && i+1 < len(args) {
						live[args[i+1]] = append(live[args[i+1]], pid)
					}
				}
			}
			// A runbook's child between fork and exec (of sh, ssh-keygen, …)
			// still shows the runbook's command line: not an attempt.
			for j, pids := range live {
				var attempts []int
				for _, p := range pids {
					if !slices.Contains(pids, parent[p]) {
						attempts = append(attempts, p)
					}
				}
				live[j] = attempts
			}
			w.mu.Lock()
			for j, pids := range live {
				if w.seen[j] == nil {
					w.seen[j] = map[int]bool{}
				}
				for _, p := range pids {
					w.seen[j][p] = true
				}
				if len(pids) > 1 {
					w.overlap = append(w.overlap, fmt.Sprintf("%s: pids %v at once", j, pids))
				}
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.end)
	return w
}

func (w *procWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

var _ = rollout.StateDone

// client is a Temporal client of the fleet's server.
func (fe *fleetEnv) client() client.Client {
	fe.t.Helper()
	addr := sharedAddr
	if a, _ := devserver.Running(filepath.Join(fe.dir, ".runbook-fleet", fe.name, "temporal")); a != "" {
		addr = a
	}
	c, err := client.Dial(client.Options{HostPort: addr, Logger: sdklog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))})
	if err != nil {
		fe.t.Fatal(err)
	}
	return c
}

// payloadsOf is every payload's data in a history event, found by walking
// its message.
func payloadsOf(m proto.Message) [][]byte {
	var out [][]byte
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if p, ok := msg.Interface().(*commonpb.Payload); ok {
			out = append(out, p.GetData())
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return out
}

// started reports whether a deployment's journal holds a record (fleet plan
// makes the journal's folder and hash key, and nothing else).
func (fe *fleetEnv) started(name string) bool {
	recs, _, err := engine.ReadJournal(fe.journal(name))
	return err == nil && len(recs) > 0
}

// procParent reads /proc/PID/stat: the process's parent, and whether it is
// alive (it exists and is not a zombie, exited and not yet reaped).
func procParent(pid int) (ppid int, alive bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// pid (comm) state ppid …
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 2 || fields[0] == "Z" {
		return 0, false
	}
	fmt.Sscanf(fields[1], "%d", &ppid)
	return ppid, true
}

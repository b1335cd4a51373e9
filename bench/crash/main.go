// Command crash is the crash-test harness of issue 11: it runs the whole
// runbooks/migrate.hcl against a real KES (N keys), the Key Manager emulator
// and a real MinIO, kills `runbook apply` with SIGKILL at random instants
// spread over the whole run (stratified by step: the steps in turn, each
// killed a random time after the journal records it running, drawn from how
// long it ran in an uninterrupted apply, so every step, the cutover
// included, is hit however short), and follows each kill with `runbook resume` or `runbook
// rollback` (alternate steps, the others in the next pass over the steps). After each it checks what an operator would:
//
//   - the journal reads (checksums, sequence) and says every step is done
//     (resume) or undone (rollback);
//   - no key is lost: after a resume the enclave holds every source key, and
//     each one decrypts at the Key Manager what was sealed locally with the
//     source's material (so none was imported twice with different
//     material); after a rollback the enclave is gone and the KES key store
//     still holds every key;
//   - the object store is on exactly one KMS: its KMS status names the Key
//     Manager after a resume and KES after a rollback, and its env file
//     configures that one only;
//   - every object written before the run reads back byte for byte.
//
// Each point is a fresh MinIO on KES and a fresh enclave; KES and the
// emulator are shared. It is not a timed test: it prints a Markdown table
// (docs/crash-test.md) and exits non-zero if any point failed.
//
//	go build -o /tmp/runbook ./cmd/runbook
//	. scripts/tools-env.sh
//	go run ./bench/crash -runbook /tmp/runbook -keys 2000 -points 100
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/minio/kms-go/kms"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/s3bucket"
	"github.com/runbook-dev/runbook/internal/testenv"
)

const defaultKey = "minio-default-key"

// noRun is how resume and rollback refuse when the journal records no run.
var noRun = regexp.MustCompile(`there is no journal in|records no run`)

func main() {
	// The cutover's restart command: this program, called as minio-ctl.
	if filepath.Base(os.Args[0]) == "minio-ctl" {
		testenv.MinIOCtlMain()
	}
	runbookBin := flag.String("runbook", "", "the runbook binary (go build -o /tmp/runbook ./cmd/runbook)")
	runbookFile := flag.String("migrate", "runbooks/migrate.hcl", "the runbook to crash")
	keys := flag.Int("keys", 2000, "keys in the KES key store (plus MinIO's default key)")
	points := flag.Int("points", 100, "kill instants")
	rollback := flag.Bool("rollback", true, "follow about half the kills with rollback instead of resume, every step both ways across two passes")
	seed := flag.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (printed; give it again to repeat a run)")
	keep := flag.Bool("keep", false, "keep the work directory")
	verbose := flag.Bool("v", false, "log the servers' start-up")
	flag.Parse()
	if *runbookBin == "" {
		log.Fatal("crash: -runbook is required")
	}
	bin, err := filepath.Abs(*runbookBin)
	check(err)
	src, err := os.ReadFile(*runbookFile)
	check(err)
	// Approvals guard a reviewed plan; this harness tests crashes, so the
	// runbook is applied from its file.
	src = regexp.MustCompile(`(?m)^\s*approvals\s*=.*\n`).ReplaceAll(src, nil)

	work, err := os.MkdirTemp("", "crash-")
	check(err)
	root := &tb{work: work, verbose: *verbose}
	failed := 0
	func() {
		defer root.cleanup()
		defer func() {
			if r := recover(); r != nil {
				if f, ok := r.(fatal); ok {
					log.Printf("crash: %s", f)
					failed = -1
					return
				}
				panic(r)
			}
		}()
		failed = run(root, bin, src, *keys, *points, *rollback, *seed)
	}()
	if !*keep {
		os.RemoveAll(work)
	} else {
		log.Printf("crash: work directory kept: %s", work)
	}
	if failed != 0 {
		os.Exit(1)
	}
}

func check(err error) {
	if err != nil {
		log.Fatal("crash: ", err)
	}
}

// harness is what every point shares.
type harness struct {
	bin     string
	src     []byte
	kes     *testenv.KES
	km      *testenv.KeyManager
	kmc     *kms.Client
	srcKeys map[string]kescrypto.Key
	pathDir string // holds minio-ctl
	// steps are the runbook's steps, as the uninterrupted apply's journal
	// names them: after a resume every one of them must be done, not only
	// those the journal happens to name (a step never started has no
	// record).
	steps []string
}

func run(root *tb, bin string, src []byte, nKeys, points int, rollback bool, seed uint64) int {
	rng := mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	h := &harness{bin: bin, src: src}
	h.kes = testenv.StartKES(root, testenv.KESOptions{Keys: nKeys})
	h.km = testenv.StartKeyManager(root, testenv.KeyManagerOptions{})
	var err error
	h.kmc, err = testenv.KMSClient(h.km.Addr, h.km.CAFile, h.km.RootAPIKey)
	root.check(err)
	h.pathDir = root.TempDir()
	self, err := os.Executable()
	root.check(err)
	root.check(os.Symlink(self, filepath.Join(h.pathDir, "minio-ctl")))

	fmt.Printf("crash test: runbook %s on %d keys (+ %s), %d kill points, rollback %v, seed %d\n\n", filepath.Base(bin), nKeys, defaultKey, points, rollback, seed)
	// Point 0: an uninterrupted apply, the baseline and the time scale:
	// when each step ran, from its journal.
	base := h.point(root, 0, nil, "resume")
	fmt.Printf("full apply without a kill: %s (%s)\n", base.applied.Round(time.Millisecond), base.result)
	if base.result != "ok" {
		return 1
	}
	for _, w := range base.windows {
		fmt.Printf("  %-24s %8s .. %8s\n", w.step, w.from.Round(time.Millisecond), w.to.Round(time.Millisecond))
		if w.step != startUp && !slices.Contains(h.steps, w.step) {
			h.steps = append(h.steps, w.step)
		}
	}
	fmt.Println()
	h.sourceKeys(root) // the key store as the baseline left it: N keys and MinIO's default key
	fmt.Println("| # | kill after | step(s) under way at the kill | then | took | result |")
	fmt.Println("|---:|---:|---|---|---:|---|")
	failed := 0
	steps := map[string]int{}
	for i := 1; i <= points; i++ {
		// The steps in turn, each at a random instant of its window in
		// the baseline: every step is hit, however short.
		n := len(base.windows)
		w := base.windows[(i-1)%n]
		at := &killAt{step: w.step, after: time.Duration(rng.Float64() * float64(w.to-w.from))}
		if w.step == startUp {
			at = &killAt{after: w.from + at.after}
		}
		// Alternate steps are rolled back, the other half in the next
		// pass over the steps: two passes kill every step both ways.
		action := "resume"
		if rollback && ((i-1)/n+(i-1)%n)%2 == 1 {
			action = "rollback"
		}
		p := h.point(root, i, at, action)
		if p.result != "ok" {
			failed++
		}
		steps[p.underway]++
		fmt.Printf("| %d | %s | %s | %s | %s | %s |\n", i, at, p.underway, action, p.took.Round(time.Millisecond), p.result)
	}
	var hit []string
	for s, n := range steps {
		hit = append(hit, fmt.Sprintf("%s %d", s, n))
	}
	sort.Strings(hit)
	fmt.Printf("\nkills by step under way: %s\n", strings.Join(hit, ", "))
	fmt.Printf("%d of %d points passed every check\n", points-failed, points)
	return failed
}

// pointResult is what one kill instant gave.
type pointResult struct {
	applied  time.Duration // how long the apply ran (until the kill or its end)
	windows  []window      // when each step ran, from the start of the apply
	underway string        // the steps under way at the kill, from the journal
	took     time.Duration // the resume or rollback
	result   string        // "ok" or what failed
}

// point runs one apply, kills it after at (at < 0: never), follows with
// action and checks. A fresh MinIO on KES and a fresh enclave each time.
func (h *harness) point(root *tb, i int, at *killAt, action string) (res pointResult) {
	t := root.child()
	defer t.cleanup()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			res.result = "FAIL: " + string(f)
		}
	}()
	m := testenv.StartMinIOWithKES(t, h.kes, defaultKey)
	t.check(m.AddCA(h.km.CAFile))
	ctl := m.ServeControl(t)
	objects := putObjects(t, m)

	dir := t.TempDir()
	rb := filepath.Join(dir, "migrate.hcl")
	t.check(os.WriteFile(rb, h.src, 0o600))
	enclave := fmt.Sprintf("crash-%03d", i)
	env := append(os.Environ(),
		"PATH="+h.pathDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"MINIO_CONTROL_URL="+ctl,
		"RUNBOOK_VAR_kes_server="+h.kes.URL, "RUNBOOK_VAR_kes_api_key="+h.kes.APIKey,
		"RUNBOOK_VAR_kes_ca="+h.kes.CAFile, "RUNBOOK_VAR_kes_config="+h.kes.ConfigFile,
		"RUNBOOK_VAR_km_server="+h.km.URL, "RUNBOOK_VAR_km_ca="+h.km.CAFile, "RUNBOOK_VAR_sysadmin_api_key="+h.km.RootAPIKey,
		"RUNBOOK_VAR_minio_endpoint="+m.URL, "RUNBOOK_VAR_minio_ca="+m.CAFile,
		"RUNBOOK_VAR_root_user="+m.RootUser, "RUNBOOK_VAR_root_password="+m.RootPassword,
		fmt.Sprintf("RUNBOOK_VAR_env_files=[%q]", m.EnvFile),
		"RUNBOOK_VAR_restart=command", `RUNBOOK_VAR_restart_command=["minio-ctl","restart"]`,
		"RUNBOOK_VAR_enclave="+enclave,
	)
	runbook := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(h.bin, args...)
		cmd.Dir, cmd.Env = dir, env
		out, err := os.Create(filepath.Join(dir, name+".out"))
		t.check(err)
		t.Cleanup(func() { out.Close() })
		cmd.Stdout, cmd.Stderr = out, out
		return cmd
	}
	tail := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(dir, name+".out"))
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		return strings.Join(lines[max(0, len(lines)-3):], " / ")
	}

	apply := runbook("apply", "apply", rb)
	start := time.Now()
	t.check(apply.Start())
	done := make(chan error, 1)
	go func() { done <- apply.Wait() }()
	journal := filepath.Join(dir, ".runbook", "migrate")
	var applyErr error
	killed := false
	if at != nil {
		stop := make(chan struct{})
		trigger := make(chan struct{})
		go func() {
			if at.step != "" && !waitRunning(filepath.Join(journal, engine.JournalFile), at.step, stop) {
				return
			}
			select {
			case <-time.After(at.after):
				close(trigger)
			case <-stop:
			}
		}()
		select {
		case applyErr = <-done:
		case <-trigger:
			apply.Process.Signal(syscall.SIGKILL)
			<-done
			killed = true
		}
		close(stop)
	} else {
		applyErr = <-done
	}
	res.applied = time.Since(start)
	res.underway = underway(t, journal, killed)
	if !killed && applyErr != nil {
		t.Fatalf("the apply failed without a kill: %v: %s", applyErr, tail("apply"))
	}
	if at == nil {
		res.windows = windows(t, journal, start, res.applied)
	}

	// A resume of a finished run has nothing to do; a rollback undoes it.
	if killed || action == "rollback" {
		start = time.Now()
		cmd := runbook(action, action, rb)
		err := cmd.Run()
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 3 && noRun.MatchString(tail(action)) {
			// Killed before the run was recorded: nothing was done, and
			// resume and rollback say so (exit 3). The operator applies
			// again; for a rollback there is nothing to undo.
			if _, lerr := h.kmc.ListKeys(context.Background(), &kms.ListRequest{Enclave: enclave}); !errors.Is(lerr, kms.ErrEnclaveNotFound) {
				t.Fatalf("%s says nothing was run, but enclave %s exists (%v)", action, enclave, lerr)
			}
			err = nil
			if action == "resume" {
				err = runbook("apply-again", "apply", rb).Run()
				action = "apply-again"
			}
		}
		res.took = time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v: %s", action, err, tail(action))
		}
		if action == "apply-again" {
			action = "resume"
		}
	}

	// The journal reads, and says where things are.
	js, _, err := engine.LoadJournal(journal)
	if errors.Is(err, os.ErrNotExist) && action == "rollback" {
		js, err = engine.Replay(nil) // killed before the journal: nothing to read
	}
	if err != nil {
		t.Fatalf("journal: %v", err)
	}
	want := engine.StateDone
	if action == "rollback" {
		want = engine.StateRolledBack
	}
	for addr, st := range js.Steps {
		if st.State != want && !(action == "rollback" && st.State == engine.StatePending) {
			t.Fatalf("journal: %s is %s after %s, want %s", addr, st.State, action, want)
		}
	}
	if action != "rollback" {
		for _, addr := range h.steps {
			if st := js.Step(addr).State; st != engine.StateDone {
				t.Fatalf("journal: %s is %s after %s, want done", addr, st, action)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := m.Admin().KMSStatus(ctx)
	if err != nil {
		t.Fatalf("KMS status: %v", err)
	}
	envFile, err := os.ReadFile(m.EnvFile)
	t.check(err)
	kesActive := regexp.MustCompile(`(?m)^MINIO_KMS_KES_ENDPOINT=`).Match(envFile)
	kmActive := regexp.MustCompile(`(?m)^MINIO_KMS_ENCLAVE=` + regexp.QuoteMeta(enclave) + `$`).Match(envFile)
	if action == "resume" {
		if st.Name != "MinIO KMS" || kesActive || !kmActive {
			t.Fatalf("after resume the object store reports %q; env file: KES active %v, enclave %s active %v", st.Name, kesActive, enclave, kmActive)
		}
		h.checkEnclave(ctx, t, enclave)
	} else {
		if st.Name != "MinIO KES" || !kesActive || kmActive {
			t.Fatalf("after rollback the object store reports %q; env file: KES active %v, enclave %s active %v", st.Name, kesActive, enclave, kmActive)
		}
		if _, err := h.kmc.ListKeys(ctx, &kms.ListRequest{Enclave: enclave}); !errors.Is(err, kms.ErrEnclaveNotFound) {
			t.Fatalf("after rollback enclave %s is still there (%v)", enclave, err)
		}
		entries, err := os.ReadDir(h.kes.KeyStoreDir)
		t.check(err)
		if len(entries) != len(h.sourceKeys(t)) {
			t.Fatalf("after rollback the KES key store holds %d entries, want %d", len(entries), len(h.sourceKeys(t)))
		}
	}
	checkObjects(ctx, t, m, objects)
	res.result = "ok"
	return res
}

// killAt is when a point kills the apply: after the journal records step
// running (step "": after the apply started), once after has passed.
type killAt struct {
	step  string
	after time.Duration
}

func (k *killAt) String() string {
	if k.step == "" {
		return fmt.Sprintf("start +%s", k.after.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s +%s", k.step, k.after.Round(time.Millisecond))
}

// startUp names the window before the first step.
const startUp = "(start-up)"

// waitRunning returns true once the journal file records step running, or
// false when stop closes first. It reads what was appended since its last
// look, every millisecond.
func waitRunning(path, step string, stop <-chan struct{}) bool {
	needle := []byte(fmt.Sprintf(`"kind":"state","step":%q,"state":"running"`, step))
	var off int64
	var carry []byte
	for {
		if f, err := os.Open(path); err == nil {
			f.Seek(off, io.SeekStart)
			b, _ := io.ReadAll(f)
			f.Close()
			off += int64(len(b))
			carry = append(carry, b...)
			if bytes.Contains(carry, needle) {
				return true
			}
			if i := bytes.LastIndexByte(carry, '\n'); i >= 0 {
				carry = carry[i+1:]
			}
		}
		select {
		case <-stop:
			return false
		case <-time.After(time.Millisecond):
		}
	}
}

// window is when a step ran in an uninterrupted apply, from its start.
type window struct {
	step     string
	from, to time.Duration
}

// windows reads when each step ran from the journal of an uninterrupted
// apply, plus the time before its first step (start-up, the run record).
func windows(t *tb, journal string, start time.Time, total time.Duration) []window {
	records, _, err := engine.ReadJournal(journal)
	t.check(err)
	var ws []window
	at := map[string]int{}
	for _, r := range records {
		if r.Kind != engine.RecordState {
			continue
		}
		d := r.Time.Sub(start)
		switch r.State {
		case engine.StateRunning:
			if len(ws) == 0 {
				ws = append(ws, window{step: startUp, from: 0, to: d})
			}
			at[r.Step] = len(ws)
			ws = append(ws, window{step: r.Step, from: d, to: d})
		case engine.StateDone:
			if i, ok := at[r.Step]; ok {
				ws[i].to = d
			}
		}
	}
	if len(ws) == 0 {
		t.Fatalf("the baseline's journal shows no step running")
	}
	return ws
}

// underway names the steps the journal shows under way (running, rolling
// back), or, with none, the last to change state.
func underway(t *tb, journal string, killed bool) string {
	if !killed {
		return "(finished before the kill)"
	}
	records, _, err := engine.ReadJournal(journal)
	if errors.Is(err, os.ErrNotExist) {
		return "(before the journal)"
	}
	if err != nil {
		return "(journal: " + err.Error() + ")"
	}
	var mid []string
	last := ""
	state := map[string]engine.State{}
	for _, r := range records {
		if r.Kind == engine.RecordState {
			state[r.Step] = r.State
			last = r.Step + " " + string(r.State)
		}
	}
	for s, st := range state {
		if st == engine.StateRunning || st == engine.StateRollingBack {
			mid = append(mid, s)
		}
	}
	sort.Strings(mid)
	if len(mid) == 0 {
		if last == "" {
			return "(run not started)"
		}
		return "(between steps: " + last + ")"
	}
	return strings.Join(mid, ", ")
}

// sourceKeys reads the KES key store once: the keys every check compares with.
func (h *harness) sourceKeys(t *tb) map[string]kescrypto.Key {
	if h.srcKeys != nil {
		return h.srcKeys
	}
	entries, err := os.ReadDir(h.kes.KeyStoreDir)
	t.check(err)
	keys := map[string]kescrypto.Key{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(h.kes.KeyStoreDir, e.Name()))
		t.check(err)
		k, err := kescrypto.ParseKey(b)
		if err != nil {
			t.Fatalf("source key %s: %v", e.Name(), err)
		}
		keys[e.Name()] = k
	}
	h.srcKeys = keys
	return keys
}

// checkEnclave proves that the enclave holds exactly the source keys, each
// with the source's material: a ciphertext sealed here with the source key
// decrypts at the Key Manager to the same bytes.
func (h *harness) checkEnclave(ctx context.Context, t *tb, enclave string) {
	src := h.sourceKeys(t)
	have := map[string]bool{}
	req := &kms.ListRequest{Enclave: enclave}
	for {
		page, err := h.kmc.ListKeys(ctx, req)
		if err != nil {
			t.Fatalf("list enclave %s: %v", enclave, err)
		}
		for _, k := range page.Items {
			have[k.Name] = true
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			break
		}
		req = &kms.ListRequest{Enclave: enclave, ContinueAt: page.ContinueAt}
	}
	var missing, extra []string
	for n := range src {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	for n := range have {
		if _, ok := src[n]; !ok {
			extra = append(extra, n)
		}
	}
	if len(missing)+len(extra) > 0 {
		sort.Strings(missing)
		sort.Strings(extra)
		t.Fatalf("enclave %s: %d key(s) lost %.5v, %d extra %.5v", enclave, len(missing), missing, len(extra), extra)
	}
	aad := []byte("crash test")
	for n, k := range src {
		plain := make([]byte, 32)
		rand.Read(plain)
		ct, err := kescrypto.Seal(k, plain, aad)
		t.check(err)
		resp, err := h.kmc.Decrypt(ctx, enclave, &kms.DecryptRequest{Name: n, Ciphertext: ct, AssociatedData: aad})
		if err != nil || len(resp) != 1 || !bytes.Equal(resp[0].Plaintext, plain) {
			t.Fatalf("key %s in enclave %s does not hold the source's material (%v)", n, enclave, err)
		}
	}
}

// putObjects writes SSE-S3 and SSE-KMS objects and returns their digests.
func putObjects(t *tb, m *testenv.MinIO) map[string][32]byte {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := m.Client()
	_, err := s3bucket.Make(ctx, c, "crash")
	t.check(err)
	kmsEnc, err := encrypt.NewSSEKMS(defaultKey, nil)
	t.check(err)
	out := map[string][32]byte{}
	for i, enc := range []encrypt.ServerSide{encrypt.NewSSE(), encrypt.NewSSE(), kmsEnc, kmsEnc} {
		body := make([]byte, 64<<10)
		rand.Read(body)
		name := fmt.Sprintf("obj-%d", i)
		if _, err := c.PutObject(ctx, "crash", name, bytes.NewReader(body), int64(len(body)), minio.PutObjectOptions{ServerSideEncryption: enc}); err != nil {
			t.Fatalf("put %s: %v", name, err)
		}
		out[name] = sha256.Sum256(body)
	}
	return out
}

// checkObjects reads every object back, byte for byte.
func checkObjects(ctx context.Context, t *tb, m *testenv.MinIO, objects map[string][32]byte) {
	c := m.Client()
	for name, sum := range objects {
		o, err := c.GetObject(ctx, "crash", name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		b, err := io.ReadAll(o)
		o.Close()
		if err != nil || sha256.Sum256(b) != sum {
			t.Fatalf("object %s does not read back as written (%v)", name, err)
		}
	}
}

// tb lets testenv run outside a test: Fatalf panics with a fatal that the
// point (or main) recovers, after which the cleanups run.
type tb struct {
	work     string
	verbose  bool
	cleanups []func()
}

type fatal string

func (t *tb) Helper() {}
func (t *tb) Fatalf(format string, args ...any) {
	panic(fatal(fmt.Sprintf(format, args...)))
}
func (t *tb) Logf(format string, args ...any) {
	if t.verbose {
		log.Printf(format, args...)
	}
}
func (t *tb) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *tb) TempDir() string {
	d, err := os.MkdirTemp(t.work, "t")
	if err != nil {
		t.Fatalf("temp dir: %v", err)
	}
	return d
}
func (t *tb) check(err error) {
	if err != nil {
		t.Fatalf("%v", err)
	}
}
func (t *tb) child() *tb { return &tb{work: t.work, verbose: t.verbose} }
func (t *tb) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
	t.cleanups = nil
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/demo"
	"github.com/runbook-dev/runbook/internal/toolcache"
	"github.com/runbook-dev/runbook/runbooks"
)

func init() {
	register(&command{name: "demo", usage: "[--dir DIR] [--nodes N] [--address IP] [--keys-only] [resume|rollback]: rehearse the whole procedure on embedded defaults (KES, the Key Manager emulator and a real MinIO on this machine: keys moved and proven, MinIO cut over and rolled back); resume or rollback continues an interrupted demo in DIR", run: runDemo})
}

// runDemo rehearses demo.hcl, the whole procedure, on servers it starts on
// this machine (internal/demo): plan with a change request, apply it through
// the cutover, check every node and the sample objects, roll back to KES,
// check again; every server is stopped at the end, or when interrupted.
// `resume` and `rollback` start the servers of an interrupted demo again
// and continue from its journal. --keys-only, and a machine that cannot
// build the servers, rehearse the key migration alone (demo-keys.hcl).
// `restart-node` and `node-log` are the demo runbook's own restart and log
// commands (the cutover runs them once per node).
func runDemo(ctx context.Context, env *cliEnv, args []string) error {
	var cf commonFlags
	fs := newFlagSet("demo", &cf)
	dir := fs.String("dir", "", "the demo's folder (default: a new temporary folder; resume and rollback need it)")
	nodes := fs.Int("nodes", 0, fmt.Sprintf("MinIO server processes (default: %d where MinIO allows several on this machine, else 1)", demo.ClusterNodes))
	address := fs.String("address", "", "the IP the MinIO nodes listen on (default 127.0.0.1; in a container, where MinIO refuses several nodes on loopback, an address of this machine that only it reaches)")
	keysOnly := fs.Bool("keys-only", false, "rehearse the key migration alone: no KES server, no object store, no cutover")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	action := ""
	if len(pos) > 1 {
		return &usageError{msg: fmt.Sprintf("unexpected argument %q", pos[1]), hint: "runbook demo [--dir DIR] [resume|rollback]"}
	}
	if len(pos) == 1 {
		action = pos[0]
	}
	switch action {
	case "restart-node", "node-log":
		return demoNodeCommand(ctx, env, action, *dir)
	case "resume", "rollback":
		if *dir == "" {
			return &usageError{msg: "demo " + action + " continues the demo in a folder: name it with --dir", hint: "runbook demo --dir DIR " + action}
		}
		if *keysOnly {
			return &usageError{msg: "--keys-only starts a new rehearsal; " + action + " continues an interrupted one", hint: "runbook demo --dir DIR " + action}
		}
	case "":
	default:
		return &usageError{msg: fmt.Sprintf("unknown demo action %q", action), hint: "runbook demo [--dir DIR] [resume|rollback]"}
	}
	n, why := 0, ""
	if !*keysOnly {
		if n, why, err = demo.PlanNodes(*nodes, *address); err != nil {
			return &usageError{msg: err.Error(), hint: "runbook help demo"}
		}
	}
	d := &demoRun{env: env, cf: &cf, out: cf.output(env), start: time.Now(), action: action}
	if action == "" {
		if *dir, err = newDemoDir(*dir); err != nil {
			return err
		}
	}
	if d.dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	if *keysOnly {
		return d.keys(ctx, "")
	}
	kesBin, minioBin, err := demoServers(ctx, env)
	if err != nil {
		if ctx.Err() != nil { // interrupted while building: nothing else to rehearse
			return err
		}
		if action != "" {
			return fmt.Errorf("demo %s needs the real servers: %w", action, err)
		}
		return d.keys(ctx, err.Error())
	}
	return d.full(ctx, demo.Options{Dir: d.dir, KeyStore: "demo/keystore", Nodes: n, Address: *address, KESBin: kesBin, MinIOBin: minioBin}, why)
}

// newDemoDir makes the folder of a new demo: dir, which must be empty or
// not exist yet, or a new temporary folder.
func newDemoDir(dir string) (string, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "runbook-demo-")
		if err != nil {
			return "", fmt.Errorf("create demo dir: %w", err)
		}
		return d, nil
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return "", &usageError{msg: fmt.Sprintf("%s is not empty: a new demo needs a folder of its own", dir), hint: "give a new folder with --dir, or none (a temporary one is made); runbook demo --dir " + dir + " resume continues a demo that was interrupted there"}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create demo dir: %w", err)
	}
	return dir, nil
}

// demoServers finds or builds the KES and MinIO servers (their pinned tools
// modules, into the tools cache the tests use), with progress lines on
// stderr while a build runs.
func demoServers(ctx context.Context, env *cliEnv) (kes, minio string, err error) {
	if kes, err = toolcache.Ensure(ctx, toolcache.KES, env.stderr); err != nil {
		return "", "", err
	}
	if minio, err = toolcache.Ensure(ctx, toolcache.MinIO, env.stderr); err != nil {
		return "", "", err
	}
	return kes, minio, nil
}

// demoNodeCommand runs the demo runbook's restart or log command for the
// node the cutover names in RUNBOOK_ENV_FILE.
func demoNodeCommand(ctx context.Context, env *cliEnv, action, dir string) error {
	if dir == "" {
		dir = "." // the cutover runs it in the runbook's folder
	}
	var (
		out string
		err error
	)
	if action == "restart-node" {
		out, err = demo.RestartNode(ctx, dir, os.Getenv("RUNBOOK_ENV_FILE"))
	} else {
		out, err = demo.NodeLog(os.Getenv("RUNBOOK_ENV_FILE"), 20)
	}
	fmt.Fprint(env.stdout, out)
	return err
}

// demoRun is one run of the demo command.
type demoRun struct {
	env    *cliEnv
	cf     *commonFlags
	out    engine.Output
	dir    string
	start  time.Time
	action string // "", "resume" or "rollback"
	phase  string // what runs now, for the message when it stops
}

func (d *demoRun) say(format string, args ...any) {
	d.out.Emit(engine.Event{Time: time.Now(), Type: engine.EventRun, Message: fmt.Sprintf(format, args...)})
}

// full rehearses demo.hcl: the servers, the sample, plan, apply, checks,
// rollback, checks. Whatever stops it, the servers are stopped and the
// folder keeps what is needed to continue.
func (d *demoRun) full(ctx context.Context, opts demo.Options, single string) (err error) {
	file := filepath.Join(d.dir, "demo.hcl")
	journal := defaultJournal(file)
	var (
		s      *demo.Servers
		sample []demo.SampleObject
	)
	if d.action == "" {
		if err := unpackDemo(d.dir, "demo.hcl", "demo/keystore"); err != nil {
			return err
		}
		d.say("runbook demo: the whole procedure of runbooks/migrate.hcl rehearsed in %s", d.dir)
		if single != "" {
			d.say("runbook demo: one MinIO node: %s", single)
		}
		d.phase = "start the servers"
		if s, err = demo.Start(ctx, opts); err != nil {
			return d.stopped(err, s)
		}
	} else {
		d.say("runbook demo: starting the servers of %s again to %s its run", d.dir, map[string]string{"resume": "resume", "rollback": "roll back"}[d.action])
		d.phase = "start the servers again"
		if s, err = demo.Restore(ctx, d.dir, opts.KESBin, opts.MinIOBin); err != nil {
			return d.stopped(err, s)
		}
	}
	defer s.Close()
	if err := useOwnExecutable(); err != nil {
		return d.stopped(err, s)
	}
	d.cf.vars = append(s.Vars(), d.cf.vars...)
	d.servers(s, d.action == "")

	if d.action == "" {
		d.phase = "write the sample objects"
		if sample, err = s.WriteSample(ctx); err != nil {
			return d.stopped(err, s)
		}
		d.say("runbook demo: %d objects written through node1: %s", len(sample), describeSample(sample))
		d.phase = "plan"
		planDir, err := d.plan(ctx, file, journal)
		if err != nil {
			return d.stopped(err, s)
		}
		d.say("runbook demo: apply the change request %s: keys migrated and proven, then the cutover", planDir)
		d.phase = "apply"
		if err := applyPlanDir(ctx, d.env, planDir, d.cf); err != nil {
			return d.stopped(err, s)
		}
	} else if sample, err = demo.ReadSample(d.dir); err != nil {
		return d.stopped(err, s)
	}
	if d.action == "resume" {
		d.phase = "apply"
		if err := d.engine(ctx, file, journal, func(es *engine.Session, o engine.Options) error { return es.Resume(ctx, o) }); err != nil {
			return d.stopped(err, s)
		}
	}
	if d.action != "rollback" {
		d.phase = "check the cutover"
		if err := d.check(ctx, s, "MinIO KMS", sample, journal, "healthy"); err != nil {
			return d.stopped(err, s)
		}
		d.say("runbook demo: roll back to KES: runbook rollback %s", file)
	}
	d.phase = "rollback"
	if err := d.engine(ctx, file, journal, func(es *engine.Session, o engine.Options) error { return es.Rollback(ctx, o, "") }); err != nil {
		return d.stopped(err, s)
	}
	d.phase = "check the rollback"
	if err := d.check(ctx, s, "MinIO KES", sample, journal, "rollback/healthy"); err != nil {
		return d.stopped(err, s)
	}
	s.Close()
	d.out.Emit(engine.Event{Time: time.Now(), Type: engine.EventSummary, Message: fmt.Sprintf(`
runbook demo: complete in %s: every key moved and proven, every node cut over to the Key Manager and rolled back to KES, the sample read back byte for byte each way
  folder:         %s
  change request: %s
  journal:        %s   (runbook status %s)
  logs:           %s (MinIO), %s (KES)
  every server the demo started is stopped`, time.Since(d.start).Round(time.Second), d.dir,
		filepath.Join(d.dir, "change-request", engine.ChangeFile), journal, file,
		filepath.Join(d.dir, "nodes", "node*", "minio.log"), filepath.Join(d.dir, "kes", "kes.log"))})
	return nil
}

// servers says what runs where; fresh: on KES-era settings (else as the
// interrupted run left the env files).
func (d *demoRun) servers(s *demo.Servers, fresh bool) {
	d.say("runbook demo: KES %s at %s (the bundled key store, MinIO's default key %s), the Key Manager emulator at %s", toolcache.KES.Version, s.KES.URL, demo.DefaultKey, s.KM.URL())
	var nodes []string
	for _, n := range s.MinIO.Nodes {
		nodes = append(nodes, strings.TrimPrefix(n.URL, "https://"))
	}
	settings := "on the settings the interrupted run left"
	if fresh {
		settings = "on KES-era settings"
	}
	d.say("runbook demo: MinIO, %d node(s) %s: %s (env files %s)", len(nodes), settings, strings.Join(nodes, ", "), filepath.Join(d.dir, "nodes", "node*", "minio.env"))
}

// plan observes the servers and writes the change request.
func (d *demoRun) plan(ctx context.Context, file, journal string) (string, error) {
	d.say("runbook demo: plan, with the change request a reviewer reads")
	es, err := openSession(d.env, file, d.cf, true)
	if err != nil {
		return "", err
	}
	res, err := es.Plan(ctx, d.cf.options(d.env, "runbook demo", journal))
	if err != nil {
		return "", err
	}
	planDir := filepath.Join(d.dir, "change-request")
	key, err := engine.EnsureHashKey(journal)
	if err != nil {
		return "", err
	}
	art, err := es.BuildPlan(res, planDir, engine.PlanMeta{Key: key})
	if err != nil {
		return "", err
	}
	if err := engine.WritePlanDir(planDir, art, ""); err != nil {
		return "", err
	}
	d.say("runbook demo: change request written to %s (fingerprint %s)", filepath.Join(planDir, engine.ChangeFile), art.Doc.Fingerprint)
	return planDir, nil
}

// engine runs a resume or rollback of the demo's journal, as runbook resume
// and runbook rollback do.
func (d *demoRun) engine(ctx context.Context, file, journal string, run func(*engine.Session, engine.Options) error) error {
	es, err := openFromJournal(d.env, journal, file, d.cf)
	if err != nil {
		return err
	}
	return run(es, d.cf.options(d.env, "runbook demo "+d.phase, journal))
}

// check confirms what the user would: every node reports kms, and reads
// every sample object byte for byte; it prints each node and how long the
// object store was unavailable (the cutover's checkpoint item).
func (d *demoRun) check(ctx context.Context, s *demo.Servers, kms string, sample []demo.SampleObject, journal, item string) error {
	reports, err := s.Check(ctx, kms, sample)
	if err != nil {
		return err
	}
	for _, r := range reports {
		d.say("runbook demo: %s", r)
	}
	window := "not measured (the nodes were restarted by an earlier run)"
	if w, ok := cutoverWindow(journal, item); ok {
		window = w.Round(100 * time.Millisecond).String()
	}
	d.say("runbook demo: the object store was unavailable for %s while every node restarted onto %s", window, map[string]string{"MinIO KMS": "the Key Manager", "MinIO KES": "KES"}[kms])
	return nil
}

// cutoverWindow is the unavailability the cutover measured at its last
// checkpoint named item ("healthy": into the Key Manager, "rollback/healthy":
// back onto KES; an attempt after an automatic rollback prefixes "gN/",
// steps/cutover_items.go).
func cutoverWindow(journal, item string) (time.Duration, bool) {
	records, _, err := engine.ReadJournal(journal)
	if err != nil {
		return 0, false
	}
	name := regexp.MustCompile(`^(g[0-9]+/)?` + regexp.QuoteMeta(item) + `$`)
	var window time.Duration
	found := false
	for _, r := range records {
		if r.Kind != "checkpoint" || r.Step != "cutover.aistor" || !name.MatchString(r.Item) {
			continue
		}
		var data struct {
			MS *int64 `json:"unavailable_ms"`
		}
		if json.Unmarshal(r.Data, &data) == nil && data.MS != nil {
			window, found = time.Duration(*data.MS)*time.Millisecond, true
		}
	}
	return window, found
}

// stopped reports a demo that stopped before its end: the servers are
// stopped (nothing is left running) and the hint says how to continue.
func (d *demoRun) stopped(err error, s *demo.Servers) error {
	if s != nil {
		s.Close()
	}
	fmt.Fprintf(d.env.stderr, "runbook: error: demo stopped at %s: %s\n", d.phase, err)
	switch {
	case d.phase == "start the servers" || d.phase == "start the servers again" || d.phase == "write the sample objects" || d.phase == "plan":
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; nothing was changed by the runbook (the logs are in %s)\n", d.dir)
	case d.phase == "rollback" || d.phase == "check the rollback":
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; finish the rollback with runbook demo --dir %s rollback (it starts them again; runbook rollback alone would find them stopped)\n", d.dir)
	default:
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; the journal is in %s: continue with runbook demo --dir %s resume, or undo with runbook demo --dir %s rollback (they start the servers again; runbook resume alone would find them stopped)\n", defaultJournal(filepath.Join(d.dir, "demo.hcl")), d.dir, d.dir)
	}
	return &reportedError{err: err}
}

// useOwnExecutable puts the directory of this executable first on PATH, so
// that the demo runbook's restart and log commands ("runbook demo …") run
// this very binary, also under go run.
func useOwnExecutable() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locate this executable for the demo's restart command: %w", err)
	}
	if filepath.Base(exe) != "runbook" {
		return fmt.Errorf("the demo's restart command runs \"runbook\", and this executable is named %s: build it as runbook (go build -o runbook ./cmd/runbook)", filepath.Base(exe))
	}
	return os.Setenv("PATH", filepath.Dir(exe)+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// describeSample says how the sample objects are sealed.
func describeSample(sample []demo.SampleObject) string {
	var kinds []string
	count := map[string]int{}
	for _, o := range sample {
		k := o.Bucket + ": " + o.SSE
		if count[k] == 0 {
			kinds = append(kinds, k)
		}
		count[k]++
	}
	for i, k := range kinds {
		kinds[i] = fmt.Sprintf("%d in %s", count[k], k)
	}
	return strings.Join(kinds, "; ")
}

// keys rehearses demo-keys.hcl: the key migration alone, into a Key
// Manager emulator, every key proven; why (when not asked for) says why
// the whole procedure could not be rehearsed.
func (d *demoRun) keys(ctx context.Context, why string) error {
	if why != "" {
		fmt.Fprintf(d.env.stderr, "runbook: the whole rehearsal needs real KES and MinIO servers, and they cannot be had here: %s\nrunbook: rehearsing the key migration alone instead (runbook demo --keys-only)\n", why)
	}
	if err := unpackDemo(d.dir, "demo-keys.hcl", "demo/kes-config.yaml", "demo/keystore"); err != nil {
		return err
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(d.dir, "key-manager")})
	if err != nil {
		return fmt.Errorf("start key manager emulator: %w", err)
	}
	defer km.Close()
	d.say("runbook: demo in %s; Key Manager emulator at %s", d.dir, km.URL())
	file := filepath.Join(d.dir, "demo-keys.hcl")
	ca, err := filepath.Abs(km.CAFile())
	if err != nil {
		return fmt.Errorf("resolve the emulator's CA file: %w", err)
	}
	d.cf.vars = append([]string{"km_server=" + km.URL(), "km_ca=" + ca, "km_api_key=" + km.RootAPIKey()}, d.cf.vars...)
	journal := defaultJournal(file)
	planDir, err := d.plan(ctx, file, journal)
	if err != nil {
		return err
	}
	if err := applyPlanDir(ctx, d.env, planDir, d.cf); err != nil {
		return err
	}
	d.out.Emit(engine.Event{Time: time.Now(), Type: engine.EventSummary, Message: fmt.Sprintf(`
runbook: demo complete
  change request: %s
  journal:        %s   (runbook status %s)
  key manager:    %s (stopped; its state is kept)`, filepath.Join(planDir, engine.ChangeFile), journal, file, km.Addr())})
	return nil
}

// unpackDemo copies the embedded files and folders named into dir.
func unpackDemo(dir string, names ...string) error {
	for _, name := range names {
		err := fs.WalkDir(runbooks.Demo, name, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			target := filepath.Join(dir, filepath.FromSlash(p))
			if d.IsDir() {
				return os.MkdirAll(target, 0o755)
			}
			raw, err := fs.ReadFile(runbooks.Demo, p)
			if err != nil {
				return fmt.Errorf("read embedded %s: %w", p, err)
			}
			mode := os.FileMode(0o644)
			if filepath.Base(filepath.Dir(p)) == "keystore" {
				mode = 0o600 // key material, as KES stores it
			}
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				return fmt.Errorf("unpack demo: %w", err)
			}
			if err := os.WriteFile(target, raw, mode); err != nil {
				return fmt.Errorf("unpack demo: %w", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

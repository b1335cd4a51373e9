package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/demo"
	"github.com/runbook-dev/runbook/internal/toolcache"
)

// demoRun is one run of the demo command.
type demoRun struct {
	env    *cliEnv
	cf     *commonFlags
	out    engine.Output
	dir    string
	file   string // its runbook, in dir
	start  time.Time
	action string // "", "resume" or "rollback"

	// Where it is, for the message when it stops: phase names it, stage
	// says what the journal then needs.
	phase string
	stage demoStage
}

type demoStage int

const (
	stageBefore  demoStage = iota // the runbook changed nothing yet
	stageForward                  // the apply: resume it, or roll back
	stageBack                     // the rollback: finish it
)

func (d *demoRun) say(format string, args ...any) {
	d.out.Emit(engine.Event{Time: time.Now(), Type: engine.EventRun, Message: fmt.Sprintf(format, args...)})
}

// at names the phase the demo enters.
func (d *demoRun) at(phase string, stage demoStage) { d.phase, d.stage = phase, stage }

// full rehearses demo.hcl: the servers and the sample, forward through the
// cutover, back to KES. Whatever stops it, the servers are stopped and the
// folder keeps what is needed to continue.
func (d *demoRun) full(ctx context.Context, opts demo.Options, single string) error {
	d.file = filepath.Join(d.dir, "demo.hcl")
	file, journal := d.file, d.journal()
	s, sample, err := d.servers(ctx, opts, single)
	if err != nil {
		return d.stopped(err, s)
	}
	defer s.Close()
	if d.action != "rollback" {
		if err := d.forward(ctx, s, sample, file, journal); err != nil {
			return d.stopped(err, s)
		}
	}
	if err := d.back(ctx, s, sample, file, journal); err != nil {
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

// servers starts the demo's servers and writes the sample objects, or,
// continuing an interrupted demo, starts its servers again and reads back
// its sample. On an error the servers returned are to be stopped.
func (d *demoRun) servers(ctx context.Context, opts demo.Options, single string) (s *demo.Servers, sample []demo.SampleObject, err error) {
	if d.action == "" {
		if err := unpackDemo(d.dir, "demo.hcl", "demo/keystore"); err != nil {
			return nil, nil, err
		}
		d.say("runbook demo: the whole procedure of runbooks/migrate.hcl rehearsed in %s", d.dir)
		if single != "" {
			d.say("runbook demo: one MinIO node: %s", single)
		}
		d.at("start the servers", stageBefore)
		if s, err = demo.Start(ctx, opts); err != nil {
			return s, nil, err
		}
	} else {
		d.say("runbook demo: starting the servers of %s again to %s its run", d.dir, map[string]string{"resume": "resume", "rollback": "roll back"}[d.action])
		d.at("start the servers again", stageForward)
		if d.action == "rollback" {
			d.stage = stageBack
		}
		if s, err = demo.Restore(ctx, d.dir, opts.KESBin, opts.MinIOBin); err != nil {
			return s, nil, err
		}
		// Env files left mid-cutover can keep nodes from serving: the
		// journal's resume or rollback restarts them.
		if err := s.Settle(ctx, 2*time.Minute); ctx.Err() != nil {
			return s, nil, ctx.Err()
		} else if err != nil {
			d.say("runbook demo: not every node serves yet (the %s restarts them): %v", d.action, err)
		}
	}
	if err := useOwnExecutable(); err != nil {
		return s, nil, err
	}
	d.cf.vars = append(s.Vars(), d.cf.vars...)
	d.say("runbook demo: KES %s at %s (the bundled key store, MinIO's default key %s), the Key Manager emulator at %s", toolcache.KES.Version, s.KES.URL, demo.DefaultKey, s.KM.URL())
	var nodes []string
	for _, n := range s.MinIO.Nodes {
		nodes = append(nodes, strings.TrimPrefix(n.URL, "https://"))
	}
	settings := "on the settings the interrupted run left"
	if d.action == "" {
		settings = "on KES-era settings"
	}
	d.say("runbook demo: MinIO, %d node(s) %s: %s (env files %s)", len(nodes), settings, strings.Join(nodes, ", "), filepath.Join(d.dir, "nodes", "node*", "minio.env"))
	if d.action != "" {
		sample, err = demo.ReadSample(d.dir)
		return s, sample, err
	}
	d.at("write the sample objects", stageBefore)
	if sample, err = s.WriteSample(ctx); err != nil {
		return s, nil, err
	}
	d.say("runbook demo: %d objects written through node1: %s", len(sample), describeSample(sample))
	return s, sample, nil
}

// forward plans with a change request and applies it (or resumes the
// interrupted apply), then checks every node on the Key Manager.
func (d *demoRun) forward(ctx context.Context, s *demo.Servers, sample []demo.SampleObject, file, journal string) error {
	if d.action == "resume" {
		d.at("apply", stageForward)
		if err := d.engine(ctx, file, journal, func(es *engine.Session, o engine.Options) error { return es.Resume(ctx, o) }); err != nil {
			return err
		}
	} else {
		d.at("plan", stageBefore)
		planDir, err := d.plan(ctx, file, journal)
		if err != nil {
			return err
		}
		d.say("runbook demo: apply the change request %s: keys migrated and proven, then the cutover", planDir)
		d.at("apply", stageForward)
		if err := applyPlanDir(ctx, d.env, planDir, d.cf); err != nil {
			return err
		}
	}
	d.at("check the cutover", stageForward)
	return d.check(ctx, s, "MinIO KMS", sample, journal, "writable")
}

// back rolls the whole run back, as runbook rollback does, then checks
// every node on KES.
func (d *demoRun) back(ctx context.Context, s *demo.Servers, sample []demo.SampleObject, file, journal string) error {
	d.say("runbook demo: roll back to KES: runbook rollback %s", file)
	d.at("rollback", stageBack)
	if err := d.engine(ctx, file, journal, func(es *engine.Session, o engine.Options) error { return es.Rollback(ctx, o, "") }); err != nil {
		return err
	}
	d.at("check the rollback", stageBack)
	return d.check(ctx, s, "MinIO KES", sample, journal, "rollback/writable")
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
	d.say("runbook demo: the object store was unavailable for %s while every node restarted onto %s, until every server accepted a write", window, map[string]string{"MinIO KMS": "the Key Manager", "MinIO KES": "KES"}[kms])
	return nil
}

// cutoverWindow is the unavailability the cutover measured at its last
// checkpoint named item ("writable": into the Key Manager,
// "rollback/writable": back onto KES; from the first failed probe until
// every server accepted a write; an attempt after an automatic rollback
// prefixes "gN/", steps/cutover_items.go).
func cutoverWindow(journal, item string) (time.Duration, bool) {
	records, _, err := engine.ReadJournal(journal)
	if err != nil {
		return 0, false
	}
	name := regexp.MustCompile(`^(g[0-9]+/)?` + regexp.QuoteMeta(item) + `$`)
	var window time.Duration
	found := false
	for _, r := range records {
		if r.Kind != engine.RecordCheckpoint || r.Step != "cutover.aistor" || !name.MatchString(r.Item) {
			continue
		}
		var data struct {
			MS *int64 `json:"window_ms"`
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
	switch d.stage {
	case stageBefore:
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; nothing was changed by the runbook (the logs are in %s)\n", d.dir)
	case stageBack:
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; finish the rollback with runbook demo --dir %s rollback (it starts them again; runbook rollback alone would find them stopped)\n", d.dir)
	default:
		fmt.Fprintf(d.env.stderr, "runbook: hint: every server the demo started is stopped; the journal is in %s: continue with runbook demo --dir %s resume, or undo with runbook demo --dir %s rollback (they start the servers again; runbook resume alone would find them stopped)\n", d.journal(), d.dir, d.dir)
	}
	return &reportedError{err: err}
}

// journal is the demo's journal directory: beside its runbook, or -journal.
func (d *demoRun) journal() string {
	j, _ := d.cf.journalFor(d.file) // errs only without a file
	return j
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

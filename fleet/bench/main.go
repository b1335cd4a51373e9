// Command bench measures a fleet rollout against running the same
// deployments one by one: for each fleet size, N emulated deployments (the
// demo fleet's runbook, each its own KES fs key store of -keys keys and its
// own enclave of one Key Manager emulator) are rolled out three ways, each
// into fresh enclaves and journals:
//
//   - loop: a shell loop running runbook apply PLANDIR per deployment, one
//     after the other (what an operator does by hand today);
//   - fleet, max_concurrency 1: the same order through Temporal (the
//     fleet's own overhead per deployment is its wall time minus the
//     loop's, over N);
//   - fleet, max_concurrency -concurrency (canary 1, waves of that size).
//
// -km-rtt adds a round-trip time to every connection to the Key Manager
// (internal/delayproxy), as for object stores in other sites than the
// operator's: with it the runs wait on the network, not on the CPU. -gaps
// logs where each fleet run waited, from its workflows' histories.
//
// "sum of single runs" adds each run's own wall time in the loop (the
// runbook process, start to exit). The embedded Temporal server and the worker run in
// this process; each deployment is a runbook process, as in production.
//
//	cd fleet && go build -o /tmp/runbook ../cmd/runbook
//	go run ./bench -runbook /tmp/runbook -sizes 20,100 -keys 1000 [-km-rtt 10ms] [-gaps]
//
// Results go to stdout as Markdown (BENCHMARKS.md, "Fleet rollout").
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/demo"
	"github.com/runbook-dev/runbook/fleet/devserver"
	"github.com/runbook-dev/runbook/fleet/rollout"
	"github.com/runbook-dev/runbook/internal/delayproxy"
	"github.com/runbook-dev/runbook/internal/kescrypto"
)

func main() {
	runbookBin := flag.String("runbook", "", "the runbook binary (go build -o /tmp/runbook ./cmd/runbook)")
	sizesFlag := flag.String("sizes", "20,100", "fleet sizes (comma-separated)")
	keys := flag.Int("keys", 1000, "keys per deployment")
	conc := flag.Int("concurrency", 5, "the fleet's max_concurrency (and wave size)")
	keep := flag.Bool("keep", false, "keep the work directory")
	showGaps = flag.Bool("gaps", false, "log where each fleet run's workflows waited (the summed gaps between consecutive history events over 100 ms)")
	kmRTT := flag.Duration("km-rtt", 0, "round-trip time added to every Key Manager connection (e.g. 10ms)")
	flag.Parse()
	if *runbookBin == "" {
		log.Fatal("-runbook is required")
	}
	bin, err := filepath.Abs(*runbookBin)
	check(err)
	work, err := os.MkdirTemp("", "bench-fleet-")
	check(err)
	if !*keep {
		defer os.RemoveAll(work)
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(work, "key-manager")})
	check(err)
	defer km.Close()
	kmURL := km.URL()
	if *kmRTT > 0 {
		p, err := delayproxy.Start(km.Addr(), *kmRTT)
		check(err)
		defer p.Close()
		kmURL = "https://" + p.Addr()
	}
	srv, err := devserver.Start(filepath.Join(work, "temporal"), "default")
	check(err)
	defer srv.Stop()
	c, err := client.Dial(client.Options{HostPort: srv.Address, Logger: quietLogger()})
	check(err)
	defer c.Close()
	acts := &rollout.Activities{Runbook: bin}
	for _, w := range []worker.Worker{worker.New(c, rollout.CoordinatorQueue, rollout.WorkerOptions()), worker.New(c, rollout.HostQueue(fleet.DefaultHost), rollout.WorkerOptions())} {
		w.RegisterWorkflow(rollout.FleetWorkflow)
		w.RegisterWorkflow(rollout.DeploymentWorkflow)
		w.RegisterActivity(acts)
		check(w.Start())
		defer w.Stop()
	}

	fmt.Printf("| deployments | keys each | Key Manager RTT | shell loop | sum of single runs | fleet, 1 at once | overhead per deployment | fleet, %d at once | speed-up vs loop |\n|---|---|---|---|---|---|---|---|---|\n", *conc)
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		check(err)
		stores := makeStores(filepath.Join(work, fmt.Sprintf("n%d", n)), n, *keys)
		loop, sum := runLoop(bin, km, kmURL, work, n, stores)
		c1, c1sum := runFleet(c, bin, km, kmURL, work, n, stores, 1)
		cN, _ := runFleet(c, bin, km, kmURL, work, n, stores, *conc)
		log.Printf("%d deployments: fleet 1 at once %s, its runs from their journals %s", n, secs(c1), secs(c1sum))
		fmt.Printf("| %d | %d | %v | %s | %s | %s | %s | %s | %.1f× |\n", n, *keys, *kmRTT, secs(loop), secs(sum), secs(c1), secs((c1-loop)/time.Duration(n)), secs(cN), loop.Seconds()/cN.Seconds())
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// makeStores writes n KES v0.24 fs key stores of k random keys each, with
// the KES config naming each.
func makeStores(dir string, n, k int) []string {
	var configs []string
	for i := 1; i <= n; i++ {
		store := filepath.Join(dir, fmt.Sprintf("site-%03d", i))
		check(os.MkdirAll(filepath.Join(store, "keystore"), 0o700))
		for j := 0; j < k; j++ {
			key := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32), CreatedAt: time.Now().UTC(), CreatedBy: "bench"}
			rand.Read(key.Material)
			rand.Read(key.HMAC)
			raw, err := key.MarshalV024()
			check(err)
			check(os.WriteFile(filepath.Join(store, "keystore", fmt.Sprintf("key-%05d", j)), raw, 0o600))
		}
		cfg := fmt.Sprintf("version: v1\naddress: 0.0.0.0:7373\nadmin:\n  identity: 3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22\ntls:\n  key: ./server.key\n  cert: ./server.cert\nkeystore:\n  fs:\n    path: %s\n", filepath.Join(store, "keystore"))
		check(os.WriteFile(filepath.Join(store, "kes-config.yaml"), []byte(cfg), 0o644))
		configs = append(configs, filepath.Join(store, "kes-config.yaml"))
	}
	return configs
}

// writeFleet writes a fleet of the demo runbook over the stores, each
// deployment into enclave PREFIX-site-NNN.
func writeFleet(dir, prefix string, km *emulator.Server, kmURL string, stores []string, conc int) string {
	check(os.MkdirAll(filepath.Join(dir, "deployments"), 0o755))
	check(os.WriteFile(filepath.Join(dir, "runbook.hcl"), demo.Runbook, 0o644))
	for i, cfg := range stores {
		name := fmt.Sprintf("site-%03d", i+1)
		vars := fmt.Sprintf("km_server = %q\nkm_ca = %q\nkm_api_key = %q\nkes_config = %q\nenclave = %q\n", kmURL, km.CAFile(), km.RootAPIKey(), cfg, prefix+"-"+name)
		check(os.WriteFile(filepath.Join(dir, "deployments", name+".hcl"), []byte(vars), 0o600))
	}
	file := filepath.Join(dir, "fleet.hcl")
	check(os.WriteFile(file, []byte(fmt.Sprintf(`fleet {
  name    = %q
  runbook = "runbook.hcl"
}
deployments "sites" {
  dir = "deployments"
}
rollout {
  canary          = ["site-001"]
  wave_size       = %d
  max_concurrency = %d
}
`, prefix, conc, conc)), 0o644))
	return file
}

func plan(bin, dir, prefix string, km *emulator.Server, kmURL string, stores []string, conc int) (*fleet.Fleet, *fleet.PlanDoc, string) {
	file := writeFleet(dir, prefix, km, kmURL, stores, conc)
	f, diags := fleet.Load(file)
	if diags.HasErrors() {
		log.Fatal(diags)
	}
	planDir := filepath.Join(dir, "plan")
	doc, err := fleet.Plan(context.Background(), f, fleet.PlanOptions{Runbook: bin, Out: planDir, Parallelism: 2})
	check(err)
	return f, doc, planDir
}

// runLoop runs every deployment's plan one after the other from a shell
// loop and returns the loop's wall time and the sum of the runs' own.
func runLoop(bin string, km *emulator.Server, kmURL, work string, n int, stores []string) (time.Duration, time.Duration) {
	dir := filepath.Join(work, fmt.Sprintf("loop-%d", n))
	_, doc, planDir := plan(bin, dir, fmt.Sprintf("loop%d", n), km, kmURL, stores, 1)
	// Each run is timed by the loop itself (date before and after): the
	// process's whole life, its start and the plan's check included.
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, d := range doc.Deployments {
		fmt.Fprintf(&script, "date +%%s.%%N; %q apply %q -journal %q -var-file %q >/dev/null; date +%%s.%%N\n", bin, filepath.Join(planDir, d.PlanDir), d.Journal, d.VarFiles[0])
	}
	start := time.Now()
	out, err := exec.Command("sh", "-c", script.String()).Output()
	if err != nil {
		log.Fatalf("the loop: %v\n%s", err, out)
	}
	wall := time.Since(start)
	stamps := strings.Fields(string(out))
	var sum time.Duration
	for i := 0; i+1 < len(stamps); i += 2 {
		a, err1 := strconv.ParseFloat(stamps[i], 64)
		b, err2 := strconv.ParseFloat(stamps[i+1], 64)
		check(errors.Join(err1, err2))
		sum += time.Duration((b - a) * float64(time.Second))
	}
	return wall, sum
}

// runFleet rolls the deployments out through Temporal and returns the wall
// time from the start of the rollout to its end.
func runFleet(c client.Client, bin string, km *emulator.Server, kmURL, work string, n int, stores []string, conc int) (time.Duration, time.Duration) {
	prefix := fmt.Sprintf("fleet%d-c%d", n, conc)
	_, doc, planDir := plan(bin, filepath.Join(work, prefix), prefix, km, kmURL, stores, conc)
	in := rollout.FleetInput{Fleet: doc.Fleet, Fingerprint: doc.Fingerprint, Runbook: doc.Runbook.Name, MaxConcurrency: conc}
	byName := map[string]fleet.PlanDeployment{}
	for _, d := range doc.Deployments {
		byName[d.Name] = d
	}
	for _, names := range doc.Waves {
		var wave []rollout.DeploymentInput
		for _, name := range names {
			d := byName[name]
			pdoc, err := engine.ReadPlanDir(filepath.Join(planDir, d.PlanDir))
			check(err)
			wave = append(wave, rollout.DeploymentInput{Name: name, Host: d.Host, PlanDir: filepath.Join(planDir, d.PlanDir), Fingerprint: d.Fingerprint,
				RunbookFile: filepath.Join(planDir, d.PlanDir, pdoc.Runbook.File), VarFiles: d.VarFiles, Journal: d.Journal, HeartbeatTimeout: 30 * time.Second})
		}
		in.Waves = append(in.Waves, wave)
	}
	start := time.Now()
	run, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: rollout.FleetWorkflowID(prefix), TaskQueue: rollout.CoordinatorQueue, WorkflowExecutionErrorWhenAlreadyStarted: true}, rollout.FleetWorkflow, in)
	check(err)
	var st rollout.Status
	check(run.Get(context.Background(), &st))
	wall := time.Since(start)
	if *showGaps {
		gaps(c, rollout.FleetWorkflowID(prefix))
		for _, w := range st.Waves {
			for _, d := range w.Deployments {
				gaps(c, d.WorkflowID)
			}
		}
	}
	for _, w := range st.Waves {
		for _, d := range w.Deployments {
			if d.State != rollout.StateDone {
				log.Fatalf("%s: %s is %s: %s", prefix, d.Name, d.State, d.Message)
			}
		}
	}
	return wall, sumOfRuns(doc)
}

// sumOfRuns adds each deployment's run time: its journal's first record to
// its last.
func sumOfRuns(doc *fleet.PlanDoc) time.Duration {
	var sum time.Duration
	for _, d := range doc.Deployments {
		recs, _, err := engine.ReadJournal(d.Journal)
		check(err)
		sum += recs[len(recs)-1].Time.Sub(recs[0].Time)
	}
	return sum
}

// showGaps is -gaps.
var showGaps *bool

// gaps logs, for the workflow id, the time between consecutive events of
// its history summed by the pair of event types, where over 100 ms: where
// a rollout waited on Temporal (task queues, workflow tasks) and where on
// the runbook (ActivityTaskStarted -> ActivityTaskCompleted).
func gaps(c client.Client, id string) {
	it := c.GetWorkflowHistory(context.Background(), id, "", false, 0)
	var prev time.Time
	var prevType string
	sums := map[string]time.Duration{}
	for it.HasNext() {
		e, err := it.Next()
		check(err)
		t := e.GetEventTime().AsTime()
		if !prev.IsZero() {
			sums[prevType+" -> "+e.GetEventType().String()] += t.Sub(prev)
		}
		prev, prevType = t, e.GetEventType().String()
	}
	for k, v := range sums {
		if v > 100*time.Millisecond {
			log.Printf("gap %s %s: %s", id, k, v)
		}
	}
}

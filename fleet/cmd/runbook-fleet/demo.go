package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.temporal.io/sdk/worker"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/demo"
	"github.com/runbook-dev/runbook/fleet/rollout"
	"github.com/runbook-dev/runbook/runbooks"
)

func init() {
	register(&command{name: "demo", usage: "[--dir DIR] [--deployments N]: rehearse a rollout of the demo runbook over N deployments (default 20), each its own key store and Key Manager enclave, on the embedded server; prints the status table", run: runDemo})
}

func runDemo(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "demo")
	dir := fs.String("dir", "", "where to put the demo's files (default: a new temporary folder)")
	n := fs.Int("deployments", 20, "how many deployments")
	rb := fs.String("runbook", "", "the runbook executable (default: runbook fleet's own)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error(), hint: "runbook fleet demo -h lists its flags"}
	}
	if fs.NArg() > 0 || *n < 1 {
		return &usageError{msg: "demo takes no fleet file and at least one deployment", hint: "runbook fleet demo [--dir DIR] [--deployments N]"}
	}
	bin, err := runbookExecutable(*rb)
	if err != nil {
		return err
	}
	if *dir == "" {
		if *dir, err = os.MkdirTemp("", "runbook-fleet-demo-"); err != nil {
			return fmt.Errorf("create demo dir: %w", err)
		}
	}
	if *dir, err = filepath.Abs(*dir); err != nil {
		return err
	}
	km, err := emulator.Start(emulator.Config{Addr: "127.0.0.1:0", Dir: filepath.Join(*dir, "key-manager")})
	if err != nil {
		return fmt.Errorf("start key manager emulator: %w", err)
	}
	defer km.Close()
	fleetFile, err := writeDemo(*dir, *n, km)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: fleet demo in %s: %d deployment(s), Key Manager emulator at %s\n", *dir, *n, km.URL())
	f, err := loadFleet(env, fleetFile)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	planDir := defaultPlanDir(f)
	fmt.Fprintf(env.stdout, "runbook: planning every deployment (runbook plan, 4 at once)\n")
	doc, err := fleet.Plan(ctx, f, fleet.PlanOptions{Runbook: bin, Out: planDir, Parallelism: 4})
	if err != nil {
		return fmt.Errorf("plan the demo fleet: %w", err)
	}
	in, err := fleetInput(doc, planDir)
	if err != nil {
		return err
	}
	acts := &rollout.Activities{Runbook: bin}
	coord := worker.New(c.Client, rollout.CoordinatorQueue, rollout.WorkerOptions())
	coord.RegisterWorkflow(rollout.FleetWorkflow)
	coord.RegisterActivity(acts.JudgeApproval)
	local := worker.New(c.Client, rollout.HostQueue(fleet.DefaultHost), rollout.WorkerOptions())
	local.RegisterWorkflow(rollout.DeploymentWorkflow)
	local.RegisterActivity(acts.RunDeployment)
	for _, w := range []worker.Worker{coord, local} {
		if err := w.Start(); err != nil {
			return fmt.Errorf("start worker: %w", err)
		}
		defer w.Stop()
	}
	run, err := startRollout(ctx, c, f, in)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "runbook: rollout started (workflow %s): canary, then waves of 5, at most 5 at once\n\n", run.GetID())
	var st rollout.Status
	if err := run.Get(ctx, &st); err != nil {
		return fmt.Errorf("wait for the rollout: %w", err)
	}
	if err := printStatus(ctx, env, c, f, false); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "\nrunbook: demo complete; fleet file %s, fleet plan %s\n", fleetFile, filepath.Join(planDir, fleet.SummaryFile))
	return nil
}

// writeDemo writes the demo fleet: the runbook, one key store (the bundled
// demo store) and var file per deployment, and the fleet file.
func writeDemo(dir string, n int, km *emulator.Server) (string, error) {
	ca, err := filepath.Abs(km.CAFile())
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(dir, "deployments"), 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "runbook.hcl"), demo.Runbook, 0o644); err != nil {
		return "", err
	}
	for i := 1; i <= n; i++ {
		name := fmt.Sprintf("site-%02d", i)
		store := filepath.Join(dir, "sites", name)
		if err := copyKeyStore(filepath.Join(store, "keystore")); err != nil {
			return "", err
		}
		cfg, err := fs.ReadFile(runbooks.Demo, "demo/kes-config.yaml")
		if err != nil {
			return "", err
		}
		cfg = []byte(strings.Replace(string(cfg), "path: ./keystore", "path: "+filepath.Join(store, "keystore"), 1))
		if err := os.WriteFile(filepath.Join(store, "kes-config.yaml"), cfg, 0o644); err != nil {
			return "", err
		}
		// The emulator's root key is its own rehearsal credential (SPEC
		// section 2), kept in the var files like a site's secrets would be.
		vars := fmt.Sprintf("km_server  = %q\nkm_ca      = %q\nkm_api_key = %q\nkes_config = %q\nenclave    = %q\n",
			km.URL(), ca, km.RootAPIKey(), filepath.Join(store, "kes-config.yaml"), name)
		if err := os.WriteFile(filepath.Join(dir, "deployments", name+".hcl"), []byte(vars), 0o600); err != nil {
			return "", err
		}
	}
	file := filepath.Join(dir, "fleet.hcl")
	text := `# The demo fleet: the demo runbook over every deployments/*.hcl, each its
# own key store and enclave; the first is the canary.
fleet {
  name    = "demo"
  runbook = "runbook.hcl"
}

deployments "sites" {
  dir = "deployments"
}

rollout {
  canary          = ["site-01"]
  wave_size       = 5
  max_concurrency = 5
  max_errors      = 2
}
`
	return file, os.WriteFile(file, []byte(text), 0o644)
}

func copyKeyStore(dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	entries, err := fs.ReadDir(runbooks.Demo, "demo/keystore")
	if err != nil {
		return err
	}
	for _, e := range entries {
		raw, err := fs.ReadFile(runbooks.Demo, "demo/keystore/"+e.Name())
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), raw, 0o600); err != nil {
			return err
		}
	}
	return nil
}

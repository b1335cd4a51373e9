package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	d.file = file
	ca, err := filepath.Abs(km.CAFile())
	if err != nil {
		return fmt.Errorf("resolve the emulator's CA file: %w", err)
	}
	d.cf.vars = append([]string{"km_server=" + km.URL(), "km_ca=" + ca, "km_api_key=" + km.RootAPIKey()}, d.cf.vars...)
	journal := d.journal()
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

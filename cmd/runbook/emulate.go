package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/runbook-dev/runbook/emulator"
	"github.com/runbook-dev/runbook/internal/atomicfile"
)

func init() {
	register(&command{name: "emulate", usage: "key-manager [--addr A] [--dir D] [--write-answer empty|frames] [--mixed refuse|accept] [--batch partial|atomic] [--deleted-names tombstoned|reusable]: a local Key Manager emulator for rehearsals", run: runEmulate})
}

func runEmulate(ctx context.Context, env *cliEnv, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
		args = append([]string{"key-manager"}, args...) // runbook help emulate: the only thing it emulates
	}
	if len(args) == 0 || args[0] != "key-manager" {
		return &usageError{msg: "emulate needs what to emulate", hint: "runbook emulate key-manager [--addr 127.0.0.1:7373] [--dir DIR]"}
	}
	fs := newFlagSet("emulate", nil)
	addr := fs.String("addr", "127.0.0.1:7373", "listen address (port 0 picks a free one)")
	dir := fs.String("dir", ".runbook/key-manager", "state directory: keys, identities, TLS material (kept across restarts)")
	var hosts listFlag
	fs.Var(&hosts, "host", "extra DNS name or IP for the server certificate (repeatable)")
	errRate := fs.Float64("fault-error-rate", 0, "fraction of requests answered with an injected HTTP 503")
	latency := fs.Duration("fault-latency", 0, "latency added to every response")
	dropRate := fs.Float64("fault-drop-rate", 0, "fraction of requests whose connection is dropped")
	var readings emulator.Readings
	readings.Flags(fs)
	var refuseFormats listFlag
	fs.Var(&refuseFormats, "fault-refuse-format", "ciphertext format Decrypt refuses: msgpack or json (repeatable)")
	verbose := fs.Bool("v", false, "log every request to stderr")
	envFile := fs.String("env-file", "", "also write the RUNBOOK_KM_* lines to this file (0600) once serving, for scripts to source")
	pos, err := parseArgs(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected argument %q", pos[0]), hint: "runbook emulate key-manager [--addr A] [--dir D]"}
	}
	for _, r := range []float64{*errRate, *dropRate} {
		if r < 0 || r > 1 {
			return &usageError{msg: "fault rates are fractions from 0 to 1"}
		}
	}
	if err := emulator.CheckRefuseFormats(refuseFormats); err != nil {
		return &usageError{msg: err.Error()}
	}
	cfg := emulator.Config{Addr: *addr, Dir: *dir, Hosts: hosts, FaultErrorRate: *errRate, FaultLatency: *latency, FaultDropRate: *dropRate, FaultRefuseFormats: refuseFormats, Readings: readings}
	if *verbose {
		cfg.Logf = func(format string, a ...any) { fmt.Fprintf(env.stderr, "key-manager: "+format+"\n", a...) }
	}
	srv, err := emulator.Start(cfg)
	if errors.Is(err, emulator.ErrReading) {
		return &usageError{msg: err.Error(), hint: "runbook emulate key-manager [--write-answer empty|frames] [--mixed refuse|accept] [--batch partial|atomic] [--deleted-names tombstoned|reusable]"}
	}
	if err != nil {
		return fmt.Errorf("start key manager emulator: %w", err)
	}
	// The root key is the emulator's own rehearsal credential: printing it is
	// how the operator gets it (SPEC section 5).
	ca, err := filepath.Abs(srv.CAFile())
	if err != nil {
		ca = srv.CAFile()
	}
	lines := fmt.Sprintf("RUNBOOK_KM_SERVER=%s\nRUNBOOK_KM_CA=%s\nRUNBOOK_KM_API_KEY=%s\n", srv.URL(), ca, srv.RootAPIKey())
	fmt.Fprint(env.stdout, lines)
	if *envFile != "" {
		if err := atomicfile.WriteFile(*envFile, []byte(lines), 0o600); err != nil {
			srv.Close()
			return fmt.Errorf("write env file: %w", err)
		}
	}
	if f, ok := env.stdout.(*os.File); ok {
		f.Sync()
	}
	fmt.Fprintf(env.stderr, "runbook: key manager emulator listening on %s, state in %s, readings %s; Ctrl-C stops it\n", srv.Addr(), *dir, srv.Readings())
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("stop key manager emulator: %w", err)
	}
	return nil
}

package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/runbook-dev/runbook/fleet/devserver"
)

func init() {
	register(&command{name: "server", usage: "FLEET: run the fleet's embedded Temporal server (SQLite in the fleet's folder) until interrupted, for workers and commands to share", run: runServer})
}

func runServer(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "server")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	if f.Temporal.Address != "" {
		return &usageError{msg: "the fleet names a Temporal server (temporal { address = " + f.Temporal.Address + " }): no embedded one runs", hint: "remove the address to rehearse on the embedded server"}
	}
	srv, err := devserver.Start(serverDir(f), f.Temporal.Namespace)
	if errors.Is(err, devserver.ErrRunning) {
		addr, _ := devserver.Running(serverDir(f))
		return &usageError{msg: "the fleet's embedded server runs in another process already, at " + addr, hint: "its commands and workers use it"}
	}
	if err != nil {
		return err
	}
	defer srv.Stop()
	fmt.Fprintf(env.stdout, "runbook: fleet %s: embedded Temporal server at %s (namespace %s, data in %s)\n", f.Name, srv.Address, f.Temporal.Namespace, serverDir(f))
	<-ctx.Done()
	return nil
}

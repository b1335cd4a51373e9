package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"google.golang.org/grpc"

	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/devserver"
)

// connection is a Temporal client, and the embedded server when this
// process hosts it.
type connection struct {
	client.Client
	Address string
	server  *devserver.Server
}

func (c *connection) Close() {
	c.Client.Close()
	if c.server != nil {
		c.server.Stop()
	}
}

// serverDir is where the fleet's embedded server keeps its SQLite file.
func serverDir(f *fleet.Fleet) string { return filepath.Join(f.StateDir(), "temporal") }

// connect dials the fleet's Temporal: the address the fleet file names, or
// the embedded server on the fleet's folder, which this process starts
// when no other process of this host runs it (and stops on Close).
func connect(f *fleet.Fleet, logTo io.Writer) (*connection, error) {
	c := &connection{Address: f.Temporal.Address}
	if c.Address == "" {
		addr, err := devserver.Running(serverDir(f))
		if err != nil {
			return nil, err
		}
		if addr == "" {
			srv, err := devserver.Start(serverDir(f), f.Temporal.Namespace)
			if errors.Is(err, devserver.ErrRunning) {
				addr, err = devserver.Running(serverDir(f))
			}
			if err != nil {
				return nil, err
			}
			if srv != nil {
				c.server, addr = srv, srv.Address
			}
		}
		c.Address = addr
	}
	if logTo == nil {
		logTo = io.Discard
	}
	logger := sdklog.NewStructuredLogger(slog.New(quietMemo{slog.NewTextHandler(logTo, &slog.HandlerOptions{Level: slog.LevelWarn})}))
	opts := client.Options{HostPort: c.Address, Namespace: f.Temporal.Namespace, Logger: logger}
	if f.Temporal.Address == "" && c.server == nil {
		// Another process hosts the embedded server: follow it to the port
		// its next start takes.
		opts.HostPort = embeddedScheme + ":///embedded"
		opts.ConnectionOptions.DialOptions = []grpc.DialOption{grpc.WithResolvers(&embeddedResolver{dir: serverDir(f), first: c.Address})}
	}
	cl, err := client.Dial(opts)
	if err != nil {
		if c.server != nil {
			c.server.Stop()
		}
		return nil, fmt.Errorf("connect to Temporal at %s: %w", c.Address, err)
	}
	c.Client = cl
	return c, nil
}

// runbookExecutable is the runbook that runs and plans each deployment:
// --runbook, $RUNBOOK_BIN (runbook fleet sets it to itself), runbook
// beside this executable, or runbook on PATH.
func runbookExecutable(flagValue string) (string, error) {
	if flagValue != "" {
		return filepath.Abs(flagValue)
	}
	if p := os.Getenv("RUNBOOK_BIN"); p != "" {
		return p, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "runbook")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("runbook"); err == nil {
		return p, nil
	}
	return "", &usageError{msg: "no runbook executable to run the deployments with", hint: "run through runbook fleet, put runbook on PATH, or name it with --runbook PATH"}
}

// quietMemo drops the SDK's warning that a memo passed 2 KiB (TMPRL1103):
// the rollout's status memo does by design (the server's limit is 2 MiB).
type quietMemo struct{ slog.Handler }

func (h quietMemo) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "TMPRL1103") {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h quietMemo) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietMemo{h.Handler.WithAttrs(attrs)}
}

func (h quietMemo) WithGroup(name string) slog.Handler { return quietMemo{h.Handler.WithGroup(name)} }

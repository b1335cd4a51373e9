package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "worker", usage: "FLEET [--host NAME] [--runbook PATH]: run the deployments whose journals this host holds, and the rollout's coordination, until interrupted", run: runWorker})
}

func runWorker(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "worker")
	host := fs.String("host", fleet.DefaultHost, "the host name the fleet file pins deployments to (their journals are here)")
	rb := fs.String("runbook", "", "the runbook executable (default: runbook fleet's own)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	bin, err := runbookExecutable(*rb)
	if err != nil {
		return err
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	acts := &rollout.Activities{Runbook: bin, Log: env.stdout}
	// Every worker coordinates (fleet workflows, approval checks); only the
	// host's own run its deployments.
	queues := []*queueWorker{
		{queue: rollout.CoordinatorQueue, register: func(w worker.Worker) {
			w.RegisterWorkflow(rollout.FleetWorkflow)
			w.RegisterActivity(acts.JudgeApproval)
		}},
		{queue: rollout.HostQueue(*host), register: func(w worker.Worker) {
			w.RegisterWorkflow(rollout.DeploymentWorkflow)
			w.RegisterActivity(acts.RunDeployment)
		}},
	}
	for i, q := range queues {
		if err := q.start(c.Client); err != nil {
			for _, started := range queues[:i] {
				started.w.Stop()
			}
			return fmt.Errorf("start worker: %w", err)
		}
	}
	fmt.Fprintf(env.stdout, "runbook: fleet %s worker (pid %d) for host %s on Temporal at %s; runbook %s\n", f.Name, os.Getpid(), *host, c.Address, bin)
	var wg sync.WaitGroup
	for _, q := range queues {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.run(ctx, c.Client, env.stderr)
		}()
	}
	<-ctx.Done()
	fmt.Fprintf(env.stdout, "runbook: worker stopping: running deployments are interrupted at a checkpoint and resumed by the next worker\n")
	wg.Wait()
	return nil
}

// queueWorker is the Temporal worker of one task queue, made again when
// the SDK stops it for good.
//
// The SDK stops a worker, and only logs it, on a poll error it takes for
// fatal (NamespaceNotFound, InvalidArgument, ClientVersionNotSupported)
// once its polls have failed for two minutes (go.temporal.io/sdk
// internal/internal_worker_base.go, retryLongPollGracePeriod): a Temporal
// server restarted or replaced under a running worker can answer so. The
// process would stay up without polling, and every rollout it serves would
// wait for ever with nothing in its status to say why.
type queueWorker struct {
	queue    string
	register func(worker.Worker)
	w        worker.Worker
	fatal    chan error // the SDK's OnFatalError
}

// restartWait is how long a stopped worker waits before it is made again;
// the SDK waited two minutes before it gave up.
const restartWait = 5 * time.Second

func (q *queueWorker) start(c client.Client) error {
	fatal := make(chan error, 1)
	opts := rollout.WorkerOptions()
	opts.OnFatalError = func(err error) {
		select {
		case fatal <- err:
		default:
		}
	}
	q.fatal = fatal
	q.w = worker.New(c, q.queue, opts)
	q.register(q.w)
	return q.w.Start()
}

// run serves the queue until ctx ends, making the worker again (after
// restartWait) each time the SDK stops it; it says so on log.
func (q *queueWorker) run(ctx context.Context, c client.Client, log io.Writer) {
	for {
		select {
		case <-ctx.Done():
			q.w.Stop()
			return
		case err := <-q.fatal:
			q.w.Stop()
			fmt.Fprintf(log, "runbook: worker: Temporal stopped the worker of task queue %s (%v): it starts again in %s\n", q.queue, err, restartWait)
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(restartWait):
			}
			err := q.start(c)
			if err == nil {
				fmt.Fprintf(log, "runbook: worker: the worker of task queue %s started again\n", q.queue)
				break
			}
			q.w.Stop()
			fmt.Fprintf(log, "runbook: worker: start the worker of task queue %s again: %v: next try in %s\n", q.queue, err, restartWait)
		}
	}
}

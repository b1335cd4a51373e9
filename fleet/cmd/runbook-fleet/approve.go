package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/fleet"
	"github.com/runbook-dev/runbook/fleet/rollout"
)

func init() {
	register(&command{name: "approve", usage: "FLEET --wave N --by NAME [--key SSH_KEY] [--comment TEXT]: approve a gated wave (signed with SSH_KEY where the fleet names allowed signers)", run: runApprove})
}

// verdictWait is how long approve waits for a worker to judge the approval
// before it leaves the verdict to status.
const verdictWait = 60 * time.Second

func runApprove(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "approve")
	wave := fs.Int("wave", -1, "the wave approved (0 is the canary)")
	by := fs.String("by", "", "the approver (with allowed signers: the principal its key is listed for)")
	key := fs.String("key", "", "the SSH key that signs the approval")
	comment := fs.String("comment", "", "a comment kept with the approval")
	planDir := fs.String("plan", "", "the fleet plan directory (default .runbook-fleet/NAME/plan beside the fleet file)")
	path, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if *wave < 0 || strings.TrimSpace(*by) == "" {
		return &usageError{msg: "approve needs the wave and the approver", hint: "runbook fleet approve " + path + " --wave N --by NAME [--key SSH_KEY]"}
	}
	f, err := loadFleet(env, path)
	if err != nil {
		return err
	}
	if *planDir == "" {
		*planDir = defaultPlanDir(f)
	}
	doc, err := fleet.ReadPlan(*planDir)
	if err != nil {
		return err
	}
	id := make([]byte, 8)
	rand.Read(id)
	a := rollout.ApprovalSignal{ID: hex.EncodeToString(id), Wave: *wave, By: strings.TrimSpace(*by), Comment: *comment,
		Message: rollout.WaveMessage(doc.Fingerprint, *wave), Time: time.Now().UTC()}
	// Signed here, judged by the rollout (an activity checks the
	// signature): every approval sent is recorded, counted or not.
	if *key != "" {
		if a.Signature, err = engine.Sign(*key, engine.ApprovalNamespace, a.Message); err != nil {
			return err
		}
	}
	c, err := connect(f, env.stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SignalWorkflow(ctx, rollout.FleetWorkflowID(f.Name), "", rollout.SignalApprove, a); err != nil {
		return fmt.Errorf("send the approval to the rollout of %s: %w", f.Name, err)
	}
	fmt.Fprintf(env.stdout, "runbook: approval of wave %d by %s sent to the rollout of %s\n", *wave, a.By, f.Name)
	deadline := time.Now().Add(verdictWait)
	for time.Now().Before(deadline) {
		st, _, err := describe(ctx, c, f)
		if err == nil && *wave < len(st.Waves) {
			for _, e := range st.Waves[*wave].Approvals {
				if e.ID != a.ID {
					continue
				}
				if !e.Counts {
					return engine.Refusef("the approval of wave %d by %s does not count: %s", *wave, a.By, e.Why)
				}
				fmt.Fprintf(env.stdout, "runbook: it counts: %s\n", e.Why)
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	fmt.Fprintf(env.stdout, "runbook: no worker judged it yet; runbook fleet status %s shows the verdict once one has\n", path)
	return nil
}

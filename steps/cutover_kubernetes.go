package steps

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

// On Kubernetes (aistor { platform = "kubernetes" }) the cutover edits no
// file: the environment is the Helm values' (or the resource's). Apply writes
// the change as a values patch into the journal dir and the API key as a
// Secret manifest into secrets/, and waits for the operator: until AIStor
// reports the Key Manager, the step is "waiting for the operator" and resume
// checks again.

const k8sSecretName = "aistor-kms-api-key"

func (c *cutoverStep) k8sSet(ctx context.Context, r *engine.Run, e *cutoverEnv) (map[string]string, error) {
	sse := e.sseKeyIn
	if sse == "" {
		admin, _, err := e.a.Clients(r)
		if err != nil {
			return nil, err
		}
		st, err := admin.KMSStatus(ctx)
		if err != nil {
			return nil, fmt.Errorf("read AIStor's default key (KMS status): %w; or set sse_key on the cutover block", err)
		}
		sse = st.DefaultKeyID
	}
	return map[string]string{
		"MINIO_KMS_SERVER":  strings.Join(e.enc.KM.Endpoints(), ","),
		"MINIO_KMS_ENCLAVE": e.enc.Name,
		"MINIO_KMS_SSE_KEY": sse,
	}, nil
}

// k8sValuesPatch is the Helm values change; it holds no secret.
func k8sValuesPatch(set map[string]string) string {
	var b strings.Builder
	b.WriteString("# AIStor cutover from KES to the AIStor Key Manager (written by runbook).\n")
	b.WriteString("# 1. kubectl apply -f the Secret manifest in the journal dir's secrets/ (it holds the API key).\n")
	b.WriteString("# 2. In the object store's environment (Helm values or the resource's env list), REMOVE every\n")
	b.WriteString("#    MINIO_KMS_KES_* entry and add the entries below; then roll out (every pod must restart).\n")
	b.WriteString("# 3. runbook resume: it checks that AIStor reports the Key Manager and reads objects back.\n")
	b.WriteString("env:\n")
	for _, k := range []string{"MINIO_KMS_SERVER", "MINIO_KMS_ENCLAVE", "MINIO_KMS_SSE_KEY"} {
		fmt.Fprintf(&b, "  - name: %s\n    value: %q\n", k, set[k])
	}
	fmt.Fprintf(&b, "  - name: MINIO_KMS_API_KEY\n    valueFrom:\n      secretKeyRef:\n        name: %s\n        key: MINIO_KMS_API_KEY\n", k8sSecretName)
	return b.String()
}

func k8sSecretManifest(apiKey string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\ntype: Opaque\nstringData:\n  MINIO_KMS_API_KEY: %q\n", k8sSecretName, apiKey)
}

func (c *cutoverStep) planKubernetes(ctx context.Context, r *engine.Run, e *cutoverEnv, p *engine.StepPlan) (*engine.StepPlan, error) {
	set, err := c.k8sSet(ctx, r, e)
	if err != nil {
		return nil, err
	}
	patch := k8sValuesPatch(set)
	p.Observed = append(p.Observed, "platform = \"kubernetes\": the environment lives in the Helm values or the resource, not in files")
	if admin, _, err := e.a.Clients(r); err == nil {
		if st, err := admin.KMSStatus(ctx); err == nil {
			p.Observed = append(p.Observed, fmt.Sprintf("AIStor reports KMS %q, default key %q, endpoints %s", st.Name, st.DefaultKeyID, formatKMSEndpoints(st.Endpoints)))
			if st.Name == kmsNameKeyManager {
				p.Risks = append(p.Risks, "AIStor already reports the Key Manager: apply will find it applied and only validate")
			}
		}
	}
	sample, err := c.chooseSample(ctx, r, e)
	if err != nil {
		return nil, err
	}
	if err := c.proveSample(ctx, r, e, sample, ""); err != nil {
		return nil, err
	}
	p.Observed = append(p.Observed, sample.lines()...)
	p.Actions = append(p.Actions, fmt.Sprintf("write the API key as a Secret manifest (Secret %s) into the journal dir's secrets/ (0600), and this patch for the Helm values into the journal dir's kubernetes/ (it holds no secret):", k8sSecretName))
	for _, l := range splitLines(strings.TrimRight(patch, "\n")) {
		if !strings.HasPrefix(l, "#") {
			p.Actions = append(p.Actions, "    "+r.Redact(l))
		}
	}
	p.Actions = append(p.Actions, "stop, waiting for the operator: apply the Secret, remove every MINIO_KMS_KES_* entry from the object store's environment, add the entries above and roll every pod out")
	p.Sections = append(p.Sections, engine.PlanSection{Title: "Helm values patch", Body: patch})
	p.Actions = append(p.Actions, fmt.Sprintf("on resume: check that AIStor reports the Key Manager (%d checks in a row, a second apart; while pods are still coming up, up to %s; the step stays waiting while AIStor still runs on KES), then ", stableHealthChecks, e.wait)+c.validateAction(e))
	p.Verification = []string{fmt.Sprintf("AIStor's KMS status names %q with every endpoint online; the default key passes a key status check", kmsNameKeyManager), c.validateAction(e)}
	p.Rollback = "the operator reverts the values change (helm rollback); rollback then confirms AIStor reports KES again; refused once objects were written after the patch was handed over, unless forced"
	p.Risks = append(p.Risks, "the change is applied by the operator, not by runbook: apply stops \"waiting for the operator\" until resume sees the Key Manager")
	p.State = map[string]any{"kubernetes": set, "sample": sample}
	return p, nil
}

func (c *cutoverStep) applyKubernetes(ctx context.Context, r *engine.Run, e *cutoverEnv) error {
	rs, written := cutoverCheckpoint[cutoverRestart](r, kubernetesWrittenItem{})
	patch := filepath.Join(r.JournalDir(), "kubernetes", r.Addr+".values-patch.yaml")
	secret := filepath.Join(r.JournalDir(), "secrets", r.Addr+".kubernetes-secret.yaml")
	if !hasItem(r, sampleItem{}) {
		s, err := c.chooseSample(ctx, r, e)
		if err != nil {
			return err
		}
		if err := c.proveSample(ctx, r, e, s, ""); err != nil {
			return err
		}
		if err := checkpointItem(r, sampleItem{}, s); err != nil {
			return err
		}
	}
	sample, _ := cutoverCheckpoint[cutoverSample](r, sampleItem{})
	if !written {
		set, err := c.k8sSet(ctx, r, e)
		if err != nil {
			return err
		}
		if err := engine.MkdirDurable(filepath.Dir(patch), 0o700); err != nil {
			return fmt.Errorf("create kubernetes dir: %w", err)
		}
		if err := engine.WriteFileAtomic(patch, []byte(k8sValuesPatch(set)), 0o600); err != nil {
			return fmt.Errorf("write values patch: %w", err)
		}
		if err := r.WriteSecret("kubernetes-secret.yaml", []byte(k8sSecretManifest(c.cfg.APIKey))); err != nil {
			return err
		}
		rs = cutoverRestart{At: time.Now().UTC(), StoreAt: c.storeClock(ctx, r, e), Mode: "kubernetes"}
		if err := checkpointItem(r, kubernetesWrittenItem{}, rs); err != nil {
			return err
		}
		// A rollback's refusal counts from here: the operator may apply it at any moment.
		if err := checkpointItem(r, newRestartItem(0, false, phaseRestart), rs); err != nil {
			return err
		}
	}
	r.SetOutput("restarted_at", cty.StringVal(rs.At.Format(time.RFC3339Nano)))
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	if why := c.k8sStableHealth(ctx, r, e, admin); why != "" {
		if err := ctx.Err(); err != nil {
			return err
		}
		return engine.WaitForOperator("the change is yours to apply: (1) kubectl apply -f %s in the object store's namespace (the Secret %s, holding the API key); (2) in the object store's Helm values (or the resource's env list) remove every MINIO_KMS_KES_* entry and add the entries of the values patch %s, then helm upgrade so that every pod restarts (MinIO does not start with both KES and the Key Manager configured); (3) run runbook resume: it goes on once AIStor reports the Key Manager (AIStor now: %s)", secret, k8sSecretName, patch, why)
	}
	if err := checkpointItem(r, newRestartItem(0, false, phaseHealthy), map[string]string{"kms": kmsNameKeyManager}); err != nil {
		return err
	}
	n, err := c.validate(ctx, r, e, &sample)
	if err != nil {
		return err
	}
	r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
	r.Logf("AIStor reports %s; %d object(s) read back", kmsNameKeyManager, n)
	return nil
}

// k8sStableHealth returns "" once AIStor is healthy on the Key Manager for
// stableHealthChecks checks a second apart (a rollout still under way can
// answer from a pod on the new environment while others still run on KES),
// else what is wrong. While AIStor plainly still runs on KES, healthy, the
// change was not applied (yet): that is the answer at once. Any other state
// (pods restarting, no write quorum yet, the KMS not answering) is a rollout
// under way: it checks again, up to wait_timeout.
func (c *cutoverStep) k8sStableHealth(ctx context.Context, r *engine.Run, e *cutoverEnv, admin *madmin.AdminClient) string {
	stillKES := fmt.Sprintf("KMS status names %q, not %q", kmsNameKES, kmsNameKeyManager)
	deadline := time.Now().Add(e.wait)
	healthy := 0
	logged := false
	for {
		why := c.healthCheck(ctx, r, e.a, admin, 0, kmsNameKeyManager)
		if why == "" {
			healthy++
			if healthy >= stableHealthChecks {
				return ""
			}
		} else {
			if healthy > 0 {
				why += fmt.Sprintf(" (after %d healthy check(s))", healthy)
			}
			healthy = 0
			if why == stillKES || time.Now().After(deadline) {
				return why
			}
			if !logged {
				r.Logf("AIStor is not healthy on the Key Manager yet (%s): checking again every second for up to %s", why, e.wait)
				logged = true
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err().Error()
		case <-time.After(time.Second):
		}
	}
}

func (c *cutoverStep) rollbackKubernetes(ctx context.Context, r *engine.Run, e *cutoverEnv) error {
	rs, written := cutoverCheckpoint[cutoverRestart](r, kubernetesWrittenItem{})
	if !written {
		r.Logf("nothing to undo: no patch was handed over")
		return nil
	}
	if err := c.checkNoNewWrites(ctx, r, e, 0, rs); err != nil {
		return err
	}
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	if why := c.healthCheck(ctx, r, e.a, admin, 0, kmsNameKES); why != "" {
		return fmt.Errorf("waiting for the operator: revert the Helm values change (helm rollback, or restore the MINIO_KMS_KES_* entries and remove the MINIO_KMS_* ones), roll the object store out, then run runbook rollback again (AIStor now: %s)", why)
	}
	sample, _ := cutoverCheckpoint[cutoverSample](r, sampleItem{})
	n, err := c.validate(ctx, r, e, &sample)
	if err != nil {
		return err
	}
	r.Logf("AIStor reports %s again; %d object(s) read back", kmsNameKES, n)
	return nil
}

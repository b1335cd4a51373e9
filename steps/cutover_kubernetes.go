package steps

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

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
	p.Actions = append(p.Actions, "write a patch for the Helm values (and the API key as a Secret manifest in the journal dir's secrets/), then wait for the operator to apply it")
	p.Sections = append(p.Sections, engine.PlanSection{Title: "Helm values patch", Body: patch})
	p.Actions = append(p.Actions, "on resume: wait until AIStor reports the Key Manager, then "+c.validateAction(e))
	p.Verification = []string{fmt.Sprintf("AIStor's KMS status names %q with every endpoint online; the default key passes a key status check", kmsNameKeyManager), c.validateAction(e)}
	p.Rollback = "the operator reverts the values change (helm rollback); rollback then confirms AIStor reports KES again; refused once objects were written after the patch was handed over, unless forced"
	p.Risks = append(p.Risks, "the change is applied by the operator, not by runbook: apply stops \"waiting for the operator\" until resume sees the Key Manager")
	p.State = map[string]any{"kubernetes": set}
	return p, nil
}

func (c *cutoverStep) applyKubernetes(ctx context.Context, r *engine.Run, e *cutoverEnv) error {
	rs, written := cutoverCheckpoint[cutoverRestart](r, "kubernetes/written")
	patch := filepath.Join(r.JournalDir(), "kubernetes", r.Addr+".values-patch.yaml")
	secret := filepath.Join(r.JournalDir(), "secrets", r.Addr+".kubernetes-secret.yaml")
	if !written {
		set, err := c.k8sSet(ctx, r, e)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(patch), 0o700); err != nil {
			return fmt.Errorf("create kubernetes dir: %w", err)
		}
		if err := engine.WriteFileAtomic(patch, []byte(k8sValuesPatch(set)), 0o600); err != nil {
			return fmt.Errorf("write values patch: %w", err)
		}
		if err := r.WriteSecret("kubernetes-secret.yaml", []byte(k8sSecretManifest(c.cfg.APIKey))); err != nil {
			return err
		}
		rs = cutoverRestart{At: time.Now().UTC(), Mode: "kubernetes"}
		if err := r.Checkpoint("kubernetes/written", rs); err != nil {
			return err
		}
		// A rollback's refusal counts from here: the operator may apply it at any moment.
		if err := r.Checkpoint("restart", rs); err != nil {
			return err
		}
	}
	r.SetOutput("restarted_at", cty.StringVal(rs.At.Format(time.RFC3339Nano)))
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	if why := c.healthCheck(ctx, r, e.a, admin, 0, kmsNameKeyManager); why != "" {
		return engine.WaitForOperator("apply the Secret %s and the Helm values patch %s, roll the object store out, then run runbook resume (AIStor now: %s)", secret, patch, why)
	}
	if err := r.Checkpoint("healthy", map[string]string{"kms": kmsNameKeyManager}); err != nil {
		return err
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		return err
	}
	r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
	r.Logf("AIStor reports %s; %d object(s) read back", kmsNameKeyManager, n)
	return nil
}

func (c *cutoverStep) rollbackKubernetes(ctx context.Context, r *engine.Run, e *cutoverEnv) error {
	rs, written := cutoverCheckpoint[cutoverRestart](r, "kubernetes/written")
	if !written {
		r.Logf("nothing to undo: no patch was handed over")
		return nil
	}
	if err := c.checkNoNewWrites(ctx, r, e, 0, rs.At); err != nil {
		return err
	}
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	if why := c.healthCheck(ctx, r, e.a, admin, 0, kmsNameKES); why != "" {
		return fmt.Errorf("waiting for the operator: revert the Helm values change (helm rollback, or restore the MINIO_KMS_KES_* entries and remove the MINIO_KMS_* ones), roll the object store out, then run runbook rollback again (AIStor now: %s)", why)
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		return err
	}
	r.Logf("AIStor reports %s again; %d object(s) read back", kmsNameKES, n)
	return nil
}

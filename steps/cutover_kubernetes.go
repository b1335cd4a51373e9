package steps

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// On Kubernetes (aistor { platform = "kubernetes" }) the cutover edits no
// file: the environment is the Helm values' (or the resource's). Apply writes
// the change as a values patch into the journal dir and the API key as a
// Secret manifest into secrets/, and waits for the operator: until AIStor
// reports the Key Manager, the step is "waiting for the operator" and resume
// checks again.

const k8sSecretName = "aistor-kms-api-key"

// k8sHandOff is the cutover on Kubernetes today: Write hands the change over
// as files, and the operator applies it and rolls the pods out; Restart
// waits for that (engine.ErrWaiting until AIStor runs on the KMS wanted).
type k8sHandOff struct {
	a    *aistorConnection
	wait time.Duration
}

var _ cutoverPlatform = (*k8sHandOff)(nil)

func (k *k8sHandOff) Close()       {}
func (k *k8sHandOff) Servers() int { return 0 }
func (k *k8sHandOff) Hosts() int   { return 1 }

func (k *k8sHandOff) Logs(context.Context, *engine.Run) string { return "" }

func (k *k8sHandOff) Observe(context.Context, *engine.Run) (*platformView, error) {
	return &platformView{Observed: []string{"platform = \"kubernetes\": the environment lives in the Helm values or the resource, not in files"}}, nil
}

func (k *k8sHandOff) paths(r *engine.Run) (patch, secret string) {
	return filepath.Join(r.JournalDir(), "kubernetes", r.Addr+".values-patch.yaml"), filepath.Join(r.JournalDir(), "secrets", r.Addr+".kubernetes-secret.yaml")
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

func (k *k8sHandOff) PlanChange(r *engine.Run, set map[string]string, p *engine.StepPlan) (any, error) {
	patch := k8sValuesPatch(set)
	p.Actions = append(p.Actions, fmt.Sprintf("write the API key as a Secret manifest (Secret %s) into the journal dir's secrets/ (0600), and this patch for the Helm values into the journal dir's kubernetes/ (it holds no secret):", k8sSecretName))
	for _, l := range splitLines(strings.TrimRight(patch, "\n")) {
		if !strings.HasPrefix(l, "#") {
			p.Actions = append(p.Actions, "    "+r.Redact(l))
		}
	}
	p.Actions = append(p.Actions, fmt.Sprintf("stop, waiting for the operator: apply the Secret, remove every MINIO_KMS_KES_* entry from the object store's environment, add the entries above and roll every pod out; on resume, go on once AIStor reports the Key Manager (%d checks in a row, a second apart; while pods are still coming up, up to %s)", stableHealthChecks, k.wait))
	p.Sections = append(p.Sections, engine.PlanSection{Title: "Helm values patch", Body: patch})
	p.Rollback = "the operator reverts the values change (helm rollback); rollback then confirms AIStor reports KES again; refused once objects were written after the patch was handed over, unless forced"
	p.Risks = append(p.Risks, "the change is applied by the operator, not by runbook: apply stops \"waiting for the operator\" until resume sees the Key Manager")
	shown := map[string]string{}
	for key, v := range set {
		if key != "MINIO_KMS_API_KEY" {
			shown[key] = v
		}
	}
	return map[string]any{"kubernetes": shown}, nil
}

// Write hands the change over: the values patch into the journal dir's
// kubernetes/, the API key as a Secret manifest into secrets/.
func (k *k8sHandOff) Write(_ context.Context, r *engine.Run, _ int, set map[string]string) error {
	if hasItem(r, kubernetesWrittenItem{}) {
		return nil
	}
	patch, _ := k.paths(r)
	if err := engine.MkdirDurable(filepath.Dir(patch), 0o700); err != nil {
		return fmt.Errorf("create kubernetes dir: %w", err)
	}
	if err := engine.WriteFileAtomic(patch, []byte(k8sValuesPatch(set)), 0o600); err != nil {
		return fmt.Errorf("write values patch: %w", err)
	}
	if err := r.WriteSecret("kubernetes-secret.yaml", []byte(k8sSecretManifest(set["MINIO_KMS_API_KEY"]))); err != nil {
		return err
	}
	return checkpointItem(r, kubernetesWrittenItem{}, map[string]string{"patch": filepath.Base(patch)})
}

// Restore has nothing to write: the operator reverts the values change,
// which Restart(back) then waits for.
func (k *k8sHandOff) Restore(context.Context, *engine.Run, int) error { return nil }

// Restart returns once AIStor is healthy on the KMS wanted; while it plainly
// still runs on the other one, the operator has not rolled the change out.
func (k *k8sHandOff) Restart(ctx context.Context, r *engine.Run, back bool) error {
	want := kmsNameKeyManager
	if back {
		want = kmsNameKES
	}
	why := k.stableHealth(ctx, r, want)
	if why == "" {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if back {
		return fmt.Errorf("waiting for the operator: revert the Helm values change (helm rollback, or restore the MINIO_KMS_KES_* entries and remove the MINIO_KMS_* ones), roll the object store out, then run runbook rollback again (AIStor now: %s)", why)
	}
	patch, secret := k.paths(r)
	return engine.WaitForOperator("the change is yours to apply: (1) kubectl apply -f %s in the object store's namespace (the Secret %s, holding the API key); (2) in the object store's Helm values (or the resource's env list) remove every MINIO_KMS_KES_* entry and add the entries of the values patch %s, then helm upgrade so that every pod restarts (MinIO does not start with both KES and the Key Manager configured); (3) run runbook resume: it goes on once AIStor reports the Key Manager (AIStor now: %s)", secret, k8sSecretName, patch, why)
}

// stableHealth returns "" once AIStor is healthy on want for
// stableHealthChecks checks a second apart (a rollout still under way can
// answer from a pod on the new environment while others still run on the
// old), else what is wrong. While AIStor plainly still runs, healthy, on the
// other KMS, the change was not applied (yet): that is the answer at once.
// Any other state (pods restarting, no write quorum yet, the KMS not
// answering) is a rollout under way: it checks again, up to wait_timeout.
func (k *k8sHandOff) stableHealth(ctx context.Context, r *engine.Run, want string) string {
	admin, _, err := k.a.Clients(r)
	if err != nil {
		return err.Error()
	}
	other := kmsNameKES
	if want == kmsNameKES {
		other = kmsNameKeyManager
	}
	stillOther := fmt.Sprintf("KMS status names %q, not %q", other, want)
	deadline := time.Now().Add(k.wait)
	healthy := 0
	logged := false
	for {
		why := healthCheck(ctx, r, k.a, admin, 0, want)
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
			if why == stillOther || time.Now().After(deadline) {
				return why
			}
			if !logged {
				r.Logf("AIStor is not healthy on %s yet (%s): checking again every second for up to %s", want, why, k.wait)
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

package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"

	"github.com/runbook-dev/runbook/engine"
)

// k8sWriting is recorded before a change is written: the StatefulSets'
// generations then (the wait for the new template counts from them).
type k8sWriting struct {
	Generations map[string]int64 `json:"generations"`
}

// k8sBackup records what was saved before any change; the files are in the
// journal dir's backups/ (0600).
type k8sBackup struct {
	Resource string `json:"resource"`         // backup file of the resource (JSON)
	Config   string `json:"config,omitempty"` // backup file of the configuration Secret
	// KeySecret is runbook's API-key Secret; KeySecretExisted says whether
	// it existed before (a rollback deletes only one it created).
	KeySecret        string `json:"key_secret,omitempty"`
	KeySecretExisted bool   `json:"key_secret_existed,omitempty"`
	// Strategies holds each StatefulSet's updateStrategy before the cutover.
	Strategies map[string]appsv1.StatefulSetUpdateStrategy `json:"strategies"`
	// KES reports whether spec.kes was set (its removal changes the pod
	// template the operator renders).
	KES bool `json:"kes,omitempty"`
}

func ptrInt(p *int32) int {
	if p == nil {
		return 1
	}
	return int(*p)
}

func probesOf(sts *appsv1.StatefulSet) string {
	c := minioContainer(sts)
	var parts []string
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		if p != nil && p.HTTPGet != nil {
			parts = append(parts, fmt.Sprintf("%s probe GET %s", name, p.HTTPGet.Path))
		}
	}
	sort.Strings(parts)
	if len(parts) == 0 {
		return ", no HTTP probes"
	}
	return ", " + strings.Join(parts, ", ")
}

func podNames(pods []corev1.Pod) string {
	var n []string
	for _, p := range pods {
		state := "Ready"
		if !podReady(&p) {
			state = "not Ready"
		}
		n = append(n, p.Name+" ("+state+")")
	}
	if len(n) == 0 {
		return "(none)"
	}
	return strings.Join(n, ", ")
}

// backup saves the resource (or StatefulSet) and its configuration Secret
// into the journal dir's backups/ (0600: they hold credentials).
func (t *k8sTarget) backup(ctx context.Context, r *engine.Run, s *k8sState, prefix string) (k8sBackup, error) {
	b := k8sBackup{Strategies: map[string]appsv1.StatefulSetUpdateStrategy{}, KeySecret: t.keySecretName()}
	for _, sts := range s.sets {
		b.Strategies[sts.Name] = sts.Spec.UpdateStrategy
	}
	var obj any = s.obj
	if s.obj == nil {
		obj = s.sets[0]
	} else {
		_, b.KES, _ = unstructured.NestedMap(s.obj.Object, "spec", "kes")
	}
	prefix = strings.ReplaceAll(prefix, "/", "-")
	b.Resource = fmt.Sprintf("%sk8s-%s-%s.json", prefix, strings.ToLower(t.kind), t.name)
	if err := writeBackupJSON(r, b.Resource, obj); err != nil {
		return b, err
	}
	if s.config != nil {
		b.Config = prefix + "k8s-secret-" + s.config.Name + ".json"
		if err := writeBackupJSON(r, b.Config, s.config); err != nil {
			return b, err
		}
	}
	_, err := t.client.CoreV1().Secrets(t.ns).Get(ctx, t.keySecretName(), metav1.GetOptions{})
	switch {
	case err == nil:
		b.KeySecretExisted = true
	case !apierrors.IsNotFound(err):
		return b, fmt.Errorf("read Secret %s: %w", t.keySecretName(), err)
	}
	r.Logf("backed up %s%s into the journal dir's backups/", t, map[bool]string{true: " and Secret " + b.Config, false: ""}[s.config != nil])
	return b, nil
}

func writeBackupJSON(r *engine.Run, name string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	p, err := r.BackupPath(name)
	if err != nil {
		return err
	}
	if err := engine.WriteFileAtomic(p, data, 0o600); err != nil {
		return fmt.Errorf("back up %s: %w", name, err)
	}
	return nil
}

func readBackupJSON(r *engine.Run, name string, v any) error {
	p, err := r.BackupPath(name)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return fmt.Errorf("read backup %s: %w", name, err)
	}
	return json.Unmarshal(data, v)
}

// write puts the change in place: the Secret first (so the resource never
// refers to a key that is not there), then the resource. Updates carry the
// resourceVersion read, so a concurrent change is detected, not
// overwritten; the field manager is runbook's.
func (t *k8sTarget) write(ctx context.Context, s *k8sState, ch *k8sChange) error {
	opts := metav1.UpdateOptions{FieldManager: fieldManager}
	if ch.keySecret != nil {
		if err := t.writeKeySecret(ctx, ch.keySecret); err != nil {
			return err
		}
	}
	if ch.config != nil {
		if _, err := t.client.CoreV1().Secrets(t.ns).Update(ctx, ch.config, opts); err != nil {
			return fmt.Errorf("write Secret %s: %w", ch.config.Name, err)
		}
	}
	if !t.operated() {
		sts := s.sets[0].DeepCopy()
		minioContainer(sts).Env = ch.env
		if _, err := t.client.AppsV1().StatefulSets(t.ns).Update(ctx, sts, opts); err != nil {
			return fmt.Errorf("write StatefulSet %s: %w", sts.Name, err)
		}
		return nil
	}
	obj := s.obj.DeepCopy()
	obj.Object["spec"] = ch.spec
	if _, err := t.dyn.Resource(t.gvr()).Namespace(t.ns).Update(ctx, obj, opts); err != nil {
		return fmt.Errorf("write %s: %w", t, err)
	}
	return nil
}

// writeKeySecret writes runbook's API-key Secret (server-side apply).
func (t *k8sTarget) writeKeySecret(ctx context.Context, sec *corev1.Secret) error {
	data, err := json.Marshal(sec)
	if err != nil {
		return err
	}
	if _, err := t.client.CoreV1().Secrets(t.ns).Patch(ctx, sec.Name, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: fieldManager, Force: ptrTrue()}); err != nil {
		return fmt.Errorf("write Secret %s: %w", sec.Name, err)
	}
	return nil
}

func ptrTrue() *bool { b := true; return &b }

// setStrategies sets every StatefulSet's updateStrategy to OnDelete (want
// nil) or to its saved strategy, with runbook's field manager.
func (t *k8sTarget) setStrategies(ctx context.Context, r *engine.Run, s *k8sState, want map[string]appsv1.StatefulSetUpdateStrategy) error {
	for _, sts := range s.sets {
		strategy := appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
		if want != nil {
			strategy = want[sts.Name]
		}
		if strategy.Type == sts.Spec.UpdateStrategy.Type && want == nil {
			continue
		}
		patch := map[string]any{"spec": map[string]any{"updateStrategy": map[string]any{"type": strategy.Type, "rollingUpdate": strategy.RollingUpdate}}}
		data, err := json.Marshal(patch)
		if err != nil {
			return err
		}
		if _, err := t.client.AppsV1().StatefulSets(t.ns).Patch(ctx, sts.Name, types.MergePatchType, data, metav1.PatchOptions{FieldManager: fieldManager}); err != nil {
			return fmt.Errorf("set updateStrategy %s on StatefulSet %s: %w", strategy.Type, sts.Name, err)
		}
		r.Logf("StatefulSet %s: updateStrategy %s", sts.Name, strategy.Type)
	}
	return nil
}

func (t *k8sTarget) restoreStrategies(ctx context.Context, r *engine.Run, b k8sBackup) error {
	s, err := t.observe(ctx)
	if err != nil {
		return err
	}
	return t.setStrategies(ctx, r, s, b.Strategies)
}

// waitConfigured watches every StatefulSet until the controller has seen
// its current spec and, unless unchanged is set, its template changed
// since gens (the generations before the change): new pods then get the
// new environment. For a Tenant or ObjectStore whose template does not
// change, the pods' config file is written by the operator from the
// resource and Secret, which already carry the change.
func (t *k8sTarget) waitConfigured(ctx context.Context, r *engine.Run, wait time.Duration, gens map[string]int64, unchanged bool) error {
	s, err := t.observe(ctx)
	if err != nil {
		return err
	}
	pending := map[string]bool{}
	for _, sts := range s.sets {
		pending[sts.Name] = true
	}
	done := func(sts *appsv1.StatefulSet) bool {
		if !unchanged && sts.Generation <= gens[sts.Name] {
			return false
		}
		return sts.Status.ObservedGeneration >= sts.Generation && sts.Status.UpdateRevision != ""
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	lw := cache.NewListWatchFromClient(t.client.AppsV1().RESTClient(), "statefulsets", t.ns, fields.Everything())
	_, err = watchtools.UntilWithSync(wctx, lw, &appsv1.StatefulSet{}, nil, func(ev watch.Event) (bool, error) {
		if sts, ok := ev.Object.(*appsv1.StatefulSet); ok && pending[sts.Name] && done(sts) {
			delete(pending, sts.Name)
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		var names []string
		for n := range pending {
			names = append(names, n)
		}
		sort.Strings(names)
		what := "the operator has not carried the change into the pod template of StatefulSet(s) " + strings.Join(names, ", ")
		if !t.operated() {
			what = "the StatefulSet controller has not seen the new template of " + strings.Join(names, ", ")
		}
		return fmt.Errorf("wait until every StatefulSet carries the change: %s within %s (%v); no pod was restarted: runbook resume waits again, runbook rollback restores %s", what, wait, err, t)
	}
	r.Logf("every StatefulSet of %s carries the change", t)
	return nil
}

// restartPods deletes every MinIO pod at once and watches until each
// StatefulSet has all its pods back, new ones, Ready, on the StatefulSet's
// current revision (with OnDelete and Parallel the StatefulSet controller recreates
// them together: docs/kubernetes.md, "What it does"). Deleting is not an eviction:
// PodDisruptionBudgets do not apply.
func (t *k8sTarget) restartPods(ctx context.Context, r *engine.Run, wait time.Duration) error {
	s, err := t.observe(ctx)
	if err != nil {
		return err
	}
	old := map[types.UID]bool{}
	revision := map[string]string{} // StatefulSet → its update revision
	owner := map[string]string{}    // pod name → StatefulSet
	for _, sts := range s.sets {
		revision[sts.Name] = sts.Status.UpdateRevision
		for i := range ptrInt(sts.Spec.Replicas) {
			owner[fmt.Sprintf("%s-%d", sts.Name, i)] = sts.Name
		}
	}
	var names []string
	errs := make([]error, len(s.pods))
	var wg sync.WaitGroup
	for i, p := range s.pods {
		old[p.UID] = true
		names = append(names, p.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := p.UID
			err := t.client.CoreV1().Pods(t.ns).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				errs[i] = fmt.Errorf("delete pod %s: %w", p.Name, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	sort.Strings(names)
	r.Logf("deleted the %d MinIO pods of %s together: %s", len(names), t, strings.Join(names, ", "))
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	ready := map[string]bool{}
	lw := cache.NewListWatchFromClient(t.client.CoreV1().RESTClient(), "pods", t.ns, fields.Everything())
	_, err = watchtools.UntilWithSync(wctx, lw, &corev1.Pod{}, nil, func(ev watch.Event) (bool, error) {
		p, ok := ev.Object.(*corev1.Pod)
		if !ok || owner[p.Name] == "" {
			return false, nil
		}
		ready[p.Name] = ev.Type != watch.Deleted && !old[p.UID] && p.DeletionTimestamp == nil && podReady(p) &&
			p.Labels[appsv1.ControllerRevisionHashLabelKey] == revision[owner[p.Name]]
		for name := range owner {
			if !ready[name] {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		var missing []string
		for name := range owner {
			if !ready[name] {
				missing = append(missing, name)
			}
		}
		sort.Strings(missing)
		return fmt.Errorf("pod(s) %s of %s not back and Ready on the new revision within %s: %w", strings.Join(missing, ", "), t, wait, err)
	}
	r.Logf("every MinIO pod of %s is back and Ready", t)
	return nil
}

// podStates describes every pod, for an error message (no kubelet log is
// reachable through the API without pods/log rights; kubectl logs reads it).
func (t *k8sTarget) podStates(ctx context.Context) string {
	s, err := t.observe(ctx)
	if err != nil {
		return "\n  (" + err.Error() + ")"
	}
	var b strings.Builder
	for _, p := range s.pods {
		fmt.Fprintf(&b, "\n  pod %s: %s, Ready %v, revision %s (kubectl logs -n %s %s)", p.Name, p.Status.Phase, podReady(&p), p.Labels[appsv1.ControllerRevisionHashLabelKey], t.ns, p.Name)
	}
	return b.String()
}

// restore writes the saved spec (or the MinIO container's env) and the
// saved configuration Secret back, and deletes runbook's API-key Secret if
// it created it. Idempotent.
func (t *k8sTarget) restore(ctx context.Context, r *engine.Run, b k8sBackup) error {
	opts := metav1.UpdateOptions{FieldManager: fieldManager}
	if b.Config != "" {
		var saved corev1.Secret
		if err := readBackupJSON(r, b.Config, &saved); err != nil {
			return err
		}
		err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			cur, err := t.client.CoreV1().Secrets(t.ns).Get(ctx, saved.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			cur.Data, cur.StringData = saved.Data, nil
			_, err = t.client.CoreV1().Secrets(t.ns).Update(ctx, cur, opts)
			return err
		})
		if err != nil {
			return fmt.Errorf("restore Secret %s: %w", saved.Name, err)
		}
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if !t.operated() {
			var saved appsv1.StatefulSet
			if err := readBackupJSON(r, b.Resource, &saved); err != nil {
				return err
			}
			cur, err := t.client.AppsV1().StatefulSets(t.ns).Get(ctx, t.name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			minioContainer(cur).Env = minioContainer(&saved).Env
			_, err = t.client.AppsV1().StatefulSets(t.ns).Update(ctx, cur, opts)
			return err
		}
		var saved unstructured.Unstructured
		if err := readBackupJSON(r, b.Resource, &saved.Object); err != nil {
			return err
		}
		cur, err := t.dyn.Resource(t.gvr()).Namespace(t.ns).Get(ctx, t.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Object["spec"] = saved.Object["spec"]
		_, err = t.dyn.Resource(t.gvr()).Namespace(t.ns).Update(ctx, cur, opts)
		return err
	})
	if err != nil {
		return fmt.Errorf("restore %s: %w", t, err)
	}
	if err := t.dropKeySecret(ctx, b); err != nil {
		return err
	}
	r.Logf("restored %s from the journal's backups", t)
	return nil
}

// dropKeySecret deletes runbook's API-key Secret unless it existed before
// the cutover.
func (t *k8sTarget) dropKeySecret(ctx context.Context, b k8sBackup) error {
	if b.KeySecretExisted || b.KeySecret == "" {
		return nil
	}
	err := t.client.CoreV1().Secrets(t.ns).Delete(ctx, b.KeySecret, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete Secret %s: %w", b.KeySecret, err)
	}
	return nil
}

// waitReverted is restore with gitops = true: runbook writing the saved
// objects back would be undone by the owner's next sync, so the owner
// reverts the change where the resource is kept, and this waits
// (watching, up to wait_timeout) until the live KMS variables are again
// those of the backup, then deletes runbook's own API-key Secret (no part
// of the owner's repository). Wait ends first: engine.ErrWaiting, nothing
// restarted; runbook rollback again waits on.
func (t *k8sTarget) waitReverted(ctx context.Context, r *engine.Run, wait time.Duration, b k8sBackup) error {
	saved, err := t.savedState(r, b)
	if err != nil {
		return err
	}
	want, err := t.kmsEnv(ctx, saved)
	if err != nil {
		return err
	}
	live, err := t.observe(ctx)
	if err != nil {
		return err
	}
	err = t.waitGitOps(ctx, r, wait, t.secretsRead(live), gitopsWait{
		what: "reverts the change",
		pending: func(ctx context.Context) string {
			s, err := t.observe(ctx)
			if err != nil {
				return err.Error()
			}
			got, err := t.kmsEnv(ctx, s)
			if err != nil {
				return err.Error()
			}
			return kmsEnvDiff(got, want)
		},
		done: fmt.Sprintf("%s carries again what was saved before the change (the owner's revert)", t),
		later: func(last string) error {
			return engine.WaitForOperator("%s does not carry the saved state yet (%s): revert the change where the resource is kept (CHANGE.md, \"Rollback where the resource is kept\"), let it sync, then run runbook rollback again; no pod was restarted by the rollback", t, last)
		},
	})
	if err != nil {
		return err
	}
	return t.dropKeySecret(ctx, b)
}

// savedState is the resource and configuration Secret as backed up.
func (t *k8sTarget) savedState(r *engine.Run, b k8sBackup) (*k8sState, error) {
	s := &k8sState{}
	if b.Config != "" {
		s.config = &corev1.Secret{}
		if err := readBackupJSON(r, b.Config, s.config); err != nil {
			return nil, err
		}
	}
	if !t.operated() {
		sts := &appsv1.StatefulSet{}
		if err := readBackupJSON(r, b.Resource, sts); err != nil {
			return nil, err
		}
		s.sets = []*appsv1.StatefulSet{sts}
		return s, nil
	}
	s.obj = &unstructured.Unstructured{}
	if err := readBackupJSON(r, b.Resource, &s.obj.Object); err != nil {
		return nil, err
	}
	return s, nil
}

// kmsEnv is the MINIO_KMS_* variables s gives the pods, by name, each
// with its value and where it comes from (kmsVars; unset ones left out).
func (t *k8sTarget) kmsEnv(ctx context.Context, s *k8sState) (map[string]k8sVar, error) {
	vars, err := t.kmsVars(ctx, s)
	if err != nil {
		return nil, err
	}
	out := map[string]k8sVar{}
	for _, v := range vars {
		if !v.Unset {
			out[v.Name] = v // a later source wins, as the operator renders it
		}
	}
	return out, nil
}

// kmsEnvDiff is "" when got and want set the same variables from the same
// sources to the same values, else the first difference by name (no
// value: they may be secrets).
func kmsEnvDiff(got, want map[string]k8sVar) string {
	names := make([]string, 0, len(got)+len(want))
	for n := range got {
		names = append(names, n)
	}
	for n := range want {
		if _, ok := got[n]; !ok {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		g, inGot := got[n]
		w, inWant := want[n]
		switch {
		case !inWant:
			return fmt.Sprintf("%s is set, from %s", n, g.Source)
		case !inGot:
			return fmt.Sprintf("%s is not set (it was, from %s)", n, w.Source)
		case g.Source != w.Source:
			return fmt.Sprintf("%s comes from %s, not %s", n, g.Source, w.Source)
		case g.Value != w.Value:
			return fmt.Sprintf("%s differs from its saved value", n)
		}
	}
	return ""
}

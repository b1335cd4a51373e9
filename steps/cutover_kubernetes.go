package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/yaml"

	"github.com/runbook-dev/runbook/engine"
)

// k8sPlatform is the cutover on Kubernetes (cutoverPlatform; what it changes
// and why: cutover_k8s.go). It connects to the API on first use and reads
// the deployment afresh for every move.
type k8sPlatform struct {
	a    *aistorConnection
	wait time.Duration
	t    *k8sTarget
	s    *k8sState // the last observation
}

var _ cutoverPlatform = (*k8sPlatform)(nil)

func (k *k8sPlatform) Close() {}

func (k *k8sPlatform) target(r *engine.Run) (*k8sTarget, error) {
	if k.t == nil {
		t, err := newK8sTarget(r, k.a)
		if err != nil {
			return nil, err
		}
		k.t = t
	}
	return k.t, nil
}

// observe reads the deployment and keeps what it saw.
func (k *k8sPlatform) observe(ctx context.Context, r *engine.Run) (*k8sTarget, *k8sState, error) {
	t, err := k.target(r)
	if err != nil {
		return nil, nil, err
	}
	s, err := t.observe(ctx)
	if err != nil {
		return nil, nil, err
	}
	k.s = s
	return t, s, nil
}

// Servers is the number of MinIO pods the StatefulSets run.
func (k *k8sPlatform) Servers() int {
	if k.s == nil {
		return 0
	}
	return k.s.replicas()
}

// Hosts is the number of distinct nodes the MinIO pods are bound to.
func (k *k8sPlatform) Hosts() int {
	nodes := map[string]bool{}
	if k.s != nil {
		for _, p := range k.s.pods {
			nodes[p.Spec.NodeName] = true
		}
	}
	return max(1, len(nodes))
}

func (k *k8sPlatform) Logs(ctx context.Context, r *engine.Run) string {
	if k.t == nil {
		return ""
	}
	return k.t.podStates(ctx)
}

// Observe reads the resource, its configuration Secret, every pool's
// StatefulSet and pods, and where each MINIO_KMS_* variable comes from. It
// refuses what cannot restart all at once (podManagementPolicy
// OrderedReady), a deployment not complete and Ready, and servers the
// object store reports beyond the pods.
func (k *k8sPlatform) Observe(ctx context.Context, r *engine.Run) (*platformView, error) {
	t, s, err := k.observe(ctx, r)
	if err != nil {
		return nil, err
	}
	v := &platformView{Env: map[string]string{}, Sources: map[string]string{}}
	v.Observed = append(v.Observed, fmt.Sprintf("platform = \"kubernetes\": %s, through %s", t, t.api))
	if s.config != nil {
		v.Observed = append(v.Observed, fmt.Sprintf("configuration Secret %s (config.env)", s.config.Name))
	}
	var notReady []string
	for _, sts := range s.sets {
		policy := sts.Spec.PodManagementPolicy
		if policy == "" {
			policy = appsv1.OrderedReadyPodManagement
		}
		v.Observed = append(v.Observed, fmt.Sprintf("StatefulSet %s: %d replicas, podManagementPolicy %s, updateStrategy %s%s", sts.Name, ptrInt(sts.Spec.Replicas), policy, sts.Spec.UpdateStrategy.Type, probesOf(sts)))
		if policy == appsv1.OrderedReadyPodManagement {
			return nil, engine.Refusef("StatefulSet %s of %s has podManagementPolicy: OrderedReady: after its pods are deleted together Kubernetes recreates them one at a time, each once the one before is Ready, and MinIO's start-up check keeps the first one waiting for peers with its new environment (docs/domain.md: Restarting a cluster), so the restart cannot be all at once. podManagementPolicy cannot be changed on a live StatefulSet: recreate it with podManagementPolicy: Parallel (kubectl delete statefulset %s --cascade=orphan, then apply it again with Parallel: the pods and their volumes stay), and plan again (nothing was changed)", sts.Name, t, sts.Name)
		}
		pods := podsOf(sts, s.pods)
		for _, p := range pods {
			if !podReady(&p) {
				notReady = append(notReady, p.Name)
			}
		}
		v.Observed = append(v.Observed, fmt.Sprintf("StatefulSet %s: pods %s", sts.Name, podNames(pods)))
		if len(pods) != ptrInt(sts.Spec.Replicas) {
			return nil, engine.Refusef("StatefulSet %s has %d pods, not the %d it asks for: a cutover restarts every MinIO pod at once and needs the deployment complete and healthy first (nothing was changed)", sts.Name, len(pods), ptrInt(sts.Spec.Replicas))
		}
	}
	if len(notReady) > 0 {
		return nil, engine.Refusef("pod(s) %s of %s are not Ready: a cutover restarts every MinIO pod at once and needs every pod healthy first (nothing was changed)", strings.Join(notReady, ", "), t)
	}
	covered, err := k.checkServers(ctx, r, t, s)
	if err != nil {
		return nil, err
	}
	v.Observed = append(v.Observed, covered)
	vars, err := t.kmsVars(ctx, s)
	if err != nil {
		return nil, err
	}
	for _, kv := range vars {
		if kv.Value != "" && (strings.Contains(kv.Name, "API_KEY") || strings.Contains(kv.Source, "Secret")) {
			r.AddSecret(kv.Value)
		}
		shown := fmt.Sprintf("%q", kv.Value)
		switch {
		case kv.Unset:
			shown = "(unset: the optional reference finds no such Secret or key)"
		case kv.Value == "" && strings.Contains(kv.Source, "operator"):
			shown = "(set by the operator)"
		case kv.Value == "":
			shown = "(empty)"
		}
		v.Observed = append(v.Observed, fmt.Sprintf("%s = %s, from %s", kv.Name, r.Redact(shown), kv.Source))
		if kv.Unset {
			continue
		}
		v.Env[kv.Name] = kv.Value
		v.Sources[kv.Name] = kv.Source
	}
	if len(vars) == 0 {
		v.Observed = append(v.Observed, "no MINIO_KMS_* variable is set in "+t.String())
	}
	return v, nil
}

// checkServers refuses an object store that reports other servers than
// the pods of t's StatefulSets (s), and otherwise says it reports them.
func (k *k8sPlatform) checkServers(ctx context.Context, r *engine.Run, t *k8sTarget, s *k8sState) (string, error) {
	admin, _, err := k.a.Clients(r)
	if err != nil {
		return "", err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	info, err := admin.ServerInfo(cctx)
	cancel()
	if err != nil {
		return "", fmt.Errorf("read the object store's servers (server info): %w", err)
	}
	if len(info.Servers) != s.replicas() {
		var eps []string
		for _, sv := range info.Servers {
			eps = append(eps, sv.Endpoint)
		}
		sort.Strings(eps)
		return "", engine.Refusef("the object store reports %d server(s) (%s) but the StatefulSets of %s run %d pods: servers outside %s would keep the old environment and wait for peers, or run on KES beside the Key Manager (docs/domain.md: Restarting a cluster); name the resource that owns every server and plan again (nothing was changed)", len(info.Servers), strings.Join(eps, ", "), t, s.replicas(), t)
	}
	return fmt.Sprintf("the object store reports %d servers, the %d pods of %s", len(info.Servers), s.replicas(), t), nil
}

// PlanChange says exactly what Write will do, and its equivalent where the
// resource is kept.
func (k *k8sPlatform) PlanChange(r *engine.Run, set map[string]string, p *engine.StepPlan) (map[string]any, error) {
	t, s := k.t, k.s
	ch, err := t.change(s, set, set["MINIO_KMS_API_KEY"])
	if err != nil {
		return nil, err
	}
	p.ItemsLabel = "MinIO pods to restart"
	var pods, sets []string
	for _, pod := range s.pods {
		pods = append(pods, pod.Name)
	}
	sort.Strings(pods)
	p.Items = append(p.Items, pods...)
	for _, sts := range s.sets {
		sets = append(sets, sts.Name)
	}
	backup := t.String()
	if s.config != nil {
		backup += " and Secret " + s.config.Name
	}
	p.Actions = append(p.Actions, fmt.Sprintf("back up %s into the journal dir's backups/ (0600)", backup))
	p.Actions = append(p.Actions, fmt.Sprintf("set updateStrategy OnDelete on StatefulSet(s) %s for the duration of the cutover, so that Kubernetes rolls no pod one by one (restored once the pods are back)", strings.Join(sets, ", ")))
	change := r.Redact(t.describe(ch))
	if t.gitops {
		if ch.keySecret != nil {
			p.Actions = append(p.Actions, fmt.Sprintf("write runbook's own Secret %s holding the API key (no part of the owner's repository)", ch.keySecret.Name))
		}
		p.Actions = append(p.Actions, fmt.Sprintf("wait (watching %s and the Secrets it reads) until its owner has applied this change, which runbook does not write (gitops = true):", t))
	} else {
		p.Actions = append(p.Actions, fmt.Sprintf("write this change to %s (field manager %q; the Secret first):", t, fieldManager))
	}
	for _, l := range splitLines(strings.TrimRight(change, "\n")) {
		p.Actions = append(p.Actions, "    "+l)
	}
	p.Actions = append(p.Actions, "wait (watching) until every StatefulSet carries the change, so that every new pod gets the new environment")
	p.Actions = append(p.Actions, fmt.Sprintf("restart every MinIO pod at once: delete the %d pods %s together, watch until each is back and Ready on the new revision, then restore every StatefulSet's updateStrategy", len(pods), strings.Join(pods, ", ")))
	p.Sections = append(p.Sections,
		engine.PlanSection{Title: "Kubernetes change: " + t.String(), Body: change},
		engine.PlanSection{Title: "The same change where the resource is kept (Helm values, Git repository)", Body: r.Redact(t.gitopsEquivalent(ch))})
	p.Rollback = fmt.Sprintf("restore the saved %s and Secret(s), restart every pod at once the same way, and confirm AIStor reports KES and objects read again; refused once any object was written or changed after the cutover's restart (KES cannot read what the Key Manager sealed) unless forced", t)
	if t.gitops {
		p.Rollback = fmt.Sprintf("runbook does not write %s back (gitops = true: the owner's next sync would undo it): its owner reverts the change where it is kept (CHANGE.md, \"Rollback where the resource is kept\"); runbook holds the StatefulSets on OnDelete, waits (watching) until the live resource and Secrets carry again what it saved before the change, removes its own API-key Secret if it made one, restarts every pod at once the same way, and confirms AIStor reports KES and objects read again; refused once any object was written or changed after the cutover's restart (KES cannot read what the Key Manager sealed) unless forced", t)
		p.Sections = append(p.Sections, engine.PlanSection{Title: "Rollback where the resource is kept (gitops = true)", Body: t.gitopsRevert(s)})
	}
	p.Risks = append(p.Risks, "the MinIO pods restart together (MinIO requires the same environment on every node at start-up, cmd/bootstrap-peer-server.go): the object store answers nothing until they are back Ready; S3 clients with minio-go's default retries ride out about 4 to 8 seconds. The apply measures the window and reports it as the output unavailable_seconds")
	p.Risks = append(p.Risks, fmt.Sprintf("whoever keeps %s (a Helm release, a Git repository synced by Argo CD or Flux) must carry the same change (CHANGE.md, \"The same change where the resource is kept\"), or its next sync reverts it and the next pod restart brings back KES beside the Key Manager", t))
	if t.gitops && !t.operated() {
		p.Risks = append(p.Risks, fmt.Sprintf("the owner's sync writes the whole StatefulSet %s: if the manifest it applies sets updateStrategy RollingUpdate, the StatefulSet controller rolls the pods one by one onto the new environment before runbook restarts them together; commit updateStrategy OnDelete with the change (runbook restores the saved strategy after the restart only in the live object)", t.name))
	}
	if t.operated() {
		p.Risks = append(p.Risks, "the operator must leave the StatefulSets' updateStrategy as runbook sets it for the duration (OnDelete), or it rolls the pods one by one when it renders the new template")
	}
	return map[string]any{"kubernetes": t.String(), "spec_sha256": t.specDigest(s), "pods": pods}, nil
}

// Write backs up the resource and Secrets, holds every StatefulSet on
// OnDelete, writes the change (or waits for its owner, gitops = true) and
// returns once every StatefulSet carries it. Each move is checkpointed in
// attempt g.
func (k *k8sPlatform) Write(ctx context.Context, r *engine.Run, g int, set map[string]string) error {
	t, s, err := k.observe(ctx, r)
	if err != nil {
		return err
	}
	it := k8sItemsOf(g)
	// A recorded item that does not decode is an error here and below:
	// read as absent, a changed resource would be saved as the original,
	// or the wait for the new template would count from no generation.
	b, ok, err := it.backup.Get(r)
	if err != nil {
		return err
	}
	if !ok {
		if b, err = t.backup(ctx, r, s, genPrefix(g)); err != nil {
			return err
		}
		if err := it.backup.Put(r, b); err != nil {
			return err
		}
	}
	if !it.configured.Done(r) {
		// Before the change, so the StatefulSet controller never rolls the
		// pods one by one; again on a resume (it is idempotent).
		if err := t.setStrategies(ctx, r, s, nil); err != nil {
			return err
		}
	}
	if !it.written.Done(r) {
		if err := k.write(ctx, r, g, set); err != nil {
			return err
		}
	}
	if !it.configured.Done(r) {
		w, _, err := it.writing.Get(r)
		if err != nil {
			return err
		}
		if err := t.waitConfigured(ctx, r, k.wait, w.Generations, t.operated() && !b.KES); err != nil {
			return err
		}
		if err := it.configured.Put(r, struct{}{}); err != nil {
			return err
		}
	}
	return nil
}

func (k *k8sPlatform) write(ctx context.Context, r *engine.Run, g int, set map[string]string) error {
	t, s, err := k.observe(ctx, r)
	if err != nil {
		return err
	}
	it := k8sItemsOf(g)
	if !it.writing.Done(r) {
		if err := it.writing.Put(r, generations(s)); err != nil {
			return err
		}
	}
	if t.gitops {
		ch, err := t.change(s, set, set["MINIO_KMS_API_KEY"])
		if err != nil {
			return err
		}
		// runbook's own API-key Secret is no part of the owner's repository
		// (CHANGE.md says so): runbook writes it; the rest is the owner's.
		if ch.keySecret != nil {
			if err := t.writeKeySecret(ctx, ch.keySecret); err != nil {
				return err
			}
		}
		err = t.waitGitOps(ctx, r, k.wait, t.secretsRead(s), gitopsWait{
			what:    "applies the change",
			pending: func(ctx context.Context) string { return t.mismatch(ctx, set) },
			done:    fmt.Sprintf("%s carries the change", t),
			later: func(last string) error {
				return engine.WaitForOperator("%s does not carry the change yet (%s): apply it where the resource is kept (CHANGE.md, \"The same change where the resource is kept\"), let it sync, then run runbook resume; no pod was restarted", t, last)
			},
		})
		if err != nil {
			return err
		}
		return it.written.Put(r, struct{}{})
	}
	// A conflict is a newer version of an object (status updates count):
	// read everything again and compute the change from it (it is
	// idempotent, and keeps whatever else changed).
	var ch *k8sChange
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if s, err = t.observe(ctx); err != nil {
			return err
		}
		if ch, err = t.change(s, set, set["MINIO_KMS_API_KEY"]); err != nil {
			return err
		}
		return t.write(ctx, s, ch)
	})
	if err != nil {
		return err
	}
	r.Logf("wrote the change to %s: %s", t, strings.Join(ch.entries, "; "))
	return it.written.Put(r, struct{}{})
}

func generations(s *k8sState) k8sWriting {
	w := k8sWriting{Generations: map[string]int64{}}
	for _, sts := range s.sets {
		w.Generations[sts.Name] = sts.Generation
	}
	return w
}

// Restart deletes every MinIO pod at once, watches them back Ready on the
// StatefulSets' new revision, then gives every StatefulSet its own
// updateStrategy again (nothing is left to roll: every pod runs the
// current revision).
func (k *k8sPlatform) Restart(ctx context.Context, r *engine.Run, _ bool) error {
	t, _, err := k.observe(ctx, r)
	if err != nil {
		return err
	}
	if err := t.restartPods(ctx, r, k.wait); err != nil {
		return err
	}
	return k.restoreStrategies(ctx, r)
}

// restoreStrategies gives every StatefulSet the updateStrategy saved by the
// last attempt that backed it up.
func (k *k8sPlatform) restoreStrategies(ctx context.Context, r *engine.Run) error {
	for g := cutoverGen(r) + 1; g >= 0; g-- {
		// A backup that does not decode is an error: skipped, an earlier
		// attempt's strategies would be restored.
		b, ok, err := k8sItemsOf(g).backup.Get(r)
		if err != nil {
			return err
		}
		if ok {
			return k.t.restoreStrategies(ctx, r, b)
		}
	}
	return nil
}

// Restore writes attempt g's saved resource and Secrets back and returns
// once every StatefulSet carries them; without a restart to follow (the
// cutover had not restarted the pods) it gives the StatefulSets their
// updateStrategy back too.
func (k *k8sPlatform) Restore(ctx context.Context, r *engine.Run, g int) error {
	it := k8sItemsOf(g)
	// A recorded item that does not decode is an error here and below:
	// read as absent, nothing would be restored, or the wait for the saved
	// template would count from no generation.
	b, ok, err := it.backup.Get(r)
	if err != nil {
		return err
	}
	if !ok {
		r.Logf("nothing to restore: nothing was changed in Kubernetes")
		return nil
	}
	t, s, err := k.observe(ctx, r)
	if err != nil {
		return err
	}
	restarted := restartItemsOf(g, false).restart.Done(r)
	if !it.restored.Done(r) {
		if restarted {
			if err := t.setStrategies(ctx, r, s, nil); err != nil {
				return err
			}
		}
		if !it.restoring.Done(r) {
			if _, s, err = k.observe(ctx, r); err != nil {
				return err
			}
			if err := it.restoring.Put(r, generations(s)); err != nil {
				return err
			}
		}
		restore := t.restore
		if t.gitops {
			restore = func(ctx context.Context, r *engine.Run, b k8sBackup) error { return t.waitReverted(ctx, r, k.wait, b) }
		}
		if err := restore(ctx, r, b); err != nil {
			return err
		}
		if err := it.restored.Put(r, struct{}{}); err != nil {
			return err
		}
	}
	if !restarted {
		return t.restoreStrategies(ctx, r, b)
	}
	if !it.backConfigured.Done(r) {
		w, _, err := it.restoring.Get(r)
		if err != nil {
			return err
		}
		if err := t.waitConfigured(ctx, r, k.wait, w.Generations, t.operated() && !b.KES); err != nil {
			return err
		}
		if err := it.backConfigured.Put(r, struct{}{}); err != nil {
			return err
		}
	}
	return nil
}

// specDigest is the SHA-256 of what the cutover changes (the spec, or the
// StatefulSet's template, and the configuration Secret), binding a saved
// plan to it: status changes do not count.
func (t *k8sTarget) specDigest(s *k8sState) string {
	var parts []any
	if s.obj != nil {
		parts = append(parts, s.obj.Object["spec"])
	} else {
		parts = append(parts, s.sets[0].Spec.Template)
	}
	if s.config != nil {
		parts = append(parts, s.config.Data)
	}
	data, _ := json.Marshal(parts)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// describe is the change as it is written, in YAML (the API key appears
// only through the caller's redaction).
func (t *k8sTarget) describe(ch *k8sChange) string {
	var b strings.Builder
	if t.operated() {
		if ch.removedKES {
			fmt.Fprintf(&b, "# %s: remove spec.kes (the operator stops injecting MINIO_KMS_KES_* into the pods' config file)\n", t)
		}
		out, _ := yaml.Marshal(map[string]any{"spec": map[string]any{"env": ch.spec["env"]}})
		fmt.Fprintf(&b, "# %s: spec.env becomes\n%s", t, out)
	} else {
		out, _ := yaml.Marshal(map[string]any{"env": ch.env})
		fmt.Fprintf(&b, "# %s: the MinIO container's env becomes\n%s", t, out)
	}
	if ch.config != nil {
		fmt.Fprintf(&b, "# Secret %s: config.env loses every MINIO_KMS_* line and gets\nexport MINIO_KMS_API_KEY=%q\n", ch.config.Name, ch.apiKey)
	}
	if ch.keySecret != nil {
		fmt.Fprintf(&b, "# Secret %s (created or replaced), key MINIO_KMS_API_KEY: %s\n", ch.keySecret.Name, ch.apiKey)
	}
	return b.String()
}

// gitopsRevert is the rollback's part for the resource's owner (gitops =
// true): what its repository must get back, named (no value: config.env
// holds secrets), and what runbook does meanwhile.
func (t *k8sTarget) gitopsRevert(s *k8sState) string {
	var b strings.Builder
	fmt.Fprintf(&b, "runbook does not write %s back: the owner's next sync would undo it. Revert the change in the repository that keeps it (git revert of the commit that carried it) and let it sync, so that the live objects carry again what they carry now:\n", t)
	var names []string
	if t.operated() {
		if kes, ok, _ := unstructured.NestedMap(s.obj.Object, "spec", "kes"); ok {
			fmt.Fprintf(&b, "- spec.kes, as now (keyName %q)\n", fmt.Sprint(kes["keyName"]))
		}
		env, _, _ := unstructured.NestedSlice(s.obj.Object, "spec", "env")
		for _, e := range env {
			em, _ := e.(map[string]any)
			if n := fmt.Sprint(em["name"]); strings.HasPrefix(n, "MINIO_KMS_") {
				names = append(names, n)
			}
		}
		fmt.Fprintf(&b, "- spec.env: its MINIO_KMS_* entries as now (%s), none of the Key Manager's\n", orNone(names))
	} else {
		for _, e := range minioContainer(s.sets[0]).Env {
			if strings.HasPrefix(e.Name, "MINIO_KMS_") {
				names = append(names, e.Name)
			}
		}
		fmt.Fprintf(&b, "- the MinIO container's env: its MINIO_KMS_* entries as now (%s), none of the Key Manager's\n", orNone(names))
	}
	if s.config != nil {
		names = names[:0]
		for _, kv := range parseConfigEnv(string(s.config.Data["config.env"])) {
			if strings.HasPrefix(kv[0], "MINIO_KMS_") {
				names = append(names, kv[0])
			}
		}
		fmt.Fprintf(&b, "- Secret %s, config.env: its MINIO_KMS_* lines as now (%s), without MINIO_KMS_API_KEY\n", s.config.Name, orNone(names))
	}
	then := ""
	if !t.operated() || s.config == nil {
		then = fmt.Sprintf(" removes its own Secret %s if it made it (no part of the repository),", t.keySecretName())
	}
	fmt.Fprintf(&b, "runbook waits (watching, up to wait_timeout; runbook rollback again waits on) until they do, restarting nothing; then it%s restarts every pod at once and confirms AIStor reports KES.\n", then)
	return b.String()
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// gitopsEquivalent is the change as the resource's keeper would write it.
func (t *k8sTarget) gitopsEquivalent(ch *k8sChange) string {
	var b strings.Builder
	if t.operated() {
		fmt.Fprintf(&b, "In the %s manifest (or the chart values that render it), the same spec:\n", t.kind)
		if ch.removedKES {
			b.WriteString("  remove the whole kes: section\n")
		}
		b.WriteString("  in env:, remove every MINIO_KMS_* entry and add\n")
		for _, e := range ch.spec["env"].([]any) {
			em := e.(map[string]any)
			if name := fmt.Sprint(em["name"]); strings.HasPrefix(name, "MINIO_KMS_") {
				out, _ := yaml.Marshal([]any{em})
				for _, l := range splitLines(strings.TrimRight(string(out), "\n")) {
					b.WriteString("    " + l + "\n")
				}
			}
		}
	} else {
		fmt.Fprintf(&b, "In the Helm values of StatefulSet %s (environment: of the minio/minio chart, or the chart's equivalent):\n", t.name)
		b.WriteString("  remove every MINIO_KMS_KES_* variable and add\n")
		for _, e := range ch.env {
			if strings.HasPrefix(e.Name, "MINIO_KMS_") && e.ValueFrom == nil {
				fmt.Fprintf(&b, "    %s: %q\n", e.Name, e.Value)
			}
		}
	}
	if ch.config != nil {
		fmt.Fprintf(&b, "and in the configuration Secret %s's config.env (kept outside Git: a sealed or external Secret), remove every MINIO_KMS_* line and add export MINIO_KMS_API_KEY=\"k1:…\" (the identity's API key, runbook's journal secrets/)\n", ch.config.Name)
	}
	if ch.keySecret != nil {
		fmt.Fprintf(&b, "and MINIO_KMS_API_KEY from the Secret %s, key MINIO_KMS_API_KEY (kept outside Git: runbook writes it; a sealed or external Secret if Git keeps Secrets)\n", ch.keySecret.Name)
	}
	b.WriteString("Commit it before the cutover's restart: a later sync that does not carry it reverts the resource to KES, and the next pod restart brings KES back beside the Key Manager (MinIO then does not start).\n")
	return b.String()
}

// gitopsWait is what waitGitOps waits for: the owner applying the change
// (apply) or reverting it (rollback).
type gitopsWait struct {
	what    string                           // "applies the change", "reverts the change"
	pending func(ctx context.Context) string // what still differs; "" once the live objects carry it
	done    string                           // the log line once they do
	later   func(last string) error          // the error when wait ends first
}

// waitGitOps watches the resource and the Secrets it takes the KMS
// variables from (the owner may sync them in any order, or a controller
// may materialize a sealed or external Secret later) until w.pending says
// the owner's sync carries what is waited for. Every event of either has
// the live state read again.
func (t *k8sTarget) waitGitOps(ctx context.Context, r *engine.Run, wait time.Duration, secrets []string, w gitopsWait) error {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	type watched struct {
		lw  *cache.ListWatch
		obj runtime.Object
	}
	var ws []watched
	if t.operated() {
		res := t.dyn.Resource(t.gvr()).Namespace(t.ns)
		ws = append(ws, watched{&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				o.FieldSelector = "metadata.name=" + t.name
				return res.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				o.FieldSelector = "metadata.name=" + t.name
				return res.Watch(ctx, o)
			},
		}, &unstructured.Unstructured{}})
	} else {
		ws = append(ws, watched{cache.NewListWatchFromClient(t.client.AppsV1().RESTClient(), "statefulsets", t.ns, fields.OneTermEqualSelector("metadata.name", t.name)), &appsv1.StatefulSet{}})
	}
	for _, name := range secrets {
		ws = append(ws, watched{cache.NewListWatchFromClient(t.client.CoreV1().RESTClient(), "secrets", t.ns, fields.OneTermEqualSelector("metadata.name", name)), &corev1.Secret{}})
	}
	changed := make(chan struct{}, 1)
	ended := make(chan error, len(ws))
	for _, w := range ws {
		go func() {
			_, err := watchtools.UntilWithSync(wctx, w.lw, w.obj, nil, func(watch.Event) (bool, error) {
				select {
				case changed <- struct{}{}:
				default:
				}
				return false, nil
			})
			ended <- err
		}()
	}
	watching := t.String()
	if len(secrets) > 0 {
		watching += " and Secret(s) " + strings.Join(secrets, ", ")
	}
	r.Logf("waiting (watching %s) until its owner %s (gitops = true)", watching, w.what)
	last := "nothing seen yet"
	for {
		select {
		case <-changed:
			if last = w.pending(wctx); last == "" {
				r.Logf("%s", w.done)
				return nil
			}
		case err := <-ended:
			if wctx.Err() == nil {
				return fmt.Errorf("watch %s: %w", watching, err)
			}
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return w.later(last)
		}
	}
}

// mismatch is "" when the live resource carries set and nothing of KES,
// else what differs (no secret).
func (t *k8sTarget) mismatch(ctx context.Context, set map[string]string) string {
	s, err := t.observe(ctx)
	if err != nil {
		return err.Error()
	}
	vars, err := t.kmsVars(ctx, s)
	if err != nil {
		return err.Error()
	}
	got := map[string]string{}
	for _, v := range vars {
		if v.Unset {
			continue
		}
		if strings.HasPrefix(v.Name, "MINIO_KMS_KES_") {
			return fmt.Sprintf("%s still set, from %s", v.Name, v.Source)
		}
		got[v.Name] = v.Value
	}
	names := make([]string, 0, len(set))
	for k := range set {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if got[k] != set[k] {
			if k == "MINIO_KMS_API_KEY" {
				return k + " is not the identity's API key"
			}
			return fmt.Sprintf("%s is %q, not %q", k, got[k], set[k])
		}
	}
	return ""
}

// secretsRead names the Secrets the pods' KMS variables are read from:
// the configuration Secret and runbook's API-key Secret.
func (t *k8sTarget) secretsRead(s *k8sState) []string {
	var names []string
	if s.config != nil {
		names = append(names, s.config.Name)
	}
	if t.kind != "Tenant" {
		names = append(names, t.keySecretName())
	}
	return names
}

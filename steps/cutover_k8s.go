package steps

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	appsv1client "k8s.io/client-go/kubernetes/typed/apps/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/runbook-dev/runbook/engine"
)

// The cutover on Kubernetes (aistor { platform = "kubernetes" }) changes the
// resource that owns MinIO's environment through the Kubernetes API
// (docs/kubernetes.md, "What it does"):
//
//	Tenant (minio.min.io/v2, the MinIO Operator): the operator writes each
//	    pod's config file from its own KES injection (while spec.kes is
//	    set), spec.env and the configuration Secret's config.env. The change
//	    removes spec.kes and every MINIO_KMS_* entry, adds MINIO_KMS_SERVER,
//	    _ENCLAVE and _SSE_KEY to spec.env and the API key to config.env
//	    (operator v6 renders a secretKeyRef entry as an empty value,
//	    minio/operator#2279).
//	ObjectStore (aistor.min.io/v1, the AIStor Operator): the same, the API
//	    key in config.env when spec.configuration names a Secret, else a
//	    secretKeyRef entry to a Secret of runbook's.
//	StatefulSet (a plain Helm chart): the MinIO container's env, the API key
//	    as a secretKeyRef entry to a Secret of runbook's.
//
// None of these changes restarts MinIO by itself, or it rolls the pods one
// at a time, which MinIO's start-up check forbids for a KMS change
// (docs/domain.md, "Restarting a cluster"). So the cutover sets every StatefulSet's updateStrategy to
// OnDelete for its duration, writes the change, waits until the StatefulSets
// carry it, deletes every MinIO pod at once and watches them return Ready,
// then validates as on Linux and restores the updateStrategy.

// fieldManager names runbook's writes in the objects' managedFields.
const fieldManager = "runbook"

var (
	tenantGVR      = schema.GroupVersionResource{Group: "minio.min.io", Version: "v2", Resource: "tenants"}
	objectStoreGVR = schema.GroupVersionResource{Group: "aistor.min.io", Version: "v1", Resource: "objectstores"}
)

// k8sKinds maps the resource attribute's kind to the kind's name.
var k8sKinds = map[string]string{"tenant": "Tenant", "objectstore": "ObjectStore", "statefulset": "StatefulSet"}

// parseK8sResource reads "KIND/NAME".
func parseK8sResource(s string) (kind, name string, err error) {
	k, n, ok := strings.Cut(s, "/")
	kind = k8sKinds[strings.ToLower(k)]
	if !ok || kind == "" || n == "" || strings.Contains(n, "/") {
		return "", "", fmt.Errorf("resource %q: write it as KIND/NAME, KIND one of tenant (MinIO Operator), objectstore (AIStor Operator) or statefulset (a plain Helm chart), for example \"tenant/prod\"", s)
	}
	return kind, n, nil
}

func validateK8sConnection(d *engine.Decoded, cfg *aistorConfig) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("resource") {
		if cfg.Resource == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing resource", Detail: "With platform = \"kubernetes\" the cutover changes the resource that owns MinIO's environment: set resource = \"tenant/NAME\", \"objectstore/NAME\" or \"statefulset/NAME\", and namespace.", Subject: d.AttrRange("platform")})
		} else if _, _, err := parseK8sResource(cfg.Resource); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid resource", Detail: err.Error() + ".", Subject: d.AttrRange("resource")})
		}
	}
	if !d.Unknown("namespace") && cfg.Namespace == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing namespace", Detail: "With platform = \"kubernetes\" set namespace to the namespace of the resource.", Subject: d.AttrRange("platform")})
	}
	if cfg.Context != "" && cfg.Kubeconfig == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Context without kubeconfig", Detail: "context names a context of a kubeconfig file: set kubeconfig too, or leave both out to use the in-cluster service account.", Subject: d.AttrRange("context")})
	}
	return diags
}

// k8sTarget is the resource the cutover changes and the API it reaches it
// through.
type k8sTarget struct {
	kind, name, ns string
	gitops         bool
	api            string // how the API is reached, for messages
	client         k8sClient
	dyn            dynamic.Interface
}

// k8sClient holds the typed clients of the two API groups the cutover
// reads and changes (core/v1: Secrets, Pods; apps/v1: StatefulSets).
// Not the whole clientset: its every other group's client is linked and
// registered at start-up by every run, a migration's too.
type k8sClient struct {
	core corev1client.CoreV1Interface
	apps appsv1client.AppsV1Interface
}

func (c k8sClient) CoreV1() corev1client.CoreV1Interface { return c.core }
func (c k8sClient) AppsV1() appsv1client.AppsV1Interface { return c.apps }

// newK8sTarget connects to the API: the kubeconfig file and context of the
// aistor block, or the in-cluster service account (runbook run as a Job:
// docs/kubernetes.md).
func newK8sTarget(r *engine.Run, a *aistorConnection) (*k8sTarget, error) {
	kind, name, err := parseK8sResource(a.cfg.Resource)
	if err != nil {
		return nil, err
	}
	t := &k8sTarget{kind: kind, name: name, ns: a.cfg.Namespace, gitops: a.cfg.GitOps}
	var conf *rest.Config
	if a.cfg.Kubeconfig == "" {
		t.api = "the in-cluster service account"
		if conf, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("reach the Kubernetes API in-cluster: %w; outside a cluster set kubeconfig (and context) on the aistor block", err)
		}
	} else {
		path := r.Path(a.cfg.Kubeconfig)
		t.api = "kubeconfig " + a.cfg.Kubeconfig
		if a.cfg.Context != "" {
			t.api += ", context " + a.cfg.Context
		}
		rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: path}
		conf, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: a.cfg.Context}).ClientConfig()
		if err != nil {
			err = fmt.Errorf("load kubeconfig %s: %w", a.cfg.Kubeconfig, err)
			if a.cfg.Kubeconfig == "~" || strings.HasPrefix(a.cfg.Kubeconfig, "~/") {
				err = engine.WithHint(err, fmt.Sprintf("a path attribute does not expand ~: write kubeconfig = pathexpand(%q)", a.cfg.Kubeconfig))
			}
			return nil, err
		}
	}
	// The default (5 requests a second) would pace the watches and the
	// pods' deletion; the cutover makes a few dozen requests in all.
	conf.QPS, conf.Burst = 50, 100
	if conf.BearerToken != "" {
		r.AddSecret(conf.BearerToken)
	}
	if t.client.core, err = corev1client.NewForConfig(conf); err != nil {
		return nil, fmt.Errorf("make Kubernetes client: %w", err)
	}
	if t.client.apps, err = appsv1client.NewForConfig(conf); err != nil {
		return nil, fmt.Errorf("make Kubernetes client: %w", err)
	}
	if t.dyn, err = dynamic.NewForConfig(conf); err != nil {
		return nil, fmt.Errorf("make Kubernetes client: %w", err)
	}
	return t, nil
}

func (t *k8sTarget) String() string { return fmt.Sprintf("%s %s/%s", t.kind, t.ns, t.name) }

func (t *k8sTarget) gvr() schema.GroupVersionResource {
	if t.kind == "ObjectStore" {
		return objectStoreGVR
	}
	return tenantGVR
}

// operated reports whether an operator renders the pods' environment.
func (t *k8sTarget) operated() bool { return t.kind != "StatefulSet" }

// k8sState is what the API shows of the deployment.
type k8sState struct {
	obj    *unstructured.Unstructured // the Tenant or ObjectStore; nil for a StatefulSet
	config *corev1.Secret             // its configuration Secret, if any
	sets   []*appsv1.StatefulSet      // every pool's
	pods   []corev1.Pod               // every MinIO pod
}

// observe reads the resource, its configuration Secret, every pool's
// StatefulSet and their pods.
func (t *k8sTarget) observe(ctx context.Context) (*k8sState, error) {
	s := &k8sState{}
	if !t.operated() {
		sts, err := t.client.AppsV1().StatefulSets(t.ns).Get(ctx, t.name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t, err)
		}
		s.sets = []*appsv1.StatefulSet{sts}
	} else {
		obj, err := t.dyn.Resource(t.gvr()).Namespace(t.ns).Get(ctx, t.name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", t, err)
		}
		s.obj = obj
		if name, ok, _ := unstructured.NestedString(obj.Object, "spec", "configuration", "name"); ok && name != "" {
			if s.config, err = t.client.CoreV1().Secrets(t.ns).Get(ctx, name, metav1.GetOptions{}); err != nil {
				return nil, fmt.Errorf("read the configuration Secret of %s: %w", t, err)
			}
		}
		pools, _, _ := unstructured.NestedSlice(obj.Object, "spec", "pools")
		for _, p := range pools {
			pm, _ := p.(map[string]any)
			pool, _ := pm["name"].(string)
			// The operator names each pool's StatefulSet TENANT-POOL.
			sts, err := t.client.AppsV1().StatefulSets(t.ns).Get(ctx, t.name+"-"+pool, metav1.GetOptions{})
			if err != nil {
				return nil, fmt.Errorf("read the StatefulSet of pool %s of %s: %w", pool, t, err)
			}
			s.sets = append(s.sets, sts)
		}
		if len(s.sets) == 0 {
			return nil, fmt.Errorf("%s has no pools (spec.pools)", t)
		}
	}
	for _, sts := range s.sets {
		sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
		if err != nil {
			return nil, fmt.Errorf("StatefulSet %s: selector: %w", sts.Name, err)
		}
		pods, err := t.client.CoreV1().Pods(t.ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
		if err != nil {
			return nil, fmt.Errorf("list the pods of StatefulSet %s: %w", sts.Name, err)
		}
		s.pods = append(s.pods, pods.Items...)
	}
	return s, nil
}

// replicas is the number of MinIO pods the StatefulSets ask for.
func (s *k8sState) replicas() int {
	n := 0
	for _, sts := range s.sets {
		if sts.Spec.Replicas != nil {
			n += int(*sts.Spec.Replicas)
		} else {
			n++
		}
	}
	return n
}

// k8sVar is one MINIO_KMS_* variable and where the pods get it.
type k8sVar struct {
	Name   string
	Value  string
	Source string // for the plan: "spec.env", "Secret X config.env", ...
	// Unset: an optional secretKeyRef whose Secret or key does not exist,
	// which leaves the variable unset.
	Unset bool
}

// kmsVars lists where every MINIO_KMS_* variable of the pods comes from.
func (t *k8sTarget) kmsVars(ctx context.Context, s *k8sState) ([]k8sVar, error) {
	var vars []k8sVar
	if !t.operated() {
		c := minioContainer(s.sets[0])
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Name, "MINIO_KMS_") {
				continue
			}
			v := k8sVar{Name: e.Name, Value: e.Value, Source: fmt.Sprintf("StatefulSet %s container %s env", s.sets[0].Name, c.Name)}
			if ref := secretRef(e); ref != nil {
				optional := ref.Optional != nil && *ref.Optional
				v.Source += " " + refSource(ref.Name, ref.Key, optional)
				val, found, err := t.refValue(ctx, ref.Name, ref.Key, optional)
				if err != nil {
					return nil, err
				}
				v.Value, v.Unset = val, !found
			}
			vars = append(vars, v)
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil || ef.ConfigMapRef != nil {
				return nil, engine.Refusef("StatefulSet %s takes variables from envFrom, which the cutover does not edit: MINIO_KMS_KES_* set there would stay beside the Key Manager's and MinIO would not start; move MINIO_KMS_* into the container's env list and plan again", s.sets[0].Name)
			}
		}
		return vars, nil
	}
	if kes, ok, _ := unstructured.NestedMap(s.obj.Object, "spec", "kes"); ok {
		keyName, _ := kes["keyName"].(string)
		for _, n := range []string{"MINIO_KMS_KES_ENDPOINT", "MINIO_KMS_KES_CERT_FILE", "MINIO_KMS_KES_KEY_FILE", "MINIO_KMS_KES_CAPATH"} {
			vars = append(vars, k8sVar{Name: n, Source: "the operator's injection while spec.kes is set"})
		}
		vars = append(vars, k8sVar{Name: "MINIO_KMS_KES_KEY_NAME", Value: keyName, Source: "the operator's injection from spec.kes.keyName"})
	}
	env, _, _ := unstructured.NestedSlice(s.obj.Object, "spec", "env")
	for _, e := range env {
		em, _ := e.(map[string]any)
		name, _ := em["name"].(string)
		if !strings.HasPrefix(name, "MINIO_KMS_") {
			continue
		}
		v := k8sVar{Name: name, Source: "spec.env"}
		v.Value, _ = em["value"].(string)
		if _, ok := em["valueFrom"]; ok {
			v.Source += " (valueFrom)"
			// The AIStor Operator resolves a secretKeyRef entry; the MinIO
			// Operator (v6 and later) renders it empty (minio/operator#2279).
			// Read as a map: optional is a bool.
			ref, _, _ := unstructured.NestedMap(em, "valueFrom", "secretKeyRef")
			secret, _ := ref["name"].(string)
			key, _ := ref["key"].(string)
			optional, _ := ref["optional"].(bool)
			if t.kind == "ObjectStore" && secret != "" {
				v.Source = "spec.env " + refSource(secret, key, optional)
				val, found, err := t.refValue(ctx, secret, key, optional)
				if err != nil {
					return nil, err
				}
				v.Value, v.Unset = val, !found
			}
		}
		vars = append(vars, v)
	}
	if s.config != nil {
		for _, kv := range parseConfigEnv(string(s.config.Data["config.env"])) {
			if strings.HasPrefix(kv[0], "MINIO_KMS_") {
				vars = append(vars, k8sVar{Name: kv[0], Value: kv[1], Source: fmt.Sprintf("Secret %s config.env", s.config.Name)})
			}
		}
	}
	return vars, nil
}

// refValue is what a secretKeyRef gives the pods: the Secret's key. An
// optional reference whose Secret or key does not exist leaves the
// variable unset (found false), as the kubelet does; a Secret that cannot
// be read otherwise is an error.
func (t *k8sTarget) refValue(ctx context.Context, name, key string, optional bool) (value string, found bool, err error) {
	sec, err := t.client.CoreV1().Secrets(t.ns).Get(ctx, name, metav1.GetOptions{})
	if optional && apierrors.IsNotFound(err) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("read Secret %s: %w", name, err)
	}
	data, ok := sec.Data[key]
	if !ok && optional {
		return "", false, nil
	}
	return string(data), true, nil
}

// refSource says where a secretKeyRef points, for the plan: "(Secret S
// key K)", "(Secret S key K, optional)".
func refSource(secret, key string, optional bool) string {
	if optional {
		return fmt.Sprintf("(Secret %s key %s, optional)", secret, key)
	}
	return fmt.Sprintf("(Secret %s key %s)", secret, key)
}

func secretRef(e corev1.EnvVar) *corev1.SecretKeySelector {
	if e.ValueFrom != nil {
		return e.ValueFrom.SecretKeyRef
	}
	return nil
}

// minioContainer is the StatefulSet's MinIO container: the one named
// "minio", else the first.
func minioContainer(sts *appsv1.StatefulSet) *corev1.Container {
	cs := sts.Spec.Template.Spec.Containers
	for i := range cs {
		if cs[i].Name == "minio" {
			return &cs[i]
		}
	}
	return &cs[0]
}

// parseConfigEnv reads a config.env ("export K=\"V\"" lines, as the
// operators write and read it) into name/value pairs, in order.
func parseConfigEnv(s string) [][2]string {
	var out [][2]string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(strings.TrimPrefix(l, "export ")), "=")
		if !ok {
			continue
		}
		if uq, err := strconv.Unquote(v); err == nil {
			v = uq
		} else {
			v = strings.Trim(v, "'")
		}
		out = append(out, [2]string{strings.TrimSpace(k), v})
	}
	return out
}

// k8sChange is the change the cutover writes: the resource's new spec (a
// Tenant or ObjectStore) or MinIO container env (a StatefulSet), and the
// Secret that carries the API key.
type k8sChange struct {
	spec       map[string]any  // Tenant, ObjectStore
	env        []corev1.EnvVar // StatefulSet
	config     *corev1.Secret  // the configuration Secret with config.env changed
	keySecret  *corev1.Secret  // runbook's Secret holding the API key
	removedKES bool            // spec.kes was set
	entries    []string        // the entries set, for the plan (no secret)
	apiKey     string          // the API key written (a secret: redact)
}

// keySecretName is runbook's Secret for the API key (StatefulSet, an
// ObjectStore without configuration Secret).
func (t *k8sTarget) keySecretName() string { return t.name + "-kms-api-key" }

// change computes the change from the observed state: the MINIO_KMS_*
// entries set (apiKey may be a placeholder in a plan).
func (t *k8sTarget) change(s *k8sState, set map[string]string, apiKey string) (*k8sChange, error) {
	ch := &k8sChange{apiKey: apiKey}
	plain := []string{"MINIO_KMS_SERVER", "MINIO_KMS_ENCLAVE", "MINIO_KMS_SSE_KEY"}
	for _, n := range plain {
		ch.entries = append(ch.entries, n+"="+set[n])
	}
	if !t.operated() {
		c := minioContainer(s.sets[0])
		for _, e := range c.Env {
			if !strings.HasPrefix(e.Name, "MINIO_KMS_") {
				ch.env = append(ch.env, e)
			}
		}
		for _, n := range plain {
			ch.env = append(ch.env, corev1.EnvVar{Name: n, Value: set[n]})
		}
		ch.env = append(ch.env, corev1.EnvVar{Name: "MINIO_KMS_API_KEY", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: t.keySecretName()}, Key: "MINIO_KMS_API_KEY"}}})
		ch.keySecret = t.newKeySecret(apiKey)
		ch.entries = append(ch.entries, fmt.Sprintf("MINIO_KMS_API_KEY from Secret %s (key MINIO_KMS_API_KEY)", t.keySecretName()))
		return ch, nil
	}
	spec, _, _ := unstructured.NestedMap(s.obj.Object, "spec")
	spec = runtime.DeepCopyJSON(spec)
	if _, ok := spec["kes"]; ok {
		delete(spec, "kes")
		ch.removedKES = true
	}
	var env []any
	old, _ := spec["env"].([]any)
	for _, e := range old {
		if em, _ := e.(map[string]any); !strings.HasPrefix(fmt.Sprint(em["name"]), "MINIO_KMS_") {
			env = append(env, e)
		}
	}
	for _, n := range plain {
		env = append(env, map[string]any{"name": n, "value": set[n]})
	}
	switch {
	case s.config != nil:
		ch.config = s.config.DeepCopy()
		var b strings.Builder
		for _, kv := range parseConfigEnv(string(s.config.Data["config.env"])) {
			if !strings.HasPrefix(kv[0], "MINIO_KMS_") {
				fmt.Fprintf(&b, "export %s=%q\n", kv[0], kv[1])
			}
		}
		fmt.Fprintf(&b, "export MINIO_KMS_API_KEY=%q\n", apiKey)
		ch.config.Data = map[string][]byte{}
		for k, v := range s.config.Data {
			ch.config.Data[k] = v
		}
		ch.config.Data["config.env"] = []byte(b.String())
		ch.config.StringData = nil
		ch.entries = append(ch.entries, fmt.Sprintf("MINIO_KMS_API_KEY in Secret %s config.env (the operator renders a secretKeyRef entry of spec.env as an empty value: minio/operator#2279)", s.config.Name))
	case t.kind == "ObjectStore":
		env = append(env, map[string]any{"name": "MINIO_KMS_API_KEY", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": t.keySecretName(), "key": "MINIO_KMS_API_KEY"}}})
		ch.keySecret = t.newKeySecret(apiKey)
		ch.entries = append(ch.entries, fmt.Sprintf("MINIO_KMS_API_KEY from Secret %s (spec.env secretKeyRef, supported from AIStor Operator RELEASE.2025-10-16T16-46-38Z)", t.keySecretName()))
	default:
		return nil, engine.Refusef("%s has no configuration Secret (spec.configuration): the operator (v6 and later) renders a secretKeyRef entry of spec.env as an empty value (minio/operator#2279), so the Key Manager's API key has nowhere safe to go; create a configuration Secret with a config.env key, set spec.configuration.name to it, and plan again", t)
	}
	spec["env"] = env
	ch.spec = spec
	return ch, nil
}

func (t *k8sTarget) newKeySecret(apiKey string) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: t.keySecretName(), Namespace: t.ns, Labels: map[string]string{"app.kubernetes.io/managed-by": fieldManager}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"MINIO_KMS_API_KEY": []byte(apiKey)},
	}
}

// podsOf returns the pods that belong to sts (its selector).
func podsOf(sts *appsv1.StatefulSet, pods []corev1.Pod) []corev1.Pod {
	sel, err := metav1.LabelSelectorAsSelector(sts.Spec.Selector)
	if err != nil {
		return nil
	}
	var out []corev1.Pod
	for _, p := range pods {
		if sel.Matches(labels.Set(p.Labels)) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

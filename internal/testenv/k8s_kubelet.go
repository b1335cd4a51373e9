package testenv

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	kes "github.com/minio/kes-go"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// Resources of the two operators (their CRDs: testdata/k8s).
var (
	TenantGVR      = schema.GroupVersionResource{Group: "minio.min.io", Version: "v2", Resource: "tenants"}
	ObjectStoreGVR = schema.GroupVersionResource{Group: "aistor.min.io", Version: "v1", Resource: "objectstores"}
)

// KubernetesMinIOOptions configures StartKubernetesMinIO.
type KubernetesMinIOOptions struct {
	// Kind is who owns MinIO's environment: "Tenant" (the MinIO Operator),
	// "ObjectStore" (the AIStor Operator) or "StatefulSet" (a plain Helm
	// chart).
	Kind      string
	Name      string // the resource's name; default "minio"
	Namespace string // created; required
	Pods      int    // default 4
	Drives    int    // per pod; default 2
	// KES connects MinIO to a KES server with default key KeyName: through
	// spec.kes (Tenant, ObjectStore: the operator injects MINIO_KMS_KES_*
	// into each pod's config file, MinIO authenticating with a client
	// certificate) or MINIO_KMS_KES_* env entries (StatefulSet, the API key
	// from a Secret).
	KES     *KES
	KeyName string
	// PodManagementPolicy of the StatefulSet(s): "Parallel" (default) or
	// "OrderedReady".
	PodManagementPolicy string
	// NoConfigSecret (ObjectStore) leaves spec.configuration out: the
	// root credentials are spec.env entries given by secretKeyRef to the
	// Secret NAME-root, which the AIStor Operator resolves.
	NoConfigSecret bool
	CAFiles        []string // trusted by every pod's MinIO (certs/CAs)
	Host           *TestHost
	// Log receives one line per pod event (bound, started, ready, stopped,
	// and "MIXED" when pods of two KMS eras were Ready at once).
	Log string
}

// KubernetesMinIO is a MinIO deployment on the real control plane whose
// pods run as real MinIO processes. The harness plays the two parts that
// cannot run here:
//
//   - the node agent (a kubelet): it binds each pod of the deployment's
//     StatefulSet(s), starts one MinIO process per pod with the
//     environment the pod would see (env values, secretKeyRef values read
//     from their Secret when the container starts), marks the pod Ready
//     once MinIO serves, and on deletion stops the process and removes the
//     pod. Pod N runs cluster node N+1 (its drives survive the pod, as a
//     PersistentVolumeClaim's would).
//   - the operator (Tenant, ObjectStore): it creates one StatefulSet per
//     pool (Parallel, RollingUpdate), keeps its pod template in step with
//     the resource (spec.kes adds the KES client-certificate volume), and,
//     like the operator's sidecar, writes each pod's config file
//     (MINIO_CONFIG_ENV_FILE) from the operator's KES injection while
//     spec.kes is set, spec.env and the configuration Secret's config.env
//     ("export K=\"V\"" lines), at pod start and again on every change,
//     without restarting MinIO (docs/kubernetes.md, "What it does"). The Tenant renders a
//     spec.env entry given by valueFrom.secretKeyRef as an empty value, as
//     operator v6 does (minio/operator#2279); the ObjectStore resolves it.
//     Updating the StatefulSet it replaces the pod template only, leaving
//     updateStrategy as it finds it.
type KubernetesMinIO struct {
	K         *Kubernetes
	Kind      string
	Name      string
	Namespace string
	Cluster   *MinIOCluster
	// RootUser and RootPassword are the cluster's (set through the
	// configuration Secret or the root Secret).
	kes     *KES
	keyName string
	certs   string // KES client certificate and key files (Tenant, ObjectStore)
	logFile string

	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	pods   map[string]*podRun // by pod name
	logMu  sync.Mutex
	closed bool
}

// podRun is one pod's MinIO process.
type podRun struct {
	uid    string
	node   *MinIONode
	era    string
	ready  bool
	cancel chan struct{}
	proc   *process
	done   chan struct{}
	probe  string // the readiness probe's path
}

// StatefulSetName is the name of the StatefulSet of the deployment's only
// pool.
func (m *KubernetesMinIO) StatefulSetName() string {
	if m.Kind == "StatefulSet" {
		return m.Name
	}
	return m.Name + "-pool-0"
}

// ConfigSecretName is the configuration Secret (Tenant, ObjectStore).
func (m *KubernetesMinIO) ConfigSecretName() string { return m.Name + "-env-configuration" }

// StartKubernetesMinIO creates the deployment and runs its pods until the
// test ends; it returns once every pod is Ready.
func StartKubernetesMinIO(t TB, opts KubernetesMinIOOptions) (*KubernetesMinIO, error) {
	if opts.Name == "" {
		opts.Name = "minio"
	}
	if opts.Pods <= 0 {
		opts.Pods = 4
	}
	if opts.Drives <= 0 {
		opts.Drives = 2
	}
	if opts.PodManagementPolicy == "" {
		opts.PodManagementPolicy = string(appsv1.ParallelPodManagement)
	}
	switch opts.Kind {
	case "Tenant", "ObjectStore", "StatefulSet":
	default:
		return nil, fmt.Errorf("kind %q: want Tenant, ObjectStore or StatefulSet", opts.Kind)
	}
	if opts.KES != nil && opts.KeyName == "" {
		return nil, errors.New("KES given without KeyName")
	}
	k := AcquireKubernetes(t)
	c, err := newMinIOCluster(t, MinIOClusterOptions{Nodes: opts.Pods, DrivesPerNode: opts.Drives, CAFiles: opts.CAFiles, Host: opts.Host})
	if err != nil {
		return nil, err
	}
	c.assignEndpoints()
	m := &KubernetesMinIO{K: k, Kind: opts.Kind, Name: opts.Name, Namespace: opts.Namespace, Cluster: c, kes: opts.KES, keyName: opts.KeyName, logFile: opts.Log, pods: map[string]*podRun{}}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	t.Cleanup(m.stop)
	if m.kes != nil && m.Kind != "StatefulSet" {
		if m.certs, err = writeKESClientCert(filepath.Join(c.Dir, "kes-client"), m.kes); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Minute)
	defer cancel()
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: m.Namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", m.Namespace, err)
	}
	if err := m.createResource(ctx, opts); err != nil {
		return nil, err
	}
	if err := m.run(); err != nil {
		return nil, err
	}
	if m.Kind != "StatefulSet" {
		if err := m.reconcileOperator(ctx); err != nil {
			return nil, err
		}
	}
	for {
		if n := m.readyPods(); n == opts.Pods && m.serves() == nil {
			// A fresh deployment: wait for its IAM, as StartMinIOCluster does.
			adm, err := c.Admin()
			if err != nil {
				return nil, err
			}
			if err := IAMLoaded(adm, 3*time.Minute); err != nil {
				return nil, fmt.Errorf("%w (the pods' nodes are in %s)", err, c.Dir)
			}
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the %d pods of %s %s/%s are not all Ready after 5 minutes (%d are); see %s", opts.Pods, m.Kind, m.Namespace, m.Name, m.readyPods(), c.Dir)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeKESClientCert writes the client certificate that MinIO presents to
// KES, made from the identity of k's MinIO API key (the operator mounts
// such a certificate from a Secret).
func writeKESClientCert(dir string, k *KES) (string, error) {
	apiKey := k.APIKey
	if k.MinIOAPIKey != "" {
		apiKey = k.MinIOAPIKey
	}
	key, err := kes.ParseAPIKey(apiKey)
	if err != nil {
		return "", err
	}
	cert, err := kes.GenerateCertificate(key)
	if err != nil {
		return "", err
	}
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "client.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}), 0o600); err != nil {
		return "", err
	}
	return dir, os.WriteFile(filepath.Join(dir, "client.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func (m *KubernetesMinIO) createResource(ctx context.Context, opts KubernetesMinIOOptions) error {
	core := m.K.Client.CoreV1()
	c := m.Cluster
	if m.Kind == "StatefulSet" {
		secrets := map[string]string{"rootUser": c.RootUser, "rootPassword": c.RootPassword}
		if m.kes != nil {
			secrets["kesAPIKey"] = KESEnv(m.kes, m.keyName)["MINIO_KMS_KES_API_KEY"]
		}
		if _, err := core.Secrets(m.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.Name}, StringData: secrets}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s: %w", m.Name, err)
		}
		env := []corev1.EnvVar{secretEnv("MINIO_ROOT_USER", m.Name, "rootUser"), secretEnv("MINIO_ROOT_PASSWORD", m.Name, "rootPassword")}
		if m.kes != nil {
			kv := KESEnv(m.kes, m.keyName)
			env = append(env,
				corev1.EnvVar{Name: "MINIO_KMS_KES_ENDPOINT", Value: kv["MINIO_KMS_KES_ENDPOINT"]},
				corev1.EnvVar{Name: "MINIO_KMS_KES_KEY_NAME", Value: m.keyName},
				corev1.EnvVar{Name: "MINIO_KMS_KES_CAPATH", Value: kv["MINIO_KMS_KES_CAPATH"]},
				secretEnv("MINIO_KMS_KES_API_KEY", m.Name, "kesAPIKey"))
		}
		sts := m.statefulSet(m.Name, map[string]string{"app.kubernetes.io/name": "minio", "app.kubernetes.io/instance": m.Name}, env, nil, opts.PodManagementPolicy)
		// Helm's chart rolls the pods on a values change through a checksum
		// annotation on the template.
		sts.Spec.Template.Annotations = map[string]string{"checksum/config": "initial"}
		_, err := m.K.Client.AppsV1().StatefulSets(m.Namespace).Create(ctx, sts, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create StatefulSet %s: %w", m.Name, err)
		}
		return nil
	}
	spec := map[string]any{
		"pools":         []any{map[string]any{"name": "pool-0", "servers": int64(len(c.Nodes)), "volumesPerServer": int64(c.drives)}},
		"configuration": map[string]any{"name": m.ConfigSecretName()},
		"env":           []any{map[string]any{"name": "MINIO_BROWSER", "value": "off"}},
	}
	if opts.NoConfigSecret {
		if m.Kind != "ObjectStore" {
			return fmt.Errorf("NoConfigSecret: only an ObjectStore resolves secretKeyRef entries of spec.env")
		}
		root := m.Name + "-root"
		if _, err := core.Secrets(m.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: root}, StringData: map[string]string{"rootUser": c.RootUser, "rootPassword": c.RootPassword}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s: %w", root, err)
		}
		delete(spec, "configuration")
		spec["env"] = []any{
			map[string]any{"name": "MINIO_BROWSER", "value": "off"},
			map[string]any{"name": "MINIO_ROOT_USER", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": root, "key": "rootUser"}}},
			map[string]any{"name": "MINIO_ROOT_PASSWORD", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": root, "key": "rootPassword"}}},
		}
	} else {
		conf := fmt.Sprintf("export MINIO_ROOT_USER=%q\nexport MINIO_ROOT_PASSWORD=%q\n", c.RootUser, c.RootPassword)
		if _, err := core.Secrets(m.Namespace).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: m.ConfigSecretName()}, StringData: map[string]string{"config.env": conf}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s: %w", m.ConfigSecretName(), err)
		}
	}
	if m.kes != nil {
		spec["kes"] = map[string]any{"image": "quay.io/minio/kes:2024-06-17T15-47-05Z", "replicas": int64(1), "keyName": m.keyName, "kesSecret": map[string]any{"name": m.Name + "-kes-configuration"}}
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	obj.SetAPIVersion(m.gvr().GroupVersion().String())
	obj.SetKind(m.Kind)
	obj.SetName(m.Name)
	if _, err := m.K.Dynamic.Resource(m.gvr()).Namespace(m.Namespace).Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create %s %s: %w", m.Kind, m.Name, err)
	}
	// The operator's StatefulSet; its template follows the resource (reconcileOperator).
	labels := map[string]string{"v1.min.io/tenant": m.Name, "v1.min.io/pool": "pool-0"}
	sts := m.statefulSet(m.StatefulSetName(), labels, []corev1.EnvVar{{Name: "MINIO_CONFIG_ENV_FILE", Value: "config.env"}}, m.kesVolumes(m.kes != nil), opts.PodManagementPolicy)
	if _, err := m.K.Client.AppsV1().StatefulSets(m.Namespace).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create StatefulSet %s: %w", sts.Name, err)
	}
	return nil
}

func (m *KubernetesMinIO) gvr() schema.GroupVersionResource {
	if m.Kind == "ObjectStore" {
		return ObjectStoreGVR
	}
	return TenantGVR
}

// kesVolumes is what spec.kes adds to the operator's pod template: the
// volume of MinIO's KES client certificate.
func (m *KubernetesMinIO) kesVolumes(hasKES bool) []corev1.Volume {
	if !hasKES {
		return nil
	}
	return []corev1.Volume{{Name: "kes-client-cert", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: m.Name + "-kes-client-tls"}}}}
}

func secretEnv(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key}}}
}

func (m *KubernetesMinIO) statefulSet(name string, labels map[string]string, env []corev1.EnvVar, volumes []corev1.Volume, policy string) *appsv1.StatefulSet {
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/minio/health/ready", Port: intstr.FromInt32(9000), Scheme: corev1.URISchemeHTTPS}}, PeriodSeconds: 5}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            ptr.To(int32(len(m.Cluster.Nodes))),
			Selector:            &metav1.LabelSelector{MatchLabels: labels},
			ServiceName:         name + "-hl",
			PodManagementPolicy: appsv1.PodManagementPolicyType(policy),
			UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name: "minio", Image: "quay.io/minio/minio:RELEASE.2025-02-07T23-21-09Z",
						Args: []string{"server", "--certs-dir", "/tmp/certs"}, Env: env,
						ReadinessProbe: probe, LivenessProbe: probe,
					}},
					Volumes: volumes,
				},
			},
		},
	}
}

// run starts the informers of the node agent and the operator.
func (m *KubernetesMinIO) run() error {
	f := informers.NewSharedInformerFactoryWithOptions(m.K.Client, 0, informers.WithNamespace(m.Namespace))
	pods := f.Core().V1().Pods().Informer()
	_, err := pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { m.podChanged(o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { m.podChanged(o.(*corev1.Pod)) },
		DeleteFunc: func(o any) {
			if p, ok := o.(*corev1.Pod); ok {
				m.podGone(p.Name, string(p.UID))
			} else if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				if p, ok := d.Obj.(*corev1.Pod); ok {
					m.podGone(p.Name, string(p.UID))
				}
			}
		},
	})
	if err != nil {
		return err
	}
	if m.Kind != "StatefulSet" {
		// The operator: any change of the resource or a Secret re-renders.
		reconcile := cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { m.operatorEvent() },
			UpdateFunc: func(any, any) { m.operatorEvent() },
		}
		if _, err := f.Core().V1().Secrets().Informer().AddEventHandler(reconcile); err != nil {
			return err
		}
		df := dynamicinformer.NewFilteredDynamicSharedInformerFactory(m.K.Dynamic, 0, m.Namespace, nil)
		if _, err := df.ForResource(m.gvr()).Informer().AddEventHandler(reconcile); err != nil {
			return err
		}
		df.Start(m.ctx.Done())
	}
	f.Start(m.ctx.Done())
	return nil
}

// operatorEvent reconciles in the background; errors go to the pod log.
func (m *KubernetesMinIO) operatorEvent() {
	go func() {
		if err := m.reconcileOperator(m.ctx); err != nil && m.ctx.Err() == nil {
			m.logf("operator: %v", err)
		}
	}()
}

var operatorMu sync.Mutex // one reconcile at a time

// reconcileOperator brings the StatefulSet's pod template in step with the
// resource and rewrites every running pod's config file.
func (m *KubernetesMinIO) reconcileOperator(ctx context.Context) error {
	operatorMu.Lock()
	defer operatorMu.Unlock()
	obj, err := m.K.Dynamic.Resource(m.gvr()).Namespace(m.Namespace).Get(ctx, m.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	_, hasKES, _ := unstructured.NestedMap(obj.Object, "spec", "kes")
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		sts, err := m.K.Client.AppsV1().StatefulSets(m.Namespace).Get(ctx, m.StatefulSetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := m.kesVolumes(hasKES)
		if len(sts.Spec.Template.Spec.Volumes) == len(want) {
			return nil
		}
		sts.Spec.Template.Spec.Volumes = want
		_, err = m.K.Client.AppsV1().StatefulSets(m.Namespace).Update(ctx, sts, metav1.UpdateOptions{FieldManager: "test-operator"})
		return err
	})
	if err != nil {
		return fmt.Errorf("update StatefulSet %s: %w", m.StatefulSetName(), err)
	}
	conf, err := m.renderConfig(ctx, obj)
	if err != nil {
		return err
	}
	for _, n := range m.Cluster.Nodes {
		if err := os.WriteFile(filepath.Join(n.Dir, "config.env"), []byte(conf), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// renderConfig is the pods' config file as the operator writes it: the
// KES variables it injects while spec.kes is set, then spec.env, then the
// configuration Secret's config.env (a later source wins).
func (m *KubernetesMinIO) renderConfig(ctx context.Context, obj *unstructured.Unstructured) (string, error) {
	vars := map[string]string{}
	if kesSpec, ok, _ := unstructured.NestedMap(obj.Object, "spec", "kes"); ok && m.kes != nil {
		keyName, _ := kesSpec["keyName"].(string)
		vars["MINIO_KMS_KES_ENDPOINT"] = m.kes.URL
		vars["MINIO_KMS_KES_CERT_FILE"] = filepath.Join(m.certs, "client.crt")
		vars["MINIO_KMS_KES_KEY_FILE"] = filepath.Join(m.certs, "client.key")
		vars["MINIO_KMS_KES_CAPATH"] = m.kes.CAFile
		vars["MINIO_KMS_KES_KEY_NAME"] = keyName
	}
	env, _, _ := unstructured.NestedSlice(obj.Object, "spec", "env")
	for _, e := range env {
		em, _ := e.(map[string]any)
		name, _ := em["name"].(string)
		value, _ := em["value"].(string)
		if ref, ok, _ := unstructured.NestedMap(em, "valueFrom", "secretKeyRef"); ok && m.Kind == "ObjectStore" {
			secret, _ := ref["name"].(string)
			key, _ := ref["key"].(string)
			optional, _ := ref["optional"].(bool)
			s, err := m.K.Client.CoreV1().Secrets(m.Namespace).Get(ctx, secret, metav1.GetOptions{})
			if optional && apierrors.IsNotFound(err) {
				continue // an optional reference to nothing leaves it unset
			}
			if err != nil {
				return "", fmt.Errorf("spec.env %s: %w", name, err)
			}
			data, ok := s.Data[key]
			if !ok && optional {
				continue
			}
			value = string(data)
		}
		// Tenant (operator v6): a valueFrom entry is written with its
		// (empty) value.
		vars[name] = value
	}
	if name, ok, _ := unstructured.NestedString(obj.Object, "spec", "configuration", "name"); ok {
		s, err := m.K.Client.CoreV1().Secrets(m.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("configuration Secret %s: %w", name, err)
		}
		for _, l := range strings.Split(string(s.Data["config.env"]), "\n") {
			l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "export "))
			k, v, ok := strings.Cut(l, "=")
			if !ok || strings.HasPrefix(k, "#") {
				continue
			}
			if uq, err := strconv.Unquote(v); err == nil {
				v = uq
			}
			vars[k] = v
		}
	}
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%q\n", k, vars[k])
	}
	return b.String(), nil
}

// podChanged is the node agent's answer to a pod event.
func (m *KubernetesMinIO) podChanged(p *corev1.Pod) {
	if p.DeletionTimestamp != nil {
		go m.stopPod(p)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	if run, ok := m.pods[p.Name]; ok && run.uid == string(p.UID) {
		return
	}
	if _, ok := m.pods[p.Name]; ok {
		return // the pod of the same name before it is still stopping
	}
	i := strings.LastIndex(p.Name, "-")
	n, err := strconv.Atoi(p.Name[i+1:])
	if err != nil || n >= len(m.Cluster.Nodes) {
		m.logf("%s: no node for this pod", p.Name)
		return
	}
	run := &podRun{uid: string(p.UID), node: m.Cluster.Nodes[n], cancel: make(chan struct{}), done: make(chan struct{}), probe: "/minio/health/live"}
	if rp := p.Spec.Containers[0].ReadinessProbe; rp != nil && rp.HTTPGet != nil {
		run.probe = rp.HTTPGet.Path
	}
	m.pods[p.Name] = run
	go m.runPod(p, run)
}

// runPod binds the pod, starts its MinIO and marks it Ready.
func (m *KubernetesMinIO) runPod(p *corev1.Pod, run *podRun) {
	defer close(run.done)
	ctx := m.ctx
	pods := m.K.Client.CoreV1().Pods(m.Namespace)
	if p.Spec.NodeName == "" {
		b := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: p.Name, UID: p.UID}, Target: corev1.ObjectReference{Kind: "Node", Name: "runbook-test-node"}}
		if err := pods.Bind(ctx, b, metav1.CreateOptions{}); err != nil {
			m.logf("%s: bind: %v", p.Name, err)
			return
		}
	}
	env, err := m.podEnv(ctx, p)
	if err != nil {
		m.logf("%s: container env: %v", p.Name, err)
		return
	}
	if m.Kind != "StatefulSet" {
		// The sidecar's first rendering, before MinIO starts.
		if err := m.reconcileOperator(ctx); err != nil {
			m.logf("%s: render config: %v", p.Name, err)
			return
		}
	}
	run.era = m.eraOf(env, run.node)
	m.logf("%s: started (revision %s, %s)", p.Name, p.Labels[appsv1.ControllerRevisionHashLabelKey], run.era)
	proc, err := m.startNode(run, env)
	if err != nil {
		select {
		case <-run.cancel:
			m.logf("%s: stopped before it was ready", p.Name)
		default:
			m.logf("%s: MinIO did not start: %v", p.Name, err)
		}
		return
	}
	m.mu.Lock()
	run.proc = proc
	mixed := ""
	for name, o := range m.pods {
		if o != run && o.ready && o.era != run.era {
			mixed += fmt.Sprintf(" %s (%s)", name, o.era)
		}
	}
	run.ready = true
	m.mu.Unlock()
	if mixed != "" {
		m.logf("MIXED: %s Ready on %s while Ready on another KMS:%s", p.Name, run.era, mixed)
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil || string(cur.UID) != run.uid {
			return err
		}
		now := metav1.Now()
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP = m.Cluster.host.Addr
		cur.Status.HostIP = m.Cluster.host.Addr
		cur.Status.StartTime = &now
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		}
		cur.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "minio", Ready: true, Started: ptr.To(true), Image: cur.Spec.Containers[0].Image, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil && ctx.Err() == nil {
		m.logf("%s: mark Ready: %v", p.Name, err)
		return
	}
	m.logf("%s: ready (%s)", p.Name, run.era)
}

// startNode runs the pod's node with env; it gives up when the pod is
// deleted before MinIO serves.
func (m *KubernetesMinIO) startNode(run *podRun, env []string) (*process, error) {
	c, n := m.Cluster, run.node
	tr, err := c.transport()
	if err != nil {
		return nil, err
	}
	// Ready as the kubelet judges it: the readiness probe answers 200
	// (MinIO's /minio/health/ready does so before its peers are up,
	// cmd/healthcheck-handler.go).
	ready := httpOK(&http.Client{Transport: tr, Timeout: 10 * time.Second}, n.URL+run.probe, "")
	env = append(append(baseEnv("MINIO_"), env...), "MINIO_BROWSER=off", "MINIO_UPDATE=off", "MINIO_CI_CD=1", "HOME="+n.Dir)
	path, args := c.host.Command(c.bin, append([]string{"server", "--certs-dir", c.CertsDir, "--address", n.Endpoint}, c.args...)...)
	n.mu.Lock()
	defer n.mu.Unlock()
	var cancelled error
	proc, err := startProcess(procSpec{
		name: "minio " + n.Name, path: path, args: args, env: env, dir: n.Dir, logFile: n.LogFile,
		ready: func() error {
			select {
			case <-run.cancel:
				cancelled = errors.New("pod deleted")
				return nil
			default:
				return ready()
			}
		},
		readyTimeout: 5 * time.Minute,
	})
	if err == nil && cancelled != nil {
		proc.stop()
		return nil, cancelled
	}
	n.proc = proc
	return proc, err
}

// podEnv is the container's environment as the kubelet sets it: values,
// and secretKeyRef values read from their Secret now.
func (m *KubernetesMinIO) podEnv(ctx context.Context, p *corev1.Pod) ([]string, error) {
	var env []string
	for _, e := range p.Spec.Containers[0].Env {
		v := e.Value
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			ref := e.ValueFrom.SecretKeyRef
			optional := ref.Optional != nil && *ref.Optional
			s, err := m.K.Client.CoreV1().Secrets(m.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if optional && apierrors.IsNotFound(err) {
				continue // the kubelet leaves it unset
			}
			if err != nil {
				return nil, fmt.Errorf("%s: Secret %s: %w", e.Name, ref.Name, err)
			}
			data, ok := s.Data[ref.Key]
			if !ok && optional {
				continue
			}
			if !ok {
				return nil, fmt.Errorf("%s: Secret %s has no key %s", e.Name, ref.Name, ref.Key)
			}
			v = string(data)
		}
		env = append(env, e.Name+"="+v)
	}
	return env, nil
}

// eraOf names the KMS a node starts with: "KES", "Key Manager", or both.
func (m *KubernetesMinIO) eraOf(env []string, n *MinIONode) string {
	all := strings.Join(env, "\n")
	if data, err := os.ReadFile(filepath.Join(n.Dir, "config.env")); err == nil && m.Kind != "StatefulSet" {
		all += "\n" + strings.ReplaceAll(string(data), "export ", "")
	}
	kesEra := strings.Contains(all, "\nMINIO_KMS_KES_ENDPOINT=") || strings.HasPrefix(all, "MINIO_KMS_KES_ENDPOINT=")
	kmEra := strings.Contains(all, "\nMINIO_KMS_SERVER=") || strings.HasPrefix(all, "MINIO_KMS_SERVER=")
	switch {
	case kesEra && kmEra:
		return "KES and Key Manager"
	case kmEra:
		return "Key Manager"
	case kesEra:
		return "KES"
	}
	return "no KMS"
}

// stopPod is the kubelet's graceful deletion: stop the process, then
// remove the pod.
func (m *KubernetesMinIO) stopPod(p *corev1.Pod) {
	m.mu.Lock()
	run, ok := m.pods[p.Name]
	if ok && run.uid == string(p.UID) {
		select {
		case <-run.cancel:
		default:
			close(run.cancel)
		}
	}
	m.mu.Unlock()
	if ok && run.uid == string(p.UID) {
		<-run.done
		// This pod's own process: a successor on the same node may run by
		// the time a late event gets here.
		if run.proc != nil {
			run.proc.stop()
		}
		m.logf("%s: stopped", p.Name)
	}
	err := m.K.Client.CoreV1().Pods(m.Namespace).Delete(context.WithoutCancel(m.ctx), p.Name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(0)), Preconditions: &metav1.Preconditions{UID: &p.UID}})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && m.ctx.Err() == nil {
		m.logf("%s: remove: %v", p.Name, err)
	}
}

// podGone forgets a pod once the API server removed it.
func (m *KubernetesMinIO) podGone(name, uid string) {
	m.mu.Lock()
	run, ok := m.pods[name]
	if ok && run.uid == uid {
		delete(m.pods, name)
	}
	m.mu.Unlock()
	if ok && run.uid == uid {
		select {
		case <-run.cancel:
		default:
			close(run.cancel)
		}
		<-run.done
		if run.proc != nil {
			run.proc.stop()
		}
	}
	// A successor may have been announced while this one was stopping.
	if p, err := m.K.Client.CoreV1().Pods(m.Namespace).Get(m.ctx, name, metav1.GetOptions{}); err == nil {
		m.podChanged(p)
	}
}

// serves reports whether the deployment answers S3 requests (every pod
// Ready does not mean the erasure sets have found each other yet).
func (m *KubernetesMinIO) serves() error {
	c := m.Cluster
	tr, err := c.transport()
	if err != nil {
		return err
	}
	s3, err := minio.New(c.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(c.RootUser, c.RootPassword, ""), Secure: true, Transport: tr})
	if err != nil {
		return err
	}
	return minioReady(c.URL, &http.Client{Transport: tr, Timeout: 10 * time.Second}, s3)()
}

func (m *KubernetesMinIO) readyPods() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, r := range m.pods {
		if r.ready {
			n++
		}
	}
	return n
}

func (m *KubernetesMinIO) logf(format string, args ...any) {
	line := time.Now().UTC().Format("15:04:05.000") + " " + fmt.Sprintf(format, args...) + "\n"
	m.logMu.Lock()
	defer m.logMu.Unlock()
	if m.logFile == "" {
		return
	}
	if f, err := os.OpenFile(m.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		_, _ = f.WriteString(line)
		f.Close()
	}
}

// stop ends the agent and the operator and every pod's process.
func (m *KubernetesMinIO) stop() {
	m.mu.Lock()
	m.closed = true
	runs := make([]*podRun, 0, len(m.pods))
	for _, r := range m.pods {
		runs = append(runs, r)
		select {
		case <-r.cancel:
		default:
			close(r.cancel)
		}
	}
	m.mu.Unlock()
	// No namespace controller runs to empty a deleted namespace: deleting
	// the StatefulSet stops the controller from making more pods for it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = m.K.Client.AppsV1().StatefulSets(m.Namespace).Delete(ctx, m.StatefulSetName(), metav1.DeleteOptions{})
	m.cancel()
	for _, r := range runs {
		<-r.done
	}
	m.Cluster.Stop()
}

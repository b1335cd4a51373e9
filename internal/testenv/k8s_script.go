package testenv

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// cmdK8sMinIO is the script command
//
//	k8s-minio -kind Tenant|ObjectStore|StatefulSet [-pods N] [-kes] [-key NAME] [-policy Parallel|OrderedReady] [-no-config]
//
// a MinIO deployment of N pods (default 4) on the process's Kubernetes
// control plane (AcquireKubernetes), its pods run by the node agent of
// KubernetesMinIO as real MinIO processes in the script's test host
// (test-host). -kes connects it to the script's KES server (kes-server
// -netns; key NAME, default "minio-default-key", created if missing):
// through spec.kes for a Tenant or ObjectStore, MINIO_KMS_KES_* env entries
// for a StatefulSet. -no-config (ObjectStore) leaves the configuration
// Secret out: the root credentials are spec.env entries by secretKeyRef.
// The CA of the script's Key Manager (key-manager -netns) is trusted. Sets
// KUBECONFIG (an admin), K8S_USER_KUBECONFIG (user runbook-user, no rights
// until bound), K8S_NAMESPACE, K8S_NAME (the resource), K8S_STATEFULSET,
// K8S_CONFIG_SECRET (Tenant, ObjectStore), K8S_LOG (the pods' events),
// MINIO_URL (pod 0's), MINIO_ENDPOINT, MINIO_CA, MINIO_ROOT_USER,
// MINIO_ROOT_PASSWORD and MINIO_NODES.
func cmdK8sMinIO(ts *testscript.TestScript, neg bool, args []string) {
	fs := newFlags(ts, "k8s-minio", neg)
	kind := fs.String("kind", "", "Tenant, ObjectStore or StatefulSet")
	pods := fs.Int("pods", 4, "pods")
	withKES := fs.Bool("kes", false, "connect to the script's KES server")
	key := fs.String("key", "minio-default-key", "default KMS key")
	policy := fs.String("policy", "Parallel", "podManagementPolicy")
	noConfig := fs.Bool("no-config", false, "ObjectStore without configuration Secret")
	parseFlags(ts, fs, args)
	st := stateOf(ts)
	opts := KubernetesMinIOOptions{Kind: *kind, Pods: *pods, PodManagementPolicy: *policy, NoConfigSecret: *noConfig, Host: scriptHost(ts, "k8s-minio"), Log: ts.MkAbs("k8s-pods.log")}
	opts.Namespace = "rb-" + strings.ToLower(randomToken()[:10])
	if *withKES {
		if st.kes == nil || st.kes.host != opts.Host {
			ts.Fatalf("k8s-minio -kes: run kes-server -netns first (the pods reach KES in the test host)")
		}
		ensureKESKey(ts, "k8s-minio", st.kes, *key)
		opts.KES, opts.KeyName = st.kes, *key
	}
	if st.km != nil {
		if st.km.host != opts.Host {
			ts.Fatalf("k8s-minio: the script's Key Manager runs outside the test host: start it with key-manager -netns")
		}
		opts.CAFiles = append(opts.CAFiles, st.km.CAFile)
	}
	start := time.Now()
	m, err := StartKubernetesMinIO(scriptTB{ts}, opts)
	if err != nil {
		ts.Fatalf("k8s-minio: %v", err)
	}
	ts.Logf("k8s-minio: %s %s/%s with %d pods Ready in %s", m.Kind, m.Namespace, m.Name, *pods, time.Since(start).Round(time.Millisecond))
	c := m.Cluster
	for k, v := range map[string]string{
		"KUBECONFIG": m.K.Kubeconfig, "K8S_USER_KUBECONFIG": m.K.UserKubeconfig,
		"K8S_NAMESPACE": m.Namespace, "K8S_NAME": m.Name, "K8S_STATEFULSET": m.StatefulSetName(),
		"K8S_CONFIG_SECRET": m.ConfigSecretName(), "K8S_LOG": opts.Log,
		"MINIO_URL": c.URL, "MINIO_ENDPOINT": c.Endpoint, "MINIO_CA": c.CAFile,
		"MINIO_ROOT_USER": c.RootUser, "MINIO_ROOT_PASSWORD": c.RootPassword, "MINIO_NODES": strconv.Itoa(len(c.Nodes)),
	} {
		ts.Setenv(k, v)
	}
}

// ensureKESKey creates key at k unless it exists (MinIO's default key), for
// script command cmd.
func ensureKESKey(ts *testscript.TestScript, cmd string, k *KES, key string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kc, err := k.client()
	if err != nil {
		ts.Fatalf("%s: %v", cmd, err)
	}
	if err := kc.CreateKey(ctx, key); err != nil && !strings.Contains(err.Error(), "already exists") {
		ts.Fatalf("%s: create key %s at KES: %v", cmd, key, err)
	}
}

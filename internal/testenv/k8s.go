package testenv

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/runbook-dev/runbook/internal/toolcache"
)

// Versions of the Kubernetes control plane, as pinned by tools/kubernetes
// and tools/etcd (scripts/build-real-servers.sh, internal/toolcache).
var (
	KubernetesVersion = toolcache.KubeAPIServer.Version
	EtcdVersion       = toolcache.Etcd.Version
)

var (
	binEtcd      = toolcache.Etcd
	binAPIServer = toolcache.KubeAPIServer
	binKCM       = toolcache.KubeControllerManager
)

// The CRDs of the resources the cutover changes: minimal definitions written
// here (the vendors' are not ours to copy), with the vendors' API groups,
// versions and kinds and only the fields runbook reads or writes.
//
//go:embed testdata/k8s/*.yaml
var crdFiles embed.FS

// Kubernetes is a real control plane on loopback: etcd, kube-apiserver and
// kube-controller-manager running only the StatefulSet controller (so
// RollingUpdate, OnDelete and Parallel behave as in a cluster). No kubelet
// and no scheduler run: KubernetesPods plays the node agent and the
// operator. Authentication is by static bearer tokens: Kubeconfig is an
// admin (group system:masters); UserKubeconfig is a user with no rights
// until a test binds a Role to "runbook-user".
type Kubernetes struct {
	Dir            string
	URL            string // https://127.0.0.1:PORT
	CAFile         string
	Kubeconfig     string // admin, context "test"
	UserKubeconfig string // user "runbook-user", context "test"

	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface

	procs []*process
}

// The control plane is shared by every test of a process (it takes seconds
// to start and hundreds of MB to run): the first user starts it, the last
// one to release it stops it.
var sharedK8s struct {
	mu    sync.Mutex
	k     *Kubernetes
	users int
}

// AcquireKubernetes returns the process's control plane, starting it if
// none runs, and releases it when the test ends (the last release stops
// it, every process by its PID).
func AcquireKubernetes(t TB) *Kubernetes {
	t.Helper()
	sharedK8s.mu.Lock()
	defer sharedK8s.mu.Unlock()
	if sharedK8s.k == nil {
		dir, err := os.MkdirTemp("", "runbook-k8s-")
		if err != nil {
			t.Fatalf("testenv: kubernetes: %v", err)
		}
		start := time.Now()
		k, err := startKubernetes(dir)
		if err != nil {
			os.RemoveAll(dir)
			t.Fatalf("testenv: start kubernetes control plane: %v", err)
		}
		t.Logf("testenv: kubernetes control plane %s (etcd %s) at %s up in %s", KubernetesVersion, EtcdVersion, k.URL, time.Since(start).Round(time.Millisecond))
		sharedK8s.k = k
	}
	sharedK8s.users++
	k := sharedK8s.k
	t.Cleanup(func() {
		sharedK8s.mu.Lock()
		defer sharedK8s.mu.Unlock()
		sharedK8s.users--
		if sharedK8s.users == 0 && sharedK8s.k == k {
			k.stop()
			os.RemoveAll(k.Dir)
			sharedK8s.k = nil
		}
	})
	return k
}

func startKubernetes(dir string) (*Kubernetes, error) {
	bins := map[toolcache.Tool]string{}
	for _, b := range []toolcache.Tool{binEtcd, binAPIServer, binKCM} {
		p, err := findBinary(b)
		if err != nil {
			return nil, err
		}
		bins[b] = p
	}
	k := &Kubernetes{Dir: dir}
	if err := k.start(bins); err != nil {
		k.stop()
		return nil, err
	}
	return k, nil
}

func (k *Kubernetes) start(bins map[toolcache.Tool]string) (err error) {
	dir := k.Dir
	etcdURL, err := k.startEtcd(bins[binEtcd])
	if err != nil {
		return err
	}
	adminToken, userToken := randomToken(), randomToken()
	if err := k.startAPIServer(bins[binAPIServer], etcdURL, adminToken, userToken); err != nil {
		return err
	}
	if k.Config, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig); err != nil {
		return fmt.Errorf("load kubeconfig %s: %w", k.Kubeconfig, err)
	}
	// client-go's default of 5 requests a second throttles a test's watches
	// and writes.
	k.Config.QPS, k.Config.Burst = 200, 400
	if k.Client, err = kubernetes.NewForConfig(k.Config); err != nil {
		return err
	}
	if k.Dynamic, err = dynamic.NewForConfig(k.Config); err != nil {
		return err
	}
	if err := k.installCRDs(); err != nil {
		return err
	}
	logFile := filepath.Join(dir, "kube-controller-manager.log")
	p, err := startProcess(procSpec{
		name: "kube-controller-manager", path: bins[binKCM], dir: dir, logFile: logFile, env: baseEnv("KUBECONFIG"),
		args: []string{
			"--kubeconfig=" + k.Kubeconfig,
			"--controllers=statefulset-controller",
			"--leader-elect=false",
			"--secure-port=0",
			"--use-service-account-credentials=false",
		},
		// It serves nothing (--secure-port=0): ready once it runs.
		ready:        func() error { return nil },
		readyTimeout: time.Second,
	})
	if err != nil {
		return err
	}
	k.procs = append(k.procs, p)
	return nil
}

func (k *Kubernetes) startEtcd(bin string) (string, error) {
	var url string
	err := startWithPortRetry(func() error {
		client, err1 := freePort()
		peer, err2 := freePort()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		url = "http://127.0.0.1:" + strconv.Itoa(client)
		peerURL := "http://127.0.0.1:" + strconv.Itoa(peer)
		data := filepath.Join(k.Dir, "etcd")
		_ = os.RemoveAll(data)
		p, err := startProcess(procSpec{
			name: "etcd", path: bin, dir: k.Dir, logFile: filepath.Join(k.Dir, "etcd.log"), env: baseEnv("ETCD_"),
			args: []string{
				"--data-dir=" + data,
				"--listen-client-urls=" + url, "--advertise-client-urls=" + url,
				"--listen-peer-urls=" + peerURL, "--initial-advertise-peer-urls=" + peerURL,
				"--initial-cluster=default=" + peerURL,
				// Test state: no fsync on a machine shared by many builds.
				"--unsafe-no-fsync",
			},
			ready:        httpOK(&http.Client{Timeout: 2 * time.Second}, url+"/health", ""),
			readyTimeout: time.Minute,
		})
		if err != nil {
			return err
		}
		k.procs = append(k.procs, p)
		return nil
	})
	return url, err
}

func (k *Kubernetes) startAPIServer(bin, etcdURL, adminToken, userToken string) error {
	pki := filepath.Join(k.Dir, "pki")
	tlsFiles, err := GenerateTLS(pki, "kube-apiserver")
	if err != nil {
		return err
	}
	k.CAFile = tlsFiles.CAFile
	saKey := filepath.Join(pki, "service-account.key")
	if err := writeECKey(saKey); err != nil {
		return err
	}
	tokens := filepath.Join(pki, "tokens.csv")
	csv := fmt.Sprintf("%s,admin,admin,\"system:masters\"\n%s,runbook-user,runbook-user\n", adminToken, userToken)
	if err := os.WriteFile(tokens, []byte(csv), 0o600); err != nil {
		return err
	}
	return startWithPortRetry(func() error {
		port, err := freePort()
		if err != nil {
			return err
		}
		k.URL = "https://127.0.0.1:" + strconv.Itoa(port)
		k.Kubeconfig = filepath.Join(k.Dir, "admin.kubeconfig")
		k.UserKubeconfig = filepath.Join(k.Dir, "user.kubeconfig")
		for file, token := range map[string]string{k.Kubeconfig: adminToken, k.UserKubeconfig: userToken} {
			if err := writeKubeconfig(file, k.URL, k.CAFile, token); err != nil {
				return err
			}
		}
		tlsConf, err := clientTLS(k.CAFile)
		if err != nil {
			return err
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
		p, err := startProcess(procSpec{
			name: "kube-apiserver", path: bin, dir: k.Dir, logFile: filepath.Join(k.Dir, "kube-apiserver.log"), env: baseEnv(),
			args: []string{
				"--etcd-servers=" + etcdURL,
				"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
				"--secure-port=" + strconv.Itoa(port),
				"--cert-dir=" + pki,
				"--tls-cert-file=" + tlsFiles.CertFile, "--tls-private-key-file=" + tlsFiles.KeyFile,
				"--token-auth-file=" + tokens,
				"--authorization-mode=RBAC",
				"--service-account-issuer=https://kubernetes.default.svc",
				"--service-account-key-file=" + saKey, "--service-account-signing-key-file=" + saKey,
				"--service-cluster-ip-range=10.0.0.0/24",
				// No service-account controller runs to create "default".
				"--disable-admission-plugins=ServiceAccount",
				"--allow-privileged=true",
				// The kubernetes Service's endpoints would be 127.0.0.1,
				// which the reconciler refuses; nothing here needs them.
				"--endpoint-reconciler-type=none",
			},
			ready:        httpOK(client, k.URL+"/readyz", adminToken),
			readyTimeout: 3 * time.Minute,
		})
		if err != nil {
			return err
		}
		k.procs = append(k.procs, p)
		return nil
	})
}

// httpOK is a readiness check: GET url answers 200.
func httpOK(client *http.Client, url, token string) func() error {
	return func() error {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}

func writeKubeconfig(file, server, caFile, token string) error {
	conf := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: test
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
`, server, caFile, token)
	return os.WriteFile(file, []byte(conf), 0o600)
}

func writeECKey(file string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs creates the CRDs of testdata/k8s and waits until the API
// server serves them.
func (k *Kubernetes) installCRDs() error {
	files, err := crdFiles.ReadDir("testdata/k8s")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, f := range files {
		data, err := crdFiles.ReadFile("testdata/k8s/" + f.Name())
		if err != nil {
			return err
		}
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(data, &obj.Object); err != nil {
			return fmt.Errorf("parse %s: %w", f.Name(), err)
		}
		if _, err := k.Dynamic.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
		}
		for {
			got, err := k.Dynamic.Resource(crdGVR).Get(ctx, obj.GetName(), metav1.GetOptions{})
			if err == nil && crdEstablished(got) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w", obj.GetName(), ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func crdEstablished(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// stop ends kube-controller-manager, kube-apiserver and etcd, in that order.
func (k *Kubernetes) stop() {
	for i := len(k.procs) - 1; i >= 0; i-- {
		k.procs[i].stop()
	}
	k.procs = nil
}

package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/jsonpath"
	"sigs.k8s.io/yaml"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// Script commands of the Kubernetes cutover scripts
// (testdata/scripts/cutover_k8s_*.txtar), reading the script's control
// plane as an admin ($KUBECONFIG, namespace $K8S_NAMESPACE):
//
//	k8s-get KIND NAME TEMPLATE
//	    prints TEMPLATE (kubectl's JSONPath, e.g. {.spec.updateStrategy.type})
//	    of the object; KIND is tenant, objectstore, statefulset, secret or
//	    pod. A Secret's data values are shown decoded.
//	k8s-pods
//	    one line per pod: NAME UID REVISION ready|not-ready, by name.
//	k8s-apply FILE
//	    creates the Roles and RoleBindings of the YAML file FILE (documents
//	    separated by ---) in the namespace, as an admin.
//	k8s-helm-env STATEFULSET FILE
//	    what a helm upgrade or rollback does to a chart's StatefulSet: its
//	    first container's env becomes that of the StatefulSet saved as JSON
//	    in FILE (for example runbook's backup), nothing else changes.
//	k8s-patch KIND NAME FILE
//	    what a GitOps tool's sync (Argo CD, Flux) does to the live object
//	    when its owner commits a change: the YAML of FILE, its $VARS
//	    expanded from the script's environment, as a JSON merge patch
//	    (field manager argocd). A Secret's stringData is written to data.
//	k8s-wait-log FILE REGEXP
//	    waits (up to 5 minutes) until a line of FILE matches REGEXP.
func init() {
	moreScriptCmds["k8s-helm-env"] = cmdK8sHelmEnv
	moreScriptCmds["k8s-wait-log"] = cmdK8sWaitLog
	moreScriptCmds["k8s-get"] = cmdK8sGet
	moreScriptCmds["k8s-pods"] = cmdK8sPods
	moreScriptCmds["k8s-apply"] = cmdK8sApply
	moreScriptCmds["k8s-patch"] = cmdK8sPatch
}

var k8sScriptKinds = map[string]schema.GroupVersionResource{
	"tenant":      testenv.TenantGVR,
	"objectstore": testenv.ObjectStoreGVR,
	"statefulset": {Group: "apps", Version: "v1", Resource: "statefulsets"},
	"secret":      {Version: "v1", Resource: "secrets"},
	"pod":         {Version: "v1", Resource: "pods"},
	"role":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"rolebinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

func cmdK8sApply(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: k8s-apply FILE")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, doc := range strings.Split(ts.ReadFile(args[0]), "\n---\n") {
		obj := &unstructured.Unstructured{}
		ts.Check(yaml.Unmarshal([]byte(doc), &obj.Object))
		_, err := k8sResource(ts, strings.ToLower(obj.GetKind())).Create(ctx, obj, metav1.CreateOptions{})
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "created %s %s\n", obj.GetKind(), obj.GetName())
	}
}

// cmdK8sPatch patches an object as the GitOps tool's sync does (a JSON
// merge patch, field manager argocd), or with -strategic as kubectl edit
// does (a strategic merge patch: lists such as a container's env merge by
// name; built-in kinds only).
func cmdK8sPatch(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "k8s-patch", neg)
	strategic := fs.Bool("strategic", false, "strategic merge patch, field manager kubectl-edit")
	ts.Check(fs.Parse(args))
	args = fs.Args()
	if len(args) != 3 {
		ts.Fatalf("usage: k8s-patch [-strategic] KIND NAME FILE")
	}
	var patch map[string]any
	ts.Check(yaml.Unmarshal([]byte(os.Expand(ts.ReadFile(args[2]), ts.Getenv)), &patch))
	data, err := json.Marshal(patch)
	ts.Check(err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pt, manager := types.MergePatchType, "argocd"
	if *strategic {
		pt, manager = types.StrategicMergePatchType, "kubectl-edit"
	}
	obj, err := k8sResource(ts, args[0]).Patch(ctx, args[1], pt, data, metav1.PatchOptions{FieldManager: manager})
	ts.Check(err)
	fmt.Fprintf(ts.Stdout(), "patched %s %s (resourceVersion %s)\n", obj.GetKind(), obj.GetName(), obj.GetResourceVersion())
}

func k8sResource(ts *testscript.TestScript, kind string) dynamic.ResourceInterface {
	gvr, ok := k8sScriptKinds[kind]
	if !ok {
		ts.Fatalf("k8s: unknown kind %q", kind)
	}
	conf, err := clientcmd.BuildConfigFromFlags("", ts.Getenv("KUBECONFIG"))
	ts.Check(err)
	d, err := dynamic.NewForConfig(conf)
	ts.Check(err)
	return d.Resource(gvr).Namespace(ts.Getenv("K8S_NAMESPACE"))
}

func cmdK8sGet(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: k8s-get KIND NAME TEMPLATE")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	obj, err := k8sResource(ts, args[0]).Get(ctx, args[1], metav1.GetOptions{})
	ts.Check(err)
	if args[0] == "secret" {
		data, _ := obj.Object["data"].(map[string]any)
		for k, v := range data {
			b, err := base64.StdEncoding.DecodeString(fmt.Sprint(v))
			ts.Check(err)
			data[k] = string(b)
		}
	}
	jp := jsonpath.New("k8s-get").AllowMissingKeys(true)
	ts.Check(jp.Parse(args[2]))
	var out strings.Builder
	ts.Check(jp.Execute(&out, obj.Object))
	fmt.Fprintln(ts.Stdout(), out.String())
}

func cmdK8sPods(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: k8s-pods")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := k8sResource(ts, "pod").List(ctx, metav1.ListOptions{})
	ts.Check(err)
	var lines []string
	for _, p := range list.Items {
		ready := "not-ready"
		conds, _, _ := unstructured.NestedSlice(p.Object, "status", "conditions")
		for _, c := range conds {
			if m, ok := c.(map[string]any); ok && m["type"] == "Ready" && m["status"] == "True" {
				ready = "ready"
			}
		}
		lines = append(lines, fmt.Sprintf("%s %s %s %s", p.GetName(), p.GetUID(), p.GetLabels()["controller-revision-hash"], ready))
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(ts.Stdout(), l)
	}
}

func cmdK8sHelmEnv(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: k8s-helm-env STATEFULSET FILE")
	}
	var saved unstructured.Unstructured
	ts.Check(json.Unmarshal([]byte(ts.ReadFile(args[1])), &saved.Object))
	env, _, err := unstructured.NestedFieldCopy(saved.Object, "spec", "template", "spec", "containers")
	ts.Check(err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := k8sResource(ts, "statefulset")
	cur, err := res.Get(ctx, args[0], metav1.GetOptions{})
	ts.Check(err)
	containers, _, _ := unstructured.NestedSlice(cur.Object, "spec", "template", "spec", "containers")
	containers[0].(map[string]any)["env"] = env.([]any)[0].(map[string]any)["env"]
	ts.Check(unstructured.SetNestedSlice(cur.Object, containers, "spec", "template", "spec", "containers"))
	_, err = res.Update(ctx, cur, metav1.UpdateOptions{FieldManager: "helm"})
	ts.Check(err)
}

func cmdK8sWaitLog(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: k8s-wait-log FILE REGEXP")
	}
	re, err := regexp.Compile(args[1])
	ts.Check(err)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		data, _ := os.ReadFile(ts.MkAbs(args[0]))
		if re.Match(data) {
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("k8s-wait-log: no line of %s matches %s after 5 minutes", args[0], args[1])
		}
		time.Sleep(200 * time.Millisecond)
	}
}

package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/rogpeppe/go-internal/testscript"
	"gopkg.in/yaml.v3"
)

// Script commands of the Kubernetes cutover script
// (testdata/scripts/cutover_kubernetes.txtar):
//
//	k8s-apply-values PATCH SECRET ENVFILE
//	    plays the operator's "kubectl apply -f SECRET; helm upgrade" on a
//	    MinIO that reads ENVFILE: parses the values patch PATCH (env: a list
//	    of {name, value} or {name, valueFrom.secretKeyRef{name, key}}) and
//	    the Secret manifest SECRET as YAML, resolves every secretKeyRef in
//	    the Secret (its metadata.name must match), removes (comments out)
//	    every MINIO_KMS_KES_* line of ENVFILE, as the patch tells the
//	    operator, and sets the patch's entries. MinIO must be restarted
//	    afterwards (minio-restart), as a rollout would.
func init() {
	moreScriptCmds["k8s-apply-values"] = cmdK8sApplyValues
}

type k8sValuesPatch struct {
	Env []struct {
		Name      string  `yaml:"name"`
		Value     *string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
}

type k8sSecret struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	StringData map[string]string `yaml:"stringData"`
}

func cmdK8sApplyValues(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("k8s-apply-values does not support !")
	}
	if len(args) != 3 {
		ts.Fatalf("usage: k8s-apply-values PATCH SECRET ENVFILE")
	}
	var patch k8sValuesPatch
	ts.Check(yaml.Unmarshal([]byte(ts.ReadFile(args[0])), &patch))
	var secret k8sSecret
	ts.Check(yaml.Unmarshal([]byte(ts.ReadFile(args[1])), &secret))
	if secret.APIVersion != "v1" || secret.Kind != "Secret" || secret.Metadata.Name == "" {
		ts.Fatalf("k8s-apply-values: %s is not a v1 Secret with a name", args[1])
	}
	if len(patch.Env) == 0 {
		ts.Fatalf("k8s-apply-values: %s sets no env entries", args[0])
	}
	set := map[string]string{}
	for _, e := range patch.Env {
		switch {
		case e.Value != nil && e.ValueFrom == nil:
			set[e.Name] = *e.Value
		case e.Value == nil && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			if ref.Name != secret.Metadata.Name {
				ts.Fatalf("k8s-apply-values: %s refers to Secret %q, the manifest is %q", e.Name, ref.Name, secret.Metadata.Name)
			}
			v, ok := secret.StringData[ref.Key]
			if !ok || v == "" {
				ts.Fatalf("k8s-apply-values: Secret %q has no key %q", ref.Name, ref.Key)
			}
			set[e.Name] = v
		default:
			ts.Fatalf("k8s-apply-values: env entry %q has neither a value nor a secretKeyRef", e.Name)
		}
	}
	path := ts.MkAbs(args[2])
	var out []string
	for _, l := range strings.Split(strings.TrimRight(ts.ReadFile(args[2]), "\n"), "\n") {
		k, _, _ := strings.Cut(l, "=")
		switch {
		case strings.HasPrefix(k, "MINIO_KMS_KES_"):
			l = "#" + l
		case set[k] != "":
			continue
		}
		out = append(out, l)
	}
	names := make([]string, 0, len(set))
	for k := range set {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		out = append(out, k+"="+set[k])
	}
	ts.Check(os.WriteFile(path, []byte(strings.Join(out, "\n")+"\n"), 0o600))
	fmt.Fprintf(ts.Stdout(), "set %s\n", strings.Join(names, ", "))
}

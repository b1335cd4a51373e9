package steps

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

var testKMSSet = map[string]string{"MINIO_KMS_SERVER": "https://km:7373", "MINIO_KMS_ENCLAVE": "aistor-primary", "MINIO_KMS_SSE_KEY": "minio-default-key", "MINIO_KMS_API_KEY": "k1:secret"}

// A Tenant whose KES variables come from all three sources: the operator's
// injection (spec.kes), spec.env (one by secretKeyRef) and config.env.
// The change leaves none of them and keeps everything else.
func TestK8sChangeTenant(t *testing.T) {
	obj := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{
		"kes":           map[string]any{"keyName": "minio-default-key"},
		"configuration": map[string]any{"name": "prod-env"},
		"env": []any{
			map[string]any{"name": "MINIO_BROWSER", "value": "off"},
			map[string]any{"name": "MINIO_KMS_KES_KEY_NAME", "value": "minio-default-key"},
			map[string]any{"name": "MINIO_KMS_KES_API_KEY", "valueFrom": map[string]any{"secretKeyRef": map[string]any{"name": "kes", "key": "k"}}},
		},
	}}}
	conf := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "prod-env"}, Data: map[string][]byte{
		"config.env": []byte("export MINIO_ROOT_USER=\"root\"\nexport MINIO_ROOT_PASSWORD='pw'\nexport MINIO_KMS_KES_ENDPOINT=\"https://kes:7373\"\n"),
	}}
	tg := &k8sTarget{kind: "Tenant", name: "prod", ns: "minio"}
	ch, err := tg.change(&k8sState{obj: obj, config: conf}, testKMSSet, "k1:secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := ch.spec["kes"]; ok || !ch.removedKES {
		t.Errorf("spec.kes not removed: %v", ch.spec)
	}
	var names []string
	for _, e := range ch.spec["env"].([]any) {
		names = append(names, e.(map[string]any)["name"].(string))
	}
	if got := strings.Join(names, " "); got != "MINIO_BROWSER MINIO_KMS_SERVER MINIO_KMS_ENCLAVE MINIO_KMS_SSE_KEY" {
		t.Errorf("spec.env names: %s", got)
	}
	want := "export MINIO_ROOT_USER=\"root\"\nexport MINIO_ROOT_PASSWORD=\"pw\"\nexport MINIO_KMS_API_KEY=\"k1:secret\"\n"
	if got := string(ch.config.Data["config.env"]); got != want {
		t.Errorf("config.env:\n%s\nwant:\n%s", got, want)
	}
	if obj.Object["spec"].(map[string]any)["kes"] == nil {
		t.Error("the observed object was changed in place")
	}
	// Idempotent: applied to its own result, the change is the same.
	obj.Object["spec"] = ch.spec
	again, err := tg.change(&k8sState{obj: obj, config: ch.config}, testKMSSet, "k1:secret")
	if err != nil || len(again.spec["env"].([]any)) != 4 || string(again.config.Data["config.env"]) != want {
		t.Errorf("second change differs: %v %v", err, again)
	}

	// Without a configuration Secret, a Tenant has nowhere safe for the key.
	delete(obj.Object["spec"].(map[string]any), "configuration")
	if _, err := tg.change(&k8sState{obj: obj}, testKMSSet, "k1:secret"); err == nil || !strings.Contains(err.Error(), "minio/operator#2279") {
		t.Errorf("err = %v, want a refusal naming the operator's empty secretKeyRef", err)
	}
}

// A Helm StatefulSet: the container's env loses every MINIO_KMS_* entry and
// gets the Key Manager's, the API key by reference to runbook's Secret.
func TestK8sChangeStatefulSet(t *testing.T) {
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "minio"}}
	sts.Spec.Template.Spec.Containers = []corev1.Container{{Name: "sidecar"}, {Name: "minio", Env: []corev1.EnvVar{
		{Name: "MINIO_ROOT_USER", Value: "root"},
		{Name: "MINIO_KMS_KES_ENDPOINT", Value: "https://kes:7373"},
		{Name: "MINIO_KMS_KES_KEY_NAME", Value: "minio-default-key"},
	}}}
	tg := &k8sTarget{kind: "StatefulSet", name: "minio", ns: "minio"}
	ch, err := tg.change(&k8sState{sets: []*appsv1.StatefulSet{sts}}, testKMSSet, "k1:secret")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ch.env {
		names = append(names, e.Name)
		if e.Name == "MINIO_KMS_API_KEY" && (e.Value != "" || e.ValueFrom.SecretKeyRef.Name != "minio-kms-api-key") {
			t.Errorf("API key entry %+v, want a secretKeyRef to minio-kms-api-key", e)
		}
	}
	if got := strings.Join(names, " "); got != "MINIO_ROOT_USER MINIO_KMS_SERVER MINIO_KMS_ENCLAVE MINIO_KMS_SSE_KEY MINIO_KMS_API_KEY" {
		t.Errorf("env names: %s", got)
	}
	if string(ch.keySecret.Data["MINIO_KMS_API_KEY"]) != "k1:secret" {
		t.Errorf("key Secret: %v", ch.keySecret.Data)
	}
	if len(minioContainer(sts).Env) != 3 {
		t.Error("the observed StatefulSet was changed in place")
	}
}

package steps

import (
	"bytes"
	"strings"
	"testing"

	"github.com/minio/kes/kesconf"
)

// A KES config as the MinIO Operator's KES Secret holds it: placeholders of
// the KES pod's environment in the admin, TLS and policy sections. Read on a
// host where none is set, it parses with inert values there; a placeholder
// in the key store is an error naming it.
func TestExpandKESConfigFromKubernetes(t *testing.T) {
	conf := `address: 0.0.0.0:7373
admin:
  identity: ${MINIO_KES_ADMIN_IDENTITY}
tls:
  key: ${KES_TLS_KEY}
  cert: /tmp/kes/server.crt
policy:
  minio:
    allow:
    - /v1/key/create/*
    identities:
    - ${MINIO_KES_IDENTITY}
    - ${OTHER_IDENTITY}
keystore:
  fs:
    path: ./keys
`
	set := map[string]string{"KES_TLS_KEY": "/tmp/kes/server.key"}
	lookup := func(k string) (string, bool) { v, ok := set[k]; return v, ok }
	out, notes, err := expandKESConfig([]byte(conf), lookup)
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 3 || !strings.Contains(strings.Join(notes, "\n"), "${MINIO_KES_IDENTITY} at policy.minio.identities.[0]") {
		t.Fatalf("notes: %q", notes)
	}
	if strings.Contains(string(out), "${MINIO_KES") || !strings.Contains(string(out), "${KES_TLS_KEY}") {
		t.Fatalf("a set placeholder must stay for kesconf, the unset ones must go:\n%s", out)
	}
	t.Setenv("KES_TLS_KEY", "/tmp/kes/server.key")
	f, err := kesconf.ReadFrom(bytes.NewReader(out))
	if err != nil {
		t.Fatalf("kesconf refuses the filled config: %v\n%s", err, out)
	}
	if _, ok := f.KeyStore.(*kesconf.FSKeyStore); !ok {
		t.Fatalf("key store %T, want fs", f.KeyStore)
	}

	for _, ks := range []string{
		"keystore:\n  fs:\n    path: ${KES_FS_PATH}\n",
		"keystore:\n  vault:\n    endpoint: https://vault:8200\n    approle:\n      id: ${VAULT_ROLE}\n      secret: x\n",
	} {
		_, _, err := expandKESConfig([]byte("admin:\n  identity: disabled\n"+ks), lookup)
		if err == nil || !strings.Contains(err.Error(), "key store section of the KES config refers to variables that are not set here: ${") {
			t.Errorf("%q: err = %v, want the key store's placeholder named", ks, err)
		}
	}
}

// A key store that only the cluster can reach is named as such.
func TestKESInClusterOnly(t *testing.T) {
	for conf, want := range map[string]string{
		"keystore:\n  vault:\n    endpoint: https://vault.vault.svc:8200\n    approle: {id: a, secret: b}\n":                                                               "cluster address https://vault.vault.svc:8200",
		"keystore:\n  vault:\n    endpoint: https://vault.example.net\n    kubernetes:\n      role: kes\n      jwt: /var/run/secrets/kubernetes.io/serviceaccount/token\n": "KES pod's service-account token",
		"keystore:\n  vault:\n    endpoint: https://vault.example.net\n    approle: {id: a, secret: b}\n":                                                                  "",
	} {
		got := kesInClusterOnly([]byte(conf))
		if (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("%q: %q, want %q", conf, got, want)
		}
	}
}

package steps

import (
	"strings"
	"testing"
)

func TestRootAccessRisk(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env  string
		risk bool
	}{
		{"MINIO_API_ROOT_ACCESS=off\nMINIO_KMS_KES_KEY_NAME=k\n", true},
		{"MINIO_API_ROOT_ACCESS=\"off\"\n", true},
		{"MINIO_API_ROOT_ACCESS=off\nMINIO_ROOT_USER=admin\n", false},
		{"#MINIO_API_ROOT_ACCESS=off\n", false},
		{"MINIO_API_ROOT_ACCESS=on\n", false},
		{"", false},
	} {
		env, err := envEffective([]byte(c.env))
		if err != nil {
			t.Fatal(err)
		}
		got := rootAccessRisk(env)
		if (got != "") != c.risk {
			t.Errorf("rootAccessRisk(%q) = %q, want a risk: %v", c.env, got, c.risk)
		}
		if got != "" && !strings.Contains(got, "Set MINIO_ROOT_USER and MINIO_ROOT_PASSWORD") {
			t.Errorf("rootAccessRisk(%q) = %q: no fix", c.env, got)
		}
	}
}

func TestEndpointTLSNote(t *testing.T) {
	t.Parallel()
	if got := endpointTLSNote("http://minio:9000", false); strings.Contains(got, "TLS verified") {
		t.Errorf("http endpoint: %q says TLS verified", got)
	}
	if got := endpointTLSNote("https://minio:9000", false); got != "TLS verified" {
		t.Errorf("https endpoint: %q", got)
	}
}

func TestSplitSystemdWords(t *testing.T) {
	t.Parallel()
	got := splitSystemdWords(`A=1 "B=x y" C= D=\"q\"`)
	want := []string{"A=1", "B=x y", "C=", `D="q"`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("splitSystemdWords = %q, want %q", got, want)
	}
}

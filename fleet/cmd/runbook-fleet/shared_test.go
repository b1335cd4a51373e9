package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestSameObjectStoreTwice: two deployments whose var files reach one real
// MinIO by different URLs (127.0.0.1 and localhost: a var file copied and
// only half edited) each plan soundly alone, and the engine's lock fences
// one journal, not the object store. The fleet plan is refused (exit 3),
// naming both deployments and the MinIO deployment ID, before any
// deployment runs: no fleet.json, the env file untouched. Without the copy
// the same fleet plans.
func TestSameObjectStoreTwice(t *testing.T) {
	fe := newFleet(t, fleetSpec{name: "twice", deployments: 2, keys: 20, waveSize: 2, maxConc: 2, minio: true})
	orig := filepath.Join(fe.dir, "minio", "twice-02.hcl")
	vars, err := os.ReadFile(orig)
	if err != nil {
		t.Fatal(err)
	}
	endpoint := regexp.MustCompile(`minio_endpoint = "https://127\.0\.0\.1:`)
	if !endpoint.Match(vars) {
		t.Fatalf("twice-02's var file names no MinIO on 127.0.0.1:\n%s", vars)
	}
	copied := endpoint.ReplaceAll(vars, []byte(`minio_endpoint = "https://localhost:`))
	copied = bytes.Replace(copied, []byte(`enclave = "twice-02"`), []byte(`enclave = "twice-03"`), 1)
	dup := filepath.Join(fe.dir, "minio", "twice-03.hcl")
	write(t, dup, string(copied))
	envFile := regexp.MustCompile(`env_files = \["([^"]+)"\]`).FindSubmatch(vars)
	if envFile == nil {
		t.Fatalf("twice-02's var file names no env file:\n%s", vars)
	}
	envBefore, err := os.ReadFile(string(envFile[1]))
	if err != nil {
		t.Fatal(err)
	}

	out, code := fe.run("plan", fe.file)
	if code != 3 {
		t.Fatalf("fleet plan with two deployments on one MinIO: exit %d, want 3\n%s", code, out)
	}
	for _, want := range []string{
		"twice-02 and twice-03 both change MinIO deployment ",
		"reached as https://127.0.0.1:",
		"and as https://localhost:",
		"No fleet plan was written and nothing was changed",
		"runbook: hint: give each deployment the var file of its own object store",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the refusal does not say %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(fe.dir, ".runbook-fleet", "twice", "plan", "fleet.json")); !os.IsNotExist(err) {
		t.Errorf("a refused fleet plan left fleet.json (stat: %v)", err)
	}
	if envAfter, err := os.ReadFile(string(envFile[1])); err != nil || !bytes.Equal(envAfter, envBefore) {
		t.Errorf("the env file changed at plan (err %v)", err)
	}

	// The same fleet without the copy plans: the refusal was the copy's.
	if err := os.Remove(dup); err != nil {
		t.Fatal(err)
	}
	planned := fe.must("plan", fe.file)
	fe.noSecretsBefore(out, planned)
}

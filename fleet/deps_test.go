package fleet

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestSharedDependenciesMatchMainModule checks that every module both this
// module's and the main module's packages (tests included) are built from
// is at one version in both. The build cache keys a compiled package by its
// whole dependency closure, so one module at two versions (grpc, say)
// compiles again everything above it for the fleet (client-go among them:
// 375 packages when grpc, OpenTelemetry and gnostic-models had drifted),
// minutes of a first run from empty caches (scripts/test.sh). The fix is to
// raise the lower side to the other's version: `go get MODULE@VERSION` in
// that module, then `go mod tidy` in both.
func TestSharedDependenciesMatchMainModule(t *testing.T) {
	fleet := moduleVersions(t, ".")
	main := moduleVersions(t, "..")
	if len(fleet) == 0 || len(main) == 0 {
		t.Fatalf("no module versions listed (fleet %d, main %d)", len(fleet), len(main))
	}
	shared := 0
	for path, v := range main {
		fv, ok := fleet[path]
		if !ok {
			continue
		}
		shared++
		if fv != v {
			t.Errorf("%s: %s in the main module, %s in the fleet module; raise the lower one (go get %s@<higher> there, then go mod tidy in both)", path, v, fv, path)
		}
	}
	// The fleet imports the main module's steps, so a handful of shared
	// modules at least (hcl, kes-go, minio-go, client-go, ...).
	if shared < 20 {
		t.Fatalf("only %d modules shared between the fleet and the main module: the listing is wrong", shared)
	}
}

// moduleVersions lists, for the module in dir, the version of every module
// its packages and their tests are built from (go list -deps -test), keyed
// by module path; the main module itself (no version) is left out.
func moduleVersions(t *testing.T, dir string) map[string]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-test", "-f", "{{with .Module}}{{.Path}} {{.Version}}{{end}}", "./...")
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("list module versions in %s: %v: %s", dir, err, stderr.String())
	}
	versions := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		path, version, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || version == "" {
			continue
		}
		versions[path] = version
	}
	return versions
}

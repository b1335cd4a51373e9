package fleet

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
)

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadAndWaves(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"rb.hcl": "runbook { name = \"x\" }\n", "a.hcl": "", "sites/s1.hcl": "", "sites/s2.hcl": "", "sites/s3.hcl": "", "signers": "",
		"fleet.hcl": `fleet {
  name    = "prod"
  runbook = "rb.hcl"
}

deployment "a" {
  var_files = ["a.hcl"]
  labels    = { region = "eu" }
  host      = "host-a"
}

deployments "sites" {
  dir     = "sites"
  targets = ["verification.keys"]
}

rollout {
  canary          = ["s2"]
  wave_size       = 2
  max_concurrency = 3
  max_errors      = 1
  approval {
    waves           = [1, 2]
    approvers       = 2
    allowed_signers = "signers"
  }
}

temporal {
  address   = "temporal.example.net:7233"
  namespace = "fleets"
}
`})
	f, diags := Load(filepath.Join(dir, "fleet.hcl"))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if got := f.Waves(); len(got) != 3 || strings.Join(got[0], ",") != "s2" || strings.Join(got[1], ",") != "a,s1" || strings.Join(got[2], ",") != "s3" {
		t.Fatalf("waves %v, want [s2] [a s1] [s3]", got)
	}
	a, s3 := f.Deployment("a"), f.Deployment("s3")
	if a.Host != "host-a" || a.Labels["region"] != "eu" || s3.Host != DefaultHost || s3.Targets[0] != "verification.keys" || s3.VarFiles[0] != filepath.Join(dir, "sites", "s3.hcl") {
		t.Fatalf("deployments: %+v %+v", a, s3)
	}
	if f.Rollout.Approval.Approvers != 2 || f.Temporal.Namespace != "fleets" || f.Journals != filepath.Join(dir, ".runbook-fleet", "prod", "journals") {
		t.Fatalf("fleet: %+v %+v %s", f.Rollout.Approval, f.Temporal, f.Journals)
	}
}

// TestLoadErrors: every problem at once, each on its line.
func TestLoadErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{"rb.hcl": "", "fleet.hcl": `fleet {
  name    = "bad name"
  runbook = "missing.hcl"
}

deployment "a" {
  var_files = ["nope.hcl"]
}

deployment "a" {
}

deployment "b" {
  host = "no spaces"
}

rollout {
  canary          = ["zzz"]
  wave_size       = 0
  max_concurrency = 0
  max_errors      = -1
  approval {
    waves = [7]
  }
}
`})
	_, diags := Load(filepath.Join(dir, "fleet.hcl"))
	want := map[string]int{
		"Invalid fleet name": 2, "Runbook not found": 3, "Variable file not found": 7, "Duplicate deployment": 10,
		"Invalid host": 14, "Unknown canary": 18, "Invalid wave_size": 19, "Invalid max_concurrency": 20, "Invalid max_errors": 21,
	}
	got := map[string]int{}
	for _, d := range diags {
		if d.Severity != hcl.DiagError || d.Subject == nil {
			t.Errorf("diagnostic without a range: %s", d.Summary)
			continue
		}
		got[d.Summary] = d.Subject.Start.Line
	}
	for summary, line := range want {
		if got[summary] != line {
			t.Errorf("%q on line %d, want line %d (all: %v)", summary, got[summary], line, got)
		}
	}
}

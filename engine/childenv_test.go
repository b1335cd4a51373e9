package engine

import (
	"slices"
	"testing"
)

func TestChildEnvDropsRunbookVars(t *testing.T) {
	t.Setenv("RUNBOOK_VAR_secret", "s3cr3t")
	t.Setenv("RUNBOOK_CHILDENV_KEPT", "yes")
	env := ChildEnv(map[string]string{"B": "2", "A": "1"})
	for _, kv := range env {
		if len(kv) >= len(EnvPrefix) && kv[:len(EnvPrefix)] == EnvPrefix {
			t.Errorf("child environment holds %q", kv)
		}
	}
	if !slices.Contains(env, "RUNBOOK_CHILDENV_KEPT=yes") {
		t.Errorf("child environment lost an ordinary variable: %v", env)
	}
	if got := env[len(env)-2:]; !slices.Equal(got, []string{"A=1", "B=2"}) {
		t.Errorf("extra variables = %v, want [A=1 B=2] last, sorted", got)
	}
}

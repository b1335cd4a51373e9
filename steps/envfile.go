package steps

import (
	"slices"

	"github.com/runbook-dev/runbook/internal/envfile"
)

// Env files are internal/envfile's; these names keep the cutover's call
// sites as they are until its owners convert them.
var (
	envEffective = envfile.Effective
	splitLines   = envfile.Lines
	editEnv      = envfile.Edit
	envDiff      = envfile.Diff
	envSHA256    = envfile.SHA256
	kmsVars      = envfile.KMSVars
)

func envContains(list []string, s string) bool { return slices.Contains(list, s) }

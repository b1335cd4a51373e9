package engine

import (
	"os"
	"sort"
	"strings"
)

// ChildEnv is the environment of a process a step starts (an exec step's
// command, a restart or log command): this process's environment without the
// RUNBOOK_VAR_* variables, which may carry secrets the runbook did not hand
// to that command, then extra (sorted by name, so runs are reproducible).
// A value the command needs is passed explicitly, as an exec step's env.
func ChildEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, EnvPrefix) {
			continue
		}
		env = append(env, kv)
	}
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+extra[k])
	}
	return env
}

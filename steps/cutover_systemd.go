package steps

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/runbook-dev/runbook/engine"
)

// unitEnv is what systemd says a node's minio unit sets, from `systemctl
// show UNIT -p FragmentPath -p DropInPaths -p Environment -p
// EnvironmentFiles -p ExecStart -p User` on the node's host.
type unitEnv struct {
	Fragment    string            // the unit file
	DropIns     []string          // its drop-in files
	Environment map[string]string // Environment= of the unit and its drop-ins, merged
	EnvFiles    []string          // EnvironmentFiles=, without systemd's "(ignore_errors=…)" note; a leading "-" dropped
	ExecStart   string            // as systemctl shows it: "{ path=… ; argv[]=… ; … }"
	User        string            // User=; "" runs it as root
}

// readUnitEnv asks systemd on n's host for the minio unit's environment.
func readUnitEnv(ctx context.Context, r *engine.Run, n *envNode) (*unitEnv, error) {
	out, err := n.exec(ctx, r, []string{"systemctl", "show", systemdUnit, "-p", "FragmentPath", "-p", "DropInPaths", "-p", "Environment", "-p", "EnvironmentFiles", "-p", "ExecStart", "-p", "User"}, nil)
	if err != nil {
		return nil, fmt.Errorf("read the %s unit's environment on %s (systemctl show %s): %w: %s", systemdUnit, hostOrLocal(n), systemdUnit, err, strings.TrimSpace(r.Redact(string(out))))
	}
	u := &unitEnv{Environment: map[string]string{}}
	for _, line := range splitLines(string(out)) {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "FragmentPath":
			u.Fragment = v
		case "DropInPaths":
			u.DropIns = strings.Fields(v)
		case "ExecStart":
			u.ExecStart = v
		case "User":
			u.User = v
		case "Environment":
			for _, kv := range splitSystemdWords(v) {
				if name, val, ok := strings.Cut(kv, "="); ok {
					u.Environment[name] = val
				}
			}
		case "EnvironmentFiles":
			if v == "" {
				continue
			}
			f, _, _ := strings.Cut(v, " (")
			u.EnvFiles = append(u.EnvFiles, strings.TrimPrefix(f, "-"))
		}
	}
	return u, nil
}

// splitSystemdWords splits systemctl show's Environment= value into its
// assignments: separated by spaces, an assignment holding spaces quoted in
// double quotes.
func splitSystemdWords(s string) []string {
	var words []string
	var b strings.Builder
	quoted, escaped, emptyQuoted := false, false, false
	for _, c := range s {
		switch {
		case escaped:
			b.WriteRune(c)
			escaped = false
		case c == '\\':
			escaped = true
		case c == '"':
			quoted, emptyQuoted = !quoted, true
		case c == ' ' && !quoted:
			if b.Len() > 0 || emptyQuoted {
				words = append(words, b.String())
			}
			b.Reset()
			emptyQuoted = false
		default:
			b.WriteRune(c)
		}
	}
	if b.Len() > 0 || emptyQuoted {
		words = append(words, b.String())
	}
	return words
}

func hostOrLocal(n *envNode) string {
	if n.Remote() {
		return n.Host
	}
	return "this host"
}

// cutoverManaged reports whether the cutover must be the only source of a
// variable: every MINIO_KMS_* variable, since MinIO refuses to start with
// KES and the Key Manager configured together (docs/domain.md, "MinIO KMS variables") and the
// cutover changes them in the env file alone.
func cutoverManaged(name string) bool { return strings.HasPrefix(name, "MINIO_KMS_") }

// checkUnitEnv refuses when a node's minio unit sets a MINIO_KMS_*
// variable outside the env file the cutover edits (an Environment= line of
// the unit or a drop-in, or another EnvironmentFile=): the edit could not
// remove it, and MinIO would not start (docs/domain.md, "MinIO KMS variables"). It names the file
// that sets it. Also refuses when the unit does not read the edited file
// at all. Returns one observation line per node.
func (l *linuxPlatform) checkUnitEnv(ctx context.Context, r *engine.Run) ([]string, error) {
	var observed, problems []string
	for _, n := range l.nodes {
		u, err := readUnitEnv(ctx, r, n)
		if err != nil {
			return nil, err
		}
		var names []string
		for name := range u.Environment {
			if cutoverManaged(name) {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			problems = append(problems, fmt.Sprintf("%s: %s is set by %s", n.Name, name, whereSet(ctx, r, n, u, name)))
		}
		reads := false
		for _, f := range u.EnvFiles {
			if f == n.Path || (!n.Remote() && f == r.Path(n.Path)) {
				reads = true
				continue
			}
			other := &envNode{Name: f, Path: f, Host: n.Host, User: n.User, pool: n.pool}
			data, _, err := other.read(ctx, r)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: the unit also reads EnvironmentFile=%s, which cannot be read to check it (%v)", n.Name, f, err))
				continue
			}
			env, err := envEffective(data)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: the unit also reads EnvironmentFile=%s, which does not parse (%v)", n.Name, f, err))
				continue
			}
			var set []string
			for name := range env {
				if cutoverManaged(name) {
					set = append(set, name)
				}
			}
			sort.Strings(set)
			for _, name := range set {
				problems = append(problems, fmt.Sprintf("%s: %s is set by EnvironmentFile=%s", n.Name, name, f))
			}
		}
		if !reads {
			files := "none"
			if len(u.EnvFiles) > 0 {
				files = strings.Join(u.EnvFiles, ", ")
			}
			problems = append(problems, fmt.Sprintf("%s: the %s unit does not read this file (its EnvironmentFile= lines: %s), so editing it changes nothing", n.Name, systemdUnit, files))
		}
		observed = append(observed, fmt.Sprintf("%s: the %s unit (%s) reads EnvironmentFile=%s; no MINIO_KMS_* variable is set elsewhere in it", n.Name, systemdUnit, u.Fragment, strings.Join(u.EnvFiles, ", ")))
	}
	if len(problems) > 0 {
		return nil, engine.Refusef("the %s unit sets KMS variables outside the env file the cutover edits, so the edit cannot remove them and MinIO would refuse to start with KES and the Key Manager both configured: %s. Move those variables into the env file (or delete them there), systemctl daemon-reload, and plan again", systemdUnit, strings.Join(problems, "; "))
	}
	return observed, nil
}

// whereSet names the unit file or drop-in whose Environment= sets name.
func whereSet(ctx context.Context, r *engine.Run, n *envNode, u *unitEnv, name string) string {
	files := append([]string{u.Fragment}, u.DropIns...)
	var found []string
	for _, f := range files {
		if f == "" {
			continue
		}
		unit := &envNode{Name: f, Path: f, Host: n.Host, User: n.User, pool: n.pool}
		data, _, err := unit.read(ctx, r)
		if err != nil {
			continue
		}
		for _, line := range splitLines(string(data)) {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "Environment="); ok && strings.Contains(v, name+"=") {
				found = append(found, "Environment= in "+f)
				break
			}
		}
	}
	if len(found) == 0 {
		return fmt.Sprintf("an Environment= line of the unit (%s or one of its drop-ins: %s)", u.Fragment, strings.Join(u.DropIns, ", "))
	}
	return strings.Join(found, " and ")
}

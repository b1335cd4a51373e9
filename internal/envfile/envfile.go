// Package envfile reads and edits MinIO environment files (the file
// MINIO_CONFIG_ENV_FILE or a systemd EnvironmentFile names) exactly as
// MinIO reads them, for the cutover: which KMS variables a file sets, the
// edit from KES to the Key Manager, and a diff that shows no secret.
package envfile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// An AIStor/MinIO environment file, as MinIO itself reads it
// (MINIO cmd/common-main.go parsEnvEntry, minioEnvironFromFile): one entry a
// line; blank lines and lines starting with '#' (after trimming spaces) are
// skipped; an optional leading "export" is dropped; the line splits at the
// first '='; the key is not trimmed further; one pair of matching quotes ('"'
// or '\'') around the value is removed. Later lines win (os.Setenv in order).
// A line without '=' stops MinIO at start-up.

// Entry is one parsed, uncommented line.
type Entry struct {
	Key, Value string
	Export     bool // written as "export KEY=…"
	Quote      byte // 0, '"' or '\''
}

// ParseLine parses one line the way MinIO does. ok is false for blank and
// comment lines; err is set for a line MinIO would refuse.
func ParseLine(line string) (e Entry, ok bool, err error) {
	s := strings.TrimSpace(strings.TrimSuffix(line, "\r"))
	if s == "" || strings.HasPrefix(s, "#") {
		return Entry{}, false, nil
	}
	if strings.HasPrefix(s, "export") {
		e.Export = true
		s = strings.TrimSpace(strings.TrimPrefix(s, "export"))
	}
	key, val, found := strings.Cut(s, "=")
	if !found {
		// Not shown: a line without '=' may be a pasted secret.
		return Entry{}, false, errors.New("the line is not of the form KEY=value (MinIO refuses to start with it)")
	}
	if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
		e.Quote = val[0]
		val = val[1 : len(val)-1]
	}
	e.Key, e.Value = key, val
	return e, true, nil
}

// Effective is the environment MinIO takes from a file (later lines win).
func Effective(content []byte) (map[string]string, error) {
	out := map[string]string{}
	for i, line := range Lines(string(content)) {
		e, ok, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		if ok {
			out[e.Key] = e.Value
		}
	}
	return out, nil
}

// Lines splits s into lines without their "\n" (a final newline does
// not start another line).
func Lines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(strings.TrimSuffix(s, "\n"), "\n")
}

// KESPrefix marks the variables of MinIO's KES connection.
const KESPrefix = "MINIO_KMS_KES_"

// The Key Manager variables that the cutover sets, in the order it appends them.
var KMSVars = []string{"MINIO_KMS_SERVER", "MINIO_KMS_ENCLAVE", "MINIO_KMS_API_KEY", "MINIO_KMS_SSE_KEY"}

// StaticKMSVars configure MinIO's static-key KMS; present together with the
// Key Manager's, they stop MinIO at start-up (docs/domain.md, "MinIO KMS
// variables").
var StaticKMSVars = []string{"MINIO_KMS_SECRET_KEY", "MINIO_KMS_SECRET_KEY_FILE"}

// AppendHeader precedes the lines the cutover appends.
const AppendHeader = "# AIStor Key Manager (set by runbook's cutover; the MINIO_KMS_KES_* lines above are commented out)"

// Edit returns content with every MINIO_KMS_KES_* line commented out ("#"
// before the line as it was), each variable of set replaced in place where
// the file defines it (keeping "export" and quotes) or else appended, and
// every other line, comment and the ordering kept. It is idempotent:
// Edit(Edit(x)) == Edit(x). It fails when MinIO could not read the
// result, or when the result would still hold another KMS configuration.
func Edit(content []byte, set map[string]string) ([]byte, error) {
	lines := Lines(string(content))
	done := map[string]bool{}
	out := make([]string, 0, len(lines)+len(set)+2)
	for i, line := range lines {
		cr := ""
		if strings.HasSuffix(line, "\r") {
			cr = "\r"
		}
		e, ok, err := ParseLine(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", i+1, err)
		}
		switch {
		case !ok:
			out = append(out, line)
		case strings.HasPrefix(e.Key, KESPrefix):
			out = append(out, "#"+line)
		default:
			v, isSet := set[e.Key]
			if !isSet {
				out = append(out, line)
				continue
			}
			indent := line[:len(line)-len(strings.TrimLeft(line, " \t"))]
			out = append(out, indent+FormatLine(Entry{Key: e.Key, Value: v, Export: e.Export, Quote: e.Quote})+cr)
			done[e.Key] = true
		}
	}
	var missing []string
	for _, k := range KMSVars {
		if _, ok := set[k]; ok && !done[k] {
			missing = append(missing, k)
		}
	}
	var extra []string
	for k := range set {
		if !done[k] && !slices.Contains(KMSVars, k) {
			extra = append(extra, k)
		}
	}
	sort.Strings(extra)
	missing = append(missing, extra...)
	if len(missing) > 0 {
		out = append(out, AppendHeader)
		for _, k := range missing {
			out = append(out, FormatLine(Entry{Key: k, Value: set[k]}))
		}
	}
	result := []byte(strings.Join(out, "\n") + "\n")
	if err := CheckEdited(result, set); err != nil {
		return nil, err
	}
	return result, nil
}

// CheckEdited proves that MinIO reads the edited file as intended: the set
// values, no KES variable, no static key.
func CheckEdited(content []byte, set map[string]string) error {
	env, err := Effective(content)
	if err != nil {
		return fmt.Errorf("the edited file would not parse: %w", err)
	}
	for k, v := range set {
		if env[k] != v {
			return fmt.Errorf("the edited file would not set %s as intended", k)
		}
	}
	for k := range env {
		if strings.HasPrefix(k, KESPrefix) {
			return fmt.Errorf("the edited file still sets %s", k)
		}
		if slices.Contains(StaticKMSVars, k) {
			return fmt.Errorf("the file sets %s (MinIO's static KMS key): MinIO refuses to start with it and the Key Manager's variables together; remove it first", k)
		}
	}
	return nil
}

// FormatLine writes an entry so that MinIO reads back exactly Value.
func FormatLine(e Entry) string {
	q := e.Quote
	if q == 0 && (strings.ContainsAny(e.Value, " \t#") || (len(e.Value) >= 2 && (e.Value[0] == '"' || e.Value[0] == '\'') && e.Value[len(e.Value)-1] == e.Value[0])) {
		q = '"'
	}
	if q != 0 && strings.IndexByte(e.Value, q) >= 0 {
		q = 0 // MinIO strips only the outer pair, so inner quotes are fine unquoted too
		if strings.ContainsAny(e.Value, " \t") {
			q = '\''
		}
	}
	s := e.Key + "=" + e.Value
	if q != 0 {
		s = e.Key + "=" + string(q) + e.Value + string(q)
	}
	if e.Export {
		s = "export " + s
	}
	return s
}

// SensitiveName tells which variables' values a diff must hide.
func SensitiveName(key string) bool {
	k := strings.ToUpper(strings.TrimSpace(key))
	switch k {
	case "MINIO_KMS_API_KEY", "MINIO_KMS_KES_API_KEY", "MINIO_KMS_SECRET_KEY", "MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY", "MINIO_KMS_KES_KEY_PASSWORD":
		return true
	}
	return strings.Contains(k, "PASSWORD") || strings.Contains(k, "SECRET") || strings.HasSuffix(k, "_API_KEY") || strings.HasSuffix(k, "_TOKEN")
}

// RedactLine shows a line with a sensitive value as (sensitive), also when
// the line is commented out.
func RedactLine(line string) string {
	s := strings.TrimSuffix(line, "\r")
	body := strings.TrimLeft(strings.TrimSpace(s), "#")
	e, ok, err := ParseLine(body)
	if err != nil || !ok {
		if k, _, found := strings.Cut(strings.TrimPrefix(strings.TrimSpace(body), "export"), "="); found && SensitiveName(strings.TrimSpace(k)) {
			return strings.TrimSpace(k) + "=(sensitive)"
		}
		return s
	}
	if !SensitiveName(e.Key) {
		return s
	}
	i := strings.Index(s, "=")
	return s[:i+1] + "(sensitive)"
}

// Diff is a line diff of before → after, sensitive values hidden: "-"
// lines removed, "+" lines added, unchanged lines left out. The edit keeps
// the ordering, so a longest-common-subsequence diff is exact.
func Diff(before, after []byte) []string {
	a, b := Lines(string(before)), Lines(string(after))
	n, m := len(a), len(b)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "- "+RedactLine(a[i]))
			i++
		default:
			out = append(out, "+ "+RedactLine(b[j]))
			j++
		}
	}
	return out
}

// SHA256 is the hex SHA-256 of a file's content, as shasum -a 256 prints it.
func SHA256(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

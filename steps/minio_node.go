package steps

import (
	"fmt"
	"path"
	"regexp"
	"strings"
	"time"
)

// Facts about one MinIO server process that the cutover checks before any
// change: the release it runs and the certs dir it loads.

// minKeyManagerRelease is the first MinIO release with the Key Manager
// client (MINIO_KMS_SERVER, MINIO_KMS_ENCLAVE, MINIO_KMS_API_KEY): commit
// 8b660e18f "kms: add support for MinKMS" (#19368) of 2024-05-07 is in
// RELEASE.2024-05-10T01-41-38Z and not in RELEASE.2024-05-07T06-41-25Z
// (minio/minio history; docs/domain.md, "MinIO KMS variables"). An older server ignores those
// variables and, with MINIO_KMS_KES_* commented out, starts with no KMS.
var minKeyManagerRelease = time.Date(2024, 5, 10, 1, 41, 38, 0, time.UTC)

const minKeyManagerReleaseTag = "RELEASE.2024-05-10T01-41-38Z"

// releaseTagRE finds a release tag in a version string ("RELEASE.…Z", as
// `minio --version` prints it).
var releaseTagRE = regexp.MustCompile(`RELEASE\.(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z)`)

// minioRelease reads the release time from the Version a server reports
// (madmin ServerInfo Servers[].Version). A release build reports its
// release time in RFC 3339 ("2024-05-10T01:41:38Z": MinIO's
// buildscripts/gen-ldflags.go sets cmd.Version); a release tag is read
// too. ok is false for a build without release information, such as
// "DEVELOPMENT.GOGET" (go install or go build without MinIO's ldflags,
// cmd/build-constants.go).
func minioRelease(version string) (t time.Time, ok bool) {
	v := strings.TrimSpace(version)
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC(), true
	}
	if m := releaseTagRE.FindStringSubmatch(v); m != nil {
		if t, err := time.Parse("2006-01-02T15-04-05Z", m[1]); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// releaseTag is t as MinIO names its releases.
func releaseTag(t time.Time) string { return "RELEASE." + t.UTC().Format("2006-01-02T15-04-05Z") }

// releaseCheck judges a server's Version: "" when it supports the Key
// Manager, else why not (refuse is true) or why that cannot be told
// (refuse is false: a build without release information).
func releaseCheck(version string) (why string, refuse bool) {
	t, ok := minioRelease(version)
	if !ok {
		return fmt.Sprintf("its release cannot be told from its version %q (a build without MinIO's release information): confirm it is %s or later, the first with the Key Manager client", version, minKeyManagerReleaseTag), false
	}
	if t.Before(minKeyManagerRelease) {
		return fmt.Sprintf("it runs MinIO %s, older than %s, the first release with the Key Manager client (MINIO_KMS_SERVER): it would ignore the Key Manager's variables and, with MINIO_KMS_KES_* commented out, start with no KMS; upgrade it to %s or later first", releaseTag(t), minKeyManagerReleaseTag, minKeyManagerReleaseTag), true
	}
	return "", false
}

// minioArgsCertsDir finds the certs dir in MinIO's command-line words (a
// MINIO_OPTS value, or a unit's ExecStart): --certs-dir/-S (MinIO
// cmd/main.go GlobalFlags), else the deprecated --config-dir/-C, whose
// certs/ MinIO then uses (cmd/common-main.go). Go's flag syntax: one or
// two dashes, the value as the next word or after "=". "" when neither is
// given.
func minioArgsCertsDir(words []string) string {
	certs, config := "", ""
	for i := 0; i < len(words); i++ {
		w := words[i]
		if !strings.HasPrefix(w, "-") {
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(w, "-"), "=")
		if !hasVal && i+1 < len(words) {
			val = words[i+1]
		}
		switch name {
		case "certs-dir", "S":
			certs = val
		case "config-dir", "C":
			config = val
		default:
			continue
		}
		if !hasVal {
			i++
		}
	}
	if certs == "" && config != "" {
		return path.Join(config, "certs")
	}
	return certs
}

// expandUnitWords expands a systemd ExecStart argv: "$NAME" becomes the
// variable's value split at whitespace, "${NAME}" its value as one word
// (systemd.service(5), "Command lines").
func expandUnitWords(argv []string, env map[string]string) []string {
	var out []string
	for _, w := range argv {
		switch {
		case strings.HasPrefix(w, "${") && strings.HasSuffix(w, "}"):
			out = append(out, env[w[2:len(w)-1]])
		case strings.HasPrefix(w, "$") && len(w) > 1:
			out = append(out, strings.Fields(env[w[1:]])...)
		default:
			out = append(out, w)
		}
	}
	return out
}

// unitExecArgv reads the argv of `systemctl show -p ExecStart`:
// "{ path=/usr/local/bin/minio ; argv[]=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES ; ignore_errors=no ; … }".
func unitExecArgv(execStart string) []string {
	_, rest, ok := strings.Cut(execStart, "argv[]=")
	if !ok {
		return nil
	}
	argv, _, _ := strings.Cut(rest, " ;")
	return strings.Fields(argv)
}

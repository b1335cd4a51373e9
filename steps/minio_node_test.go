package steps

import (
	"strings"
	"testing"
)

func TestReleaseCheck(t *testing.T) {
	for _, c := range []struct {
		version string
		refuse  bool
		unknown bool
	}{
		// Versions as release servers report them (ServerInfo Version is
		// cmd.Version, RFC 3339, set by gen-ldflags.go).
		{"2024-05-10T01:41:38Z", false, false}, // the first with the Key Manager client
		{"2025-04-22T22:12:26Z", false, false}, // a later release
		{"2024-05-07T06:41:25Z", true, false},  // the release before it
		{"2023-12-20T01:00:02Z", true, false},  // an older one
		{"RELEASE.2024-05-07T06-41-25Z", true, false},
		{"minio version RELEASE.2024-05-28T17-19-04Z (commit-id=…)", false, false},
		{"DEVELOPMENT.GOGET", false, true}, // go build without ldflags: the tests' MinIO
		{"", false, true},
	} {
		why, refuse := releaseCheck(c.version)
		if refuse != c.refuse || (why != "") != (c.refuse || c.unknown) {
			t.Errorf("releaseCheck(%q) = %q, %v", c.version, why, refuse)
		}
		if c.refuse && !strings.Contains(why, "RELEASE.2024-05-10T01-41-38Z") {
			t.Errorf("releaseCheck(%q) = %q: no minimum release", c.version, why)
		}
	}
}

func TestMinIOArgsCertsDir(t *testing.T) {
	for args, want := range map[string]string{
		"--certs-dir /etc/minio/certs --address :9000":           "/etc/minio/certs",
		"--certs-dir=/etc/minio/certs":                           "/etc/minio/certs",
		"-S /opt/certs":                                          "/opt/certs",
		"-S=/opt/certs":                                          "/opt/certs",
		"-certs-dir /opt/c":                                      "/opt/c",
		"--address :9000 --console-address :9001":                "",
		"--config-dir /etc/minio":                                "/etc/minio/certs",
		"-C /etc/minio --certs-dir /etc/tls":                     "/etc/tls",
		"server --certs-dir /x https://minio{1...4}/data{1...4}": "/x",
		"": "",
	} {
		if got := minioArgsCertsDir(strings.Fields(args)); got != want {
			t.Errorf("minioArgsCertsDir(%q) = %q, want %q", args, got, want)
		}
	}
}

func TestUnitExecArgs(t *testing.T) {
	show := "{ path=/usr/local/bin/minio ; argv[]=/usr/local/bin/minio server $MINIO_OPTS ${MINIO_VOLUMES} ; ignore_errors=no ; start_time=[n/a] ; stop_time=[n/a] ; pid=0 ; code=(null) ; status=0/0 }"
	argv := unitExecArgv(show)
	got := expandUnitWords(argv, map[string]string{"MINIO_OPTS": "--certs-dir /etc/minio/certs  --address :9000", "MINIO_VOLUMES": "/data 1"})
	want := []string{"/usr/local/bin/minio", "server", "--certs-dir", "/etc/minio/certs", "--address", ":9000", "/data 1"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("expanded %q, want %q", got, want)
	}
	if d := minioArgsCertsDir(got); d != "/etc/minio/certs" {
		t.Errorf("certs dir %q", d)
	}
}

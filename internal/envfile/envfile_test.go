package envfile

import (
	"strings"
	"testing"
)

var kmSet = map[string]string{
	"MINIO_KMS_SERVER":  "https://kms-1:7373,https://kms-2:7373",
	"MINIO_KMS_ENCLAVE": "aistor-primary",
	"MINIO_KMS_API_KEY": "k1:SECRETSECRET",
	"MINIO_KMS_SSE_KEY": "minio-default-key",
}

func TestEditEnvCommentsKESAndAppends(t *testing.T) {
	t.Parallel()
	in := "# MinIO\nMINIO_ROOT_USER=admin\nexport MINIO_KMS_KES_ENDPOINT=\"https://kes:7373\"\n  MINIO_KMS_KES_KEY_NAME='minio-default-key'\n\nMINIO_VOLUMES=/data\nMINIO_KMS_KES_API_KEY=kes:v1:abc\n"
	out, err := Edit([]byte(in), kmSet)
	if err != nil {
		t.Fatal(err)
	}
	want := "# MinIO\nMINIO_ROOT_USER=admin\n#export MINIO_KMS_KES_ENDPOINT=\"https://kes:7373\"\n#  MINIO_KMS_KES_KEY_NAME='minio-default-key'\n\nMINIO_VOLUMES=/data\n#MINIO_KMS_KES_API_KEY=kes:v1:abc\n" + AppendHeader + "\nMINIO_KMS_SERVER=https://kms-1:7373,https://kms-2:7373\nMINIO_KMS_ENCLAVE=aistor-primary\nMINIO_KMS_API_KEY=k1:SECRETSECRET\nMINIO_KMS_SSE_KEY=minio-default-key\n"
	if string(out) != want {
		t.Fatalf("got:\n%s\nwant:\n%s", out, want)
	}
	again, err := Edit(out, kmSet)
	if err != nil || string(again) != string(out) {
		t.Fatalf("not idempotent: %v\n%s", err, again)
	}
}

func TestEditEnvReplacesInPlaceKeepingForm(t *testing.T) {
	t.Parallel()
	in := "export MINIO_KMS_SERVER=\"https://old:7373\"\nMINIO_KMS_KES_KEY_NAME=k\nMINIO_KMS_ENCLAVE='old'\nMINIO_OTHER=1\r\nMINIO_KMS_SSE_KEY=x\nMINIO_KMS_API_KEY=k1:old\n"
	out, err := Edit([]byte(in), kmSet)
	if err != nil {
		t.Fatal(err)
	}
	want := "export MINIO_KMS_SERVER=\"https://kms-1:7373,https://kms-2:7373\"\n#MINIO_KMS_KES_KEY_NAME=k\nMINIO_KMS_ENCLAVE='aistor-primary'\nMINIO_OTHER=1\r\nMINIO_KMS_SSE_KEY=minio-default-key\nMINIO_KMS_API_KEY=k1:SECRETSECRET\n"
	if string(out) != want {
		t.Fatalf("got:\n%q\nwant:\n%q", out, want)
	}
	env, err := Effective(out)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range kmSet {
		if env[k] != v {
			t.Errorf("MinIO would read %s=%q, want %q", k, env[k], v)
		}
	}
}

func TestEditEnvRefuses(t *testing.T) {
	t.Parallel()
	for name, in := range map[string]string{
		"malformed line": "MINIO_ROOT_USER=a\nnot a variable\n",
		"static key":     "MINIO_KMS_KES_KEY_NAME=k\nMINIO_KMS_SECRET_KEY=my-key:abc\n",
	} {
		if _, err := Edit([]byte(in), kmSet); err == nil {
			t.Errorf("%s: edit succeeded", name)
		}
	}
}

func TestParseEnvLineLikeMinIO(t *testing.T) {
	t.Parallel()
	for line, want := range map[string][2]string{
		"export A=b":     {"A", "b"},
		"  A=\"b c\"  ":  {"A", "b c"},
		"A='b'":          {"A", "b"},
		"A=\"b'":         {"A", "\"b'"},
		"A=b=c":          {"A", "b=c"},
		"A=":             {"A", ""},
		"export\tA=\"\"": {"A", ""},
	} {
		e, ok, err := ParseLine(line)
		if err != nil || !ok || e.Key != want[0] || e.Value != want[1] {
			t.Errorf("%q: got %q=%q ok=%v err=%v, want %q=%q", line, e.Key, e.Value, ok, err, want[0], want[1])
		}
	}
	for _, line := range []string{"", "   ", "# A=b", "  #A=b"} {
		if _, ok, err := ParseLine(line); ok || err != nil {
			t.Errorf("%q: parsed as an entry", line)
		}
	}
}

func TestEnvDiffHidesSecrets(t *testing.T) {
	t.Parallel()
	in := "MINIO_ROOT_PASSWORD=rootpw\nMINIO_KMS_KES_API_KEY=kes:v1:abc\nMINIO_KMS_KES_KEY_NAME=k\n"
	out, err := Edit([]byte(in), kmSet)
	if err != nil {
		t.Fatal(err)
	}
	diff := strings.Join(Diff([]byte(in), out), "\n")
	for _, secret := range []string{"SECRETSECRET", "kes:v1:abc", "rootpw"} {
		if strings.Contains(diff, secret) {
			t.Errorf("diff shows %q:\n%s", secret, diff)
		}
	}
	for _, want := range []string{"- MINIO_KMS_KES_API_KEY=(sensitive)", "+ #MINIO_KMS_KES_API_KEY=(sensitive)", "+ MINIO_KMS_API_KEY=(sensitive)", "+ MINIO_KMS_ENCLAVE=aistor-primary", "- MINIO_KMS_KES_KEY_NAME=k", "+ #MINIO_KMS_KES_KEY_NAME=k"} {
		if !strings.Contains(diff, want) {
			t.Errorf("diff lacks %q:\n%s", want, diff)
		}
	}
	if strings.Contains(diff, "MINIO_ROOT_PASSWORD") {
		t.Errorf("diff shows an unchanged line:\n%s", diff)
	}
}

// FuzzEdit edits arbitrary env files with arbitrary values. Whenever the
// edit succeeds: editing the edited file changes nothing (the cutover's
// resume edits again what a crash left edited), and MinIO reads from it what
// it read before, without the MINIO_KMS_KES_* variables and with the set
// ones.
func FuzzEdit(f *testing.F) {
	f.Add("# MinIO\nMINIO_ROOT_USER=admin\nexport MINIO_KMS_KES_ENDPOINT=\"https://kes:7373\"\n  MINIO_KMS_KES_KEY_NAME='minio-default-key'\n\nMINIO_VOLUMES=/data\n", "https://kms-1:7373", "aistor-primary", "k1:SECRET", "minio-default-key")
	f.Add("export MINIO_KMS_SERVER=\"https://old:7373\"\nMINIO_KMS_ENCLAVE='old'\nMINIO_OTHER=1\r\nMINIO_KMS_SSE_KEY=x\n", "https://kms-1:7373,https://kms-2:7373", "e", "k1:x", "k")
	f.Add("MINIO_KMS_SERVER=a\nMINIO_KMS_SERVER=b\n#MINIO_KMS_ENCLAVE=c\n", "'quoted'", "\"dq\"", "", " spaced ")
	f.Add("", "", "", "", "")
	f.Add("A=1\nA='2'\nexport  B=\"x\nC\n", "v", "v", "v", "v")
	f.Fuzz(func(t *testing.T, content, server, enclave, apiKey, sseKey string) {
		set := map[string]string{"MINIO_KMS_SERVER": server, "MINIO_KMS_ENCLAVE": enclave, "MINIO_KMS_API_KEY": apiKey, "MINIO_KMS_SSE_KEY": sseKey}
		out, err := Edit([]byte(content), set)
		if err != nil {
			return // refused: the cutover stops before any change
		}
		again, err := Edit(out, set)
		if err != nil {
			t.Fatalf("editing the edited file failed: %v\nedited:\n%q", err, out)
		}
		if string(again) != string(out) {
			t.Fatalf("the edit is not idempotent:\nonce:  %q\ntwice: %q", out, again)
		}
		before, err := Effective([]byte(content))
		if err != nil {
			t.Fatalf("Edit accepted a file Effective refuses: %v", err)
		}
		after, err := Effective(out)
		if err != nil {
			t.Fatalf("the edited file does not parse: %v", err)
		}
		want := map[string]string{}
		for k, v := range before {
			if !strings.HasPrefix(k, KESPrefix) {
				want[k] = v
			}
		}
		for k, v := range set {
			want[k] = v
		}
		if len(after) != len(want) {
			t.Fatalf("MinIO would read %d variables from the edited file, want %d:\nin:  %q\nout: %q", len(after), len(want), content, out)
		}
		for k, v := range want {
			if after[k] != v {
				t.Fatalf("MinIO would read %s=%q from the edited file, want %q:\nin:  %q\nout: %q", k, after[k], v, content, out)
			}
		}
	})
}

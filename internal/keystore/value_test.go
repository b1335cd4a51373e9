package keystore

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// Classify on the values KES's backends hand back from Get (kes@v0.24.0
// internal/keystore): fs returns the file, Vault the entry's field named
// after the key, AWS Secrets Manager the SecretString (KES writes keys
// there) or the SecretBinary (another application's), GCP Secret Manager
// version 1's payload, Azure Key Vault the secret's value. KES writes the
// same text into each, so the same values stand for every backend; the
// foreign ones are what other applications keep beside KES's keys: the AWS
// console's key/value secret (a JSON object), a token, a binary secret.
func TestClassify(t *testing.T) {
	material := bytes.Repeat([]byte{7}, 32)
	v024, err := kescrypto.Key{Algorithm: kescrypto.AES256, Material: material, HMAC: material}.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	v023, err := kescrypto.Key{Algorithm: kescrypto.ChaCha20, Material: material}.MarshalV023()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	v022 := []byte(`{"version":"v1","bytes":"` + b64(material) + `","algorithm":"XCHACHA20-POLY1305","created_at":"2023-01-02T03:04:05Z"}`)
	for _, c := range []struct {
		name   string
		value  []byte
		class  Class
		format string
		says   string
	}{
		{"KES v0.24 protobuf key", v024, ClassKey, FormatV024, ""},
		{"KES v0.23 JSON key", v023, ClassKey, FormatV023, ""},
		{"KES v0.22 JSON key, legacy algorithm", v022, ClassKey, FormatV023, ""},

		{"JSON key of the wrong length", []byte(`{"bytes":"` + b64(material[:16]) + `","algorithm":"AES256"}`), ClassBroken, FormatV023, "invalid key length 16"},
		{"JSON key of an unknown algorithm", []byte(`{"bytes":"` + b64(material) + `","algorithm":"DES"}`), ClassBroken, FormatV023, "not supported"},
		{"JSON key cut short", v023[:len(v023)/2], ClassBroken, FormatV023, "neither JSON"},
		{"protobuf key cut short", v024[:20], ClassBroken, FormatV024, ""},
		{"protobuf key with a newline (Go's base64, KES's too, skips it)", append(append([]byte{}, v024...), '\n'), ClassKey, FormatV024, ""},
		{"protobuf key with a byte changed", append(append(append([]byte{}, v024[:30]...), '!'), v024[31:]...), ClassBroken, FormatV024, "invalid base64"},
		{"empty value", nil, ClassBroken, FormatV024, "empty"},

		{"application secret (JSON key/value)", []byte(`{"username": "app", "password": "hunter2"}`), ClassForeign, "", "not a KES key"},
		{"JSON with bytes nested", []byte(`{"blob": {"bytes": "hunter2"}}`), ClassForeign, "", "not a KES key"},
		{"JSON array", []byte(`["hunter2"]`), ClassForeign, "", "not a KES key"},
		{"JSON string", []byte(`"hunter2"`), ClassForeign, "", "not a KES key"},
		{"a token", []byte("ghp_hunter2hunter2hunter2"), ClassForeign, "", "not a KES key"},
		{"a base64 token", []byte(b64([]byte("hunter2-hunter2-hunter2"))), ClassForeign, "", "not a KES key"},
		{"binary secret", []byte{0x00, 0xff, 'h', 'u', 'n', 't', 'e', 'r', '2', 0x80}, ClassForeign, "", "not a KES key"},
		{"PEM private key", []byte("-----BEGIN PRIVATE KEY-----\nhunter2\n-----END PRIVATE KEY-----\n"), ClassForeign, "", "not a KES key"},
	} {
		e := Classify(c.value)
		if e.Class != c.class || e.Format != c.format || !strings.Contains(e.Reason, c.says) || (c.class == ClassKey) != (e.Reason == "") {
			t.Errorf("%s: class %d format %q reason %q; want class %d format %q saying %q", c.name, e.Class, e.Format, e.Reason, c.class, c.format, c.says)
		}
		if strings.Contains(e.Reason, "hunter2") || (e.Class != ClassKey && e.Key.Material != nil) {
			t.Errorf("%s: the result holds the value: %+v", c.name, e)
		}
		if got := Foreign(c.value); got != (c.class == ClassForeign) {
			t.Errorf("%s: Foreign says %v, Classify class %d", c.name, got, c.class)
		}
	}
}

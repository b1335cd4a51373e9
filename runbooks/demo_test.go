package runbooks

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

var update = flag.Bool("update", false, "regenerate the demo key store")

// TestDemoKeyStore checks that the bundled key store is what the demo says:
// keys in both formats KES writes (v0.24 protobuf and v0.23 JSON), both
// algorithms, all parsing. With -update it writes a fresh one.
func TestDemoKeyStore(t *testing.T) {
	dir := filepath.Join("demo", "keystore")
	if *update {
		writeDemoKeyStore(t, dir)
	}
	counts := map[string]int{}
	err := fs.WalkDir(Demo, "demo/keystore", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := fs.ReadFile(Demo, p)
		if err != nil {
			return err
		}
		k, err := kescrypto.ParseKey(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		format := "v0.23"
		if k.HMAC != nil {
			format = "v0.24"
		}
		counts[format+"/"+k.Algorithm.String()]++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"v0.24/AES256", "v0.24/ChaCha20", "v0.23/AES256", "v0.23/ChaCha20"} {
		if counts[want] == 0 {
			t.Errorf("the demo key store has no %s key (has %v)", want, counts)
		}
	}
}

func writeDemoKeyStore(t *testing.T, dir string) {
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	created := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	apps := []string{"finance", "hr", "logs", "backup", "media", "analytics"}
	for i := 0; i < 48; i++ {
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), CreatedAt: created.Add(time.Duration(i) * time.Hour), CreatedBy: "3ecfcdf38fcbe141ae26a1030f81e96b753365a46760ae6b578698a97c59fd22"}
		if i%3 == 2 {
			k.Algorithm = kescrypto.ChaCha20
		}
		rand.Read(k.Material)
		var raw []byte
		var err error
		name := fmt.Sprintf("%s-key-%02d", apps[i%len(apps)], i)
		if i%2 == 0 {
			k.HMAC = make([]byte, 32)
			rand.Read(k.HMAC)
			raw, err = k.MarshalV024()
		} else {
			raw, err = k.MarshalV023()
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

package emulator

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// TestFaultRefuseFormats: with msgpack refused, the vendor's client gets
// kms.ErrDecrypt for a KES v0.22/v0.23 msgpack ciphertext of an imported
// key, while the raw and JSON ones of the same key still decrypt.
func TestFaultRefuseFormats(t *testing.T) {
	t.Parallel()
	if err := CheckRefuseFormats([]string{"raw"}); err == nil {
		t.Error("refusing the raw format was accepted")
	}
	s := startServer(t, Config{FaultRefuseFormats: []string{FormatMsgpack}})
	c := newClient(t, s, s.RootAPIKey())
	ctx := context.Background()
	if err := c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}); err != nil {
		t.Fatal(err)
	}
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	rand.Read(k.Material)
	if err := c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "k", Type: kms.AES256, Key: k.Material}); err != nil {
		t.Fatal(err)
	}
	pt, aad := []byte("plaintext"), []byte("aad")
	for _, f := range []struct {
		name    string
		seal    func(kescrypto.Key, []byte, []byte) ([]byte, error)
		refused bool
	}{
		{"raw", kescrypto.Seal, false},
		{"msgpack", kescrypto.SealMsgpack, true},
		{"json", kescrypto.SealLegacyJSON, false},
	} {
		ct, err := f.seal(k, pt, aad)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Decrypt(ctx, "e", &kms.DecryptRequest{Name: "k", Ciphertext: ct, AssociatedData: aad})
		switch {
		case f.refused && !errors.Is(err, kms.ErrDecrypt):
			t.Errorf("%s: got %v, want %v", f.name, err, kms.ErrDecrypt)
		case !f.refused && (err != nil || !bytes.Equal(resp[0].Plaintext, pt)):
			t.Errorf("%s: not decrypted: %v", f.name, err)
		}
	}
}

package steps

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// decryptsTo has the Key Manager decrypt ciphertext (version 0, as MinIO
// sends it) and reports whether it gives want. kms.ErrDecrypt — the key
// there cannot open what was sealed — is false, not an error.
func decryptsTo(ctx context.Context, c *kms.Client, enclave, name string, ciphertext, aad, want []byte) (bool, error) {
	var resp []*kms.DecryptResponse
	err := withRetry(ctx, func() error {
		var err error
		resp, err = c.Decrypt(ctx, enclave, &kms.DecryptRequest{Name: name, Version: 0, Ciphertext: ciphertext, AssociatedData: aad})
		return err
	})
	switch {
	case errors.Is(err, kms.ErrDecrypt):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("decrypt at the Key Manager: %w", err)
	case len(resp) != 1:
		return false, fmt.Errorf("decrypt at the Key Manager: %d answers to one request", len(resp))
	}
	defer clear(resp[0].Plaintext)
	return subtle.ConstantTimeCompare(resp[0].Plaintext, want) == 1, nil
}

// sealedRoundTrip seals a random plaintext under k here, in KES's raw
// format, and reports whether the Key Manager's key name decrypts it to the
// same bytes: the proof that both hold the same key, without exporting it.
func sealedRoundTrip(ctx context.Context, c *kms.Client, enclave, name string, k kescrypto.Key, aad []byte) (bool, error) {
	plaintext := make([]byte, 32)
	if _, err := rand.Read(plaintext); err != nil {
		return false, fmt.Errorf("draw plaintext: %w", err)
	}
	defer clear(plaintext)
	ciphertext, err := kescrypto.Seal(k, plaintext, aad)
	if err != nil {
		return false, fmt.Errorf("seal locally: %w", err)
	}
	return decryptsTo(ctx, c, enclave, name, ciphertext, aad, plaintext)
}

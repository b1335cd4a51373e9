package steps

import (
	"crypto/rand"
	"testing"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

func BenchmarkSealV023(b *testing.B) {
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	rand.Read(k.Material)
	for b.Loop() {
		sealProofs("key-000123", k, formatV023)
	}
}
func BenchmarkSealV024(b *testing.B) {
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}
	rand.Read(k.Material)
	for b.Loop() {
		sealProofs("key-000123", k, formatV024)
	}
}
func BenchmarkVerifyContext(b *testing.B) {
	for b.Loop() {
		verifyContext("key-000123")
	}
}

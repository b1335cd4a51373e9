package emulator

import (
	"strconv"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"
)

// BenchmarkImportKey imports b.N keys one request at a time through the
// vendor client over loopback TLS, as a migration does. Run with
// -benchtime=100000x to reproduce the migration benchmark.
func BenchmarkImportKey(b *testing.B) {
	s := startServer(b, Config{})
	c := newClient(b, s, s.RootAPIKey())
	must(b, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "bench"}))
	key := make([]byte, 32)
	must(b, c.ImportKey(ctx, "bench", &kms.ImportKeyRequest{Name: "warmup", Type: kms.AES256, Key: key}))

	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if err := c.ImportKey(ctx, "bench", &kms.ImportKeyRequest{Name: "key-" + strconv.Itoa(i), Type: kms.AES256, Key: key}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "keys/s")
}

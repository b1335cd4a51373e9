package steps

import (
	"crypto/tls"
	"net/http"
	"os"
	"sync"
	"testing"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// TestProbeTransportsOwnTLSConfig: the write probes' transports, one per
// server, each set HTTP/2 up on a TLS config of their own when they are
// first asked at once (as askEach asks them): net/http writes "h2" into
// the config's NextProtos at that moment, and one config shared by every
// transport crashed a cutover's resume (the race detector tier sees the
// writes race). The config given stays as it was.
func TestProbeTransportsOwnTLSConfig(t *testing.T) {
	t.Parallel()
	km := testenv.StartKeyManager(t, testenv.KeyManagerOptions{}) // any HTTPS server speaking HTTP/2
	pem, err := os.ReadFile(km.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	given, _, err := clientTLS(pem, false, "")
	if err != nil {
		t.Fatal(err)
	}
	var trs []*http.Transport
	for range 8 {
		trs = append(trs, probeTransport(given))
	}
	var wg sync.WaitGroup
	for _, tr := range trs {
		wg.Go(func() {
			resp, err := (&http.Client{Transport: tr}).Get(km.URL + "/version")
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.ProtoMajor != 2 {
				t.Errorf("answered over %s, want HTTP/2 (the set-up that writes the config)", resp.Proto)
			}
		})
	}
	wg.Wait()
	seen := map[*tls.Config]bool{given: true}
	for _, tr := range trs {
		tr.CloseIdleConnections()
		if seen[tr.TLSClientConfig] {
			t.Fatal("two probe transports share one TLS config (or use the one given)")
		}
		seen[tr.TLSClientConfig] = true
	}
	if len(given.NextProtos) != 0 {
		t.Errorf("the TLS config given was written: NextProtos %v", given.NextProtos)
	}
}

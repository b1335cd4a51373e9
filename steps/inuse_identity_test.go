package steps

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// TestParseKMEndpoint: spellings of one address normalise alike; an https
// URL without a port is port 443, as kms-go reaches it.
func TestParseKMEndpoint(t *testing.T) {
	for _, tc := range []struct{ in, host, port string }{
		{"https://KMS-1.example.net:7373", "kms-1.example.net", "7373"},
		{"kms-1.example.net:7373", "kms-1.example.net", "7373"},
		{"http://kms-1.example.net.:7373/", "kms-1.example.net", "7373"},
		{"https://kms.example.net", "kms.example.net", "443"},
		{" https://[::1]:7373 ", "::1", "7373"},
	} {
		e, err := parseKMEndpoint(tc.in)
		if err != nil || e.host != tc.host || e.port != tc.port {
			t.Errorf("parseKMEndpoint(%q) = %q %q, %v; want %q %q", tc.in, e.host, e.port, err, tc.host, tc.port)
		}
	}
	if _, err := parseKMEndpoint("https://"); err == nil {
		t.Errorf("parseKMEndpoint accepted an endpoint without a host")
	}
}

// TestKMIdentity judges endpoints against a real emulator: the same one
// spelled otherwise (localhost, a TCP balancer in front)
// is the same; another emulator, which does not know the runbook's SysAdmin
// key, is another; an address nothing answers on is in doubt.
func TestKMIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := testenv.StartKeyManager(t, testenv.KeyManagerOptions{})
	b := testenv.StartKeyManager(t, testenv.KeyManagerOptions{})
	for _, km := range []*testenv.KeyManager{a, b} {
		if err := km.Client().CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}); err != nil {
			t.Fatal(err)
		}
	}
	conn := &keyManagerConnection{cfg: keyManagerConfig{Servers: []string{a.URL}, APIKey: a.RootAPIKey}}
	conn.once.Do(func() { conn.client = a.Client() })
	id := newKMIdentity(nil, enclaveRef{Name: "e", KM: conn, Addr: "key_manager.a"})

	lb := testenv.StartBalancer(t, a.Addr).Addr
	_, port, _ := net.SplitHostPort(a.Addr)
	_, lbPort, _ := net.SplitHostPort(lb)
	for _, tc := range []struct {
		endpoint string
		want     kmVerdict
		why      string
	}{
		{a.URL, kmSame, " is " + a.URL},
		{"https://localhost:" + port, kmSame, "resolves to 127.0.0.1, as " + a.URL + " does"},
		{"https://127.0.0.1:" + lbPort, kmSame, "presents the TLS key of " + a.URL},
		{"localhost:" + lbPort, kmSame, "presents the TLS key of " + a.URL},
		{b.URL, kmOther, "another Key Manager: another TLS key, and it does not know the runbook's SysAdmin identity"},
		{"https://127.0.0.1:1", kmDoubt, "could not tell whether https://127.0.0.1:1 is the Key Manager of enclave e: it did not answer"},
	} {
		v, why := id.judge(ctx, tc.endpoint)
		if v != tc.want || !strings.Contains(why, tc.why) {
			t.Errorf("judge(%s) = %d, %q; want %d with %q", tc.endpoint, v, why, tc.want, tc.why)
		}
	}
	if v, why := id.judgeAll(ctx, []string{"https://127.0.0.1:1", b.URL, "https://localhost:" + lbPort}); v != kmSame {
		t.Errorf("judgeAll with the enclave's Key Manager third = %d, %q; want the same", v, why)
	}
	if v, why := id.judgeAll(ctx, []string{"https://127.0.0.1:1", b.URL}); v != kmDoubt {
		t.Errorf("judgeAll with one in doubt and another Key Manager = %d, %q; want doubt", v, why)
	}
}

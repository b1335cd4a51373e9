package steps

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// otherCA is a CA certificate that signed nothing here.
func otherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "unrelated CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestTrustFromLocalNode checks a local node's trust in a real TLS server
// the way MinIO would load it: every file of certs/CAs (a bundle of several
// certificates counts), no other CA variable.
func TestTrustFromLocalNode(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer srv.Close()
	serverCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	l := &linuxPlatform{nodes: []*envNode{{Name: "/etc/default/minio", Path: "/etc/default/minio"}}, target: kmTarget{Endpoints: []string{srv.URL}, CAFile: "km-ca.pem"}}
	ctx := context.Background()
	certsDir := func(files map[string][]byte) string {
		dir := t.TempDir()
		if err := os.MkdirAll(filepath.Join(dir, "CAs"), 0o700); err != nil {
			t.Fatal(err)
		}
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, "CAs", name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}

	// certs/CAs lacks the CA; the key_manager block's ca_file would do
	_, lacks, err := l.trustFrom(ctx, nil, 0, certsDir(map[string][]byte{"minio-ca.pem": otherCA(t)}), serverCA)
	if err != nil || !strings.Contains(lacks, "1 certificate(s)") || !strings.Contains(lacks, "install_ca = true") {
		t.Errorf("lacking the CA: lacks %q, err %v", lacks, err)
	}
	// a bundle file of several certificates, the CA among them
	bundle := append(otherCA(t), serverCA...)
	trust, lacks, err := l.trustFrom(ctx, nil, 0, certsDir(map[string][]byte{"bundle.crt": bundle, "minio-ca.pem": otherCA(t)}), serverCA)
	if err != nil || lacks != "" || !strings.Contains(trust, "verifies its certificate") {
		t.Errorf("CA in a bundle: trust %q, lacks %q, err %v", trust, lacks, err)
	}
	// neither certs/CAs nor ca_file verifies it
	_, _, err = l.trustFrom(ctx, nil, 0, certsDir(nil), otherCA(t))
	if err == nil || !strings.Contains(err.Error(), "neither does the key_manager block's ca_file") {
		t.Errorf("no CA at all: err %v", err)
	}
	// an endpoint the node cannot reach
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()
	l.target.Endpoints = []string{closed}
	_, _, err = l.trustFrom(ctx, nil, 0, certsDir(nil), serverCA)
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Key Manager "+closed+" from the node") {
		t.Errorf("unreachable: err %v", err)
	}
}

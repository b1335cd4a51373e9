package emulator

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"google.golang.org/protobuf/proto"
)

func startServer(t testing.TB, cfg Config) *Server {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func caPool(t testing.TB, s *Server) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(s.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("CA file holds no certificate")
	}
	return pool
}

// newClient returns a vendor client for the API key. kms-go needs a
// non-nil TLS config with an API key (DOMAIN B1 caveat).
func newClient(t testing.TB, s *Server, apiKey string) *kms.Client {
	t.Helper()
	key, err := mtls.ParsePrivateKey(apiKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kms.NewClient(&kms.Config{
		Endpoints: []string{s.Addr()},
		APIKey:    key,
		TLS:       &tls.Config{RootCAs: caPool(t, s)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newAPIKey(t testing.TB) mtls.PrivateKey {
	t.Helper()
	k, err := mtls.GenerateKeyEdDSA(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// rawClient is a plain HTTPS client presenting the API key's certificate,
// built exactly as kms.NewClient does (kms.GenerateCertificate).
func rawClient(t testing.TB, s *Server, apiKey string) *http.Client {
	t.Helper()
	key, err := mtls.ParsePrivateKey(apiKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := kms.GenerateCertificate(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: caPool(t, s), Certificates: []tls.Certificate{cert}},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type rawResponse struct {
	status      int
	contentType string
	length      string
	body        []byte
	proto       int
}

func post(t testing.TB, c *http.Client, url, contentType string, body []byte) rawResponse {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return rawResponse{resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Content-Length"), b, resp.ProtoMajor}
}

// errMessage decodes an error body as the vendor client does.
func errMessage(t testing.TB, r rawResponse) string {
	t.Helper()
	var m pb.ErrResponse
	switch r.contentType {
	case "application/octet-stream":
		if err := proto.Unmarshal(r.body, &m); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("unexpected content type %q", r.contentType)
	}
	return m.Message
}

func encodeFrame(t testing.TB, c cmds.Command, msg proto.Message) []byte {
	t.Helper()
	b, err := cmds.EncodePB(nil, c, msg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func frameHeader(c uint16, n uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, c)
	return binary.BigEndian.AppendUint32(b, n)
}

func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func tlsConfig(t testing.TB, s *Server) *tls.Config {
	return &tls.Config{RootCAs: caPool(t, s)}
}

func mustServerCert(t testing.TB, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(dir + "/" + serverCertFile)
	must(t, err)
	block, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(block.Bytes)
	must(t, err)
	return c
}

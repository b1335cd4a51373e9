package steps

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/internal/devcert"
)

// tlsServer serves TLS with a certificate devcert made (valid for
// 127.0.0.1, ::1 and localhost, signed by a new CA named after name) and
// returns its address and the CA's file.
func tlsServer(t *testing.T, name string) (addr, caFile string) {
	t.Helper()
	f, err := devcert.Generate(t.TempDir(), name)
	if err != nil {
		t.Fatal(err)
	}
	return serveTLS(t, f.CertFile, f.KeyFile), f.CAFile
}

func pool(t *testing.T, files ...string) *x509.CertPool {
	t.Helper()
	p, err := devcert.Pool(files...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// handshake dials addr as net/http does for a URL naming host.
func handshake(addr, host string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.ServerName = host
	c, err := tls.Dial("tcp", addr, cfg)
	if err == nil {
		c.Close()
	}
	return err
}

// TestVerifyCAFirst: a server the CA file signed is verified without the
// system roots; one it did not sign is tried against them; a wrong host
// fails without them; and every outcome and error is the one crypto/tls
// gives verifying against a pool of both (the same type and text).
func TestVerifyCAFirst(t *testing.T) {
	ours, ourCA := tlsServer(t, "kes")
	public, publicCA := tlsServer(t, "public")
	renewed, _ := tlsServer(t, "kes") // a CA of the same name with another key
	_, otherCA := tlsServer(t, "other")

	for _, tc := range []struct {
		name       string
		addr, host string
		system     string // the CA file the fallback's "system roots" hold
		fails      bool
		asksSystem bool
	}{
		{name: "the CA file signed it", addr: ours, host: "127.0.0.1", system: publicCA},
		{name: "the CA file signed it, by name", addr: ours, host: "localhost", system: publicCA},
		{name: "a system root signed it", addr: public, host: "127.0.0.1", system: publicCA, asksSystem: true},
		{name: "no one known signed it", addr: public, host: "127.0.0.1", system: otherCA, fails: true, asksSystem: true},
		{name: "a CA of the same name signed it", addr: renewed, host: "127.0.0.1", system: publicCA, fails: true, asksSystem: true},
		{name: "another address", addr: ours, host: "10.9.9.9", system: publicCA, fails: true},
		{name: "another name", addr: ours, host: "kes.example.net", system: publicCA, fails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			asked := 0
			cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
				VerifyConnection: verifyCAFirst(pool(t, ourCA), tc.host, func() *x509.CertPool { asked++; return pool(t, tc.system) })}
			err := handshake(tc.addr, tc.host, cfg)
			want := handshake(tc.addr, tc.host, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool(t, ourCA, tc.system)})
			if (err != nil) != tc.fails || (want != nil) != tc.fails {
				t.Fatalf("handshake: %v; crypto/tls against both pools: %v; want failure %v", err, want, tc.fails)
			}
			if (asked > 0) != tc.asksSystem {
				t.Errorf("the system roots were asked for %d time(s), want asked %v", asked, tc.asksSystem)
			}
			if err == nil {
				return
			}
			var got, exp *tls.CertificateVerificationError
			if !errors.As(err, &got) || !errors.As(want, &exp) {
				t.Fatalf("errors %T and %T, want *tls.CertificateVerificationError both", err, want)
			}
			if err.Error() != want.Error() {
				t.Errorf("error %q\nwant  %q (crypto/tls's)", err, want)
			}
		})
	}
}

// TestClientTLS: the settings a connection to one host gets verify it with
// the CA file (crypto/tls's check left off for verifyCAFirst), by the name
// a dial sends or else by that host; a connection to several hosts keeps
// crypto/tls's pool of both; insecure verifies nothing; and each says
// what it trusts.
func TestClientTLS(t *testing.T) {
	ours, ourCA := tlsServer(t, "kes")
	pem, err := os.ReadFile(ourCA)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(pem)
	for _, tc := range []struct {
		host     string
		insecure bool
		trust    string
		anyName  bool // a dial that sends another name verifies
	}{
		{host: "127.0.0.1", trust: "system " + hex.EncodeToString(sum[:])},
		{host: "", trust: "system " + hex.EncodeToString(sum[:])},
		{host: "127.0.0.1", insecure: true, trust: "insecure " + hex.EncodeToString(sum[:]), anyName: true},
	} {
		cfg, trust, err := clientTLS(pem, tc.insecure, tc.host)
		if err != nil {
			t.Fatal(err)
		}
		if trust != tc.trust {
			t.Errorf("host %q, insecure %v: trust %q, want %q", tc.host, tc.insecure, trust, tc.trust)
		}
		if err := handshake(ours, "127.0.0.1", cfg); err != nil {
			t.Errorf("host %q, insecure %v: %v", tc.host, tc.insecure, err)
		}
		// A name the dial sends is the name checked (an HTTPS proxy's).
		if err := handshake(ours, "kes.example.net", cfg); (err == nil) != tc.anyName {
			t.Errorf("host %q, insecure %v: dialled as kes.example.net: %v", tc.host, tc.insecure, err)
		}
	}
	// Settings for a host the certificate does not name refuse it.
	cfg, _, err := clientTLS(pem, false, "10.9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	var hostErr x509.HostnameError
	if err := handshake(ours, "10.9.9.9", cfg); !errors.As(err, &hostErr) {
		t.Errorf("a certificate for another host: %v, want an x509.HostnameError", err)
	}
	if _, _, err := clientTLS([]byte("not PEM"), false, "127.0.0.1"); err == nil {
		t.Error("a CA file without a certificate was taken")
	}
	cfg, trust, err := clientTLS(nil, false, "127.0.0.1")
	if err != nil || trust != "system" || cfg.RootCAs != nil || cfg.InsecureSkipVerify || cfg.VerifyConnection != nil {
		t.Errorf("no CA file: trust %q, err %v, %+v; want crypto/tls's own check against the system roots", trust, err, cfg)
	}
}

func TestOneHost(t *testing.T) {
	for _, tc := range []struct {
		endpoints []string
		want      string
	}{
		{[]string{"https://kes.example.net:7373"}, "kes.example.net"},
		{[]string{"kms-1.example.net:7373"}, "kms-1.example.net"},
		{[]string{"127.0.0.1:7373", "https://127.0.0.1:7374"}, "127.0.0.1"},
		{[]string{"[::1]:7373"}, "::1"},
		{[]string{"kms-1.example.net:7373", "kms-2.example.net:7373"}, ""},
		{[]string{"https://:7373"}, ""},
		{nil, ""},
	} {
		if got := oneHost(tc.endpoints...); got != tc.want {
			t.Errorf("oneHost(%q) = %q, want %q", tc.endpoints, got, tc.want)
		}
	}
}

// TestRootsMatter: only a failure other roots could undo is tried against
// the system roots.
func TestRootsMatter(t *testing.T) {
	leaf, other := &x509.Certificate{}, &x509.Certificate{}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{x509.UnknownAuthorityError{Cert: leaf}, true},
		{x509.HostnameError{Certificate: leaf, Host: "kes.example.net"}, false},
		{x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired}, false},
		{x509.CertificateInvalidError{Cert: other, Reason: x509.Expired}, true},
		{x509.CertificateInvalidError{Cert: other, Reason: x509.CANotAuthorizedForThisName}, true},
	} {
		if got := rootsMatter(tc.err, leaf); got != tc.want {
			t.Errorf("rootsMatter(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestHTTPSProxied: behind an HTTPS proxy a connection keeps crypto/tls's
// own check (the proxy's connection is opened with the same settings);
// without one, or for a host NO_PROXY names, it verifies with the CA file
// first. net/http reads the proxy variables once per process, so the test
// runs itself again with each environment.
func TestHTTPSProxied(t *testing.T) {
	if want := os.Getenv("RUNBOOK_TEST_PROXIED"); want != "" {
		_, ca := tlsServer(t, "kes")
		pem, err := os.ReadFile(ca)
		if err != nil {
			t.Fatal(err)
		}
		for host, proxied := range map[string]bool{"kms.example.net": want == "proxy", "kes.internal": false} {
			cfg, _, err := clientTLS(pem, false, host)
			if err != nil {
				t.Fatal(err)
			}
			if httpsProxied(host) != proxied || (cfg.VerifyConnection == nil) != proxied || (cfg.RootCAs != nil) != proxied {
				t.Errorf("%s: httpsProxied %v, VerifyConnection set %v, RootCAs set %v; want proxied %v (crypto/tls's pool when proxied)", host, httpsProxied(host), cfg.VerifyConnection != nil, cfg.RootCAs != nil, proxied)
			}
		}
		return
	}
	for _, env := range [][]string{
		{"RUNBOOK_TEST_PROXIED=proxy", "HTTPS_PROXY=https://proxy.example.net:3128", "NO_PROXY=kes.internal"},
		{"RUNBOOK_TEST_PROXIED=none", "HTTPS_PROXY=", "https_proxy=", "NO_PROXY=kes.internal"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHTTPSProxied$", "-test.count=1")
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("with %q: %v\n%s", env, err, out)
		}
	}
}

// TestFIPSModeKeepsCryptoTLSCheck: in FIPS 140-3 mode crypto/tls keeps only
// the chains whose every key FIPS allows, which verifyCAFirst does not
// check: a connection then takes crypto/tls's own verification against the
// system roots plus the CA file. It still reaches a server the CA file
// signs, and refuses one whose CA's key FIPS does not allow (P-224), which
// outside FIPS mode it reaches. The test runs itself again with
// GODEBUG=fips140=on (read once per process).
func TestFIPSModeKeepsCryptoTLSCheck(t *testing.T) {
	if os.Getenv("RUNBOOK_TEST_FIPS") == "" {
		weak := weakCAServerFiles(t)
		addr := serveTLS(t, filepath.Join(weak, "cert.pem"), filepath.Join(weak, "key.pem"))
		if err := handshakeWithCA(t, addr, weak); err != nil {
			t.Fatalf("outside FIPS mode, a server whose CA has a P-224 key: %v, want it reached", err)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestFIPSModeKeepsCryptoTLSCheck$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), "RUNBOOK_TEST_FIPS="+weak, "GODEBUG=fips140=on")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestFIPSModeKeepsCryptoTLSCheck") {
			t.Errorf("with GODEBUG=fips140=on: %v\n%s", err, out)
		}
		return
	}
	if !fips140.Enabled() {
		t.Fatal("GODEBUG=fips140=on did not turn FIPS 140-3 mode on in this test binary")
	}
	ours, ourCA := tlsServer(t, "kes")
	pem, err := os.ReadFile(ourCA)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := clientTLS(pem, false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.VerifyConnection != nil || cfg.InsecureSkipVerify || cfg.RootCAs == nil {
		t.Errorf("FIPS mode: VerifyConnection set %v, InsecureSkipVerify %v, RootCAs set %v; want crypto/tls's own check against a pool", cfg.VerifyConnection != nil, cfg.InsecureSkipVerify, cfg.RootCAs != nil)
	}
	if err := handshake(ours, "127.0.0.1", cfg); err != nil {
		t.Errorf("FIPS mode, a server the CA file signs: %v", err)
	}
	weak := os.Getenv("RUNBOOK_TEST_FIPS")
	if err := handshakeWithCA(t, serveTLS(t, filepath.Join(weak, "cert.pem"), filepath.Join(weak, "key.pem")), weak); err == nil || !strings.Contains(err.Error(), "FIPS") {
		t.Errorf("FIPS mode, a server whose CA has a P-224 key: %v, want crypto/tls's refusal of a chain FIPS does not allow", err)
	}
}

// weakCAServerFiles writes, into a new directory it returns, a CA with a
// P-224 key (ca.pem), which FIPS 140-3 does not allow in a chain, and a
// P-256 certificate for 127.0.0.1 it signs (cert.pem, key.pem).
func weakCAServerFiles(t *testing.T) string {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "P-224 test CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for name, b := range map[string]*pem.Block{"ca.pem": {Type: "CERTIFICATE", Bytes: caDER}, "cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// serveTLS serves TLS with the certificate and key of the files given,
// completing each handshake, and returns the address.
func serveTLS(t *testing.T, certFile, keyFile string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// handshakeWithCA dials addr with the settings clientTLS makes for dir's
// ca.pem and the host 127.0.0.1.
func handshakeWithCA(t *testing.T, addr, dir string) error {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := clientTLS(caPEM, false, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return handshake(addr, "127.0.0.1", cfg)
}

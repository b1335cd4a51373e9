package steps

import (
	"crypto/fips140"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/runbook-dev/runbook/engine"
)

// tlsConfig builds the client TLS settings of a connection: the system roots
// plus caFile, verified unless insecure is set explicitly.
func tlsConfig(r *engine.Run, caFile string, insecure bool) (*tls.Config, error) {
	cfg, _, err := tlsConfigFor(r, caFile, insecure, "")
	return cfg, err
}

// tlsConfigFor is tlsConfig for a connection whose every request goes to
// host (a name or an address, without the port; "" when it has several),
// and what the settings trust, to tell clients apart (clientKey):
// "insecure", "system" (the system roots alone), or the SHA-256 of caFile's
// content (hex). Given host and a CA file, the server is verified against
// the CA file first and the system roots only if that fails
// (verifyCAFirst; not through an HTTPS proxy: httpsProxied, nor in FIPS
// 140-3 mode, where crypto/tls also keeps only the chains whose every key
// FIPS allows, a check verifyCAFirst does not repeat): crypto/tls
// verifies a pool of both, which loads the system roots at the first
// connection.
func tlsConfigFor(r *engine.Run, caFile string, insecure bool, host string) (*tls.Config, string, error) {
	var pem []byte
	if caFile != "" {
		var err error
		if pem, err = r.ReadFile(caFile); err != nil {
			return nil, "", fmt.Errorf("read CA file: %w", err)
		}
	}
	cfg, trust, err := clientTLS(pem, insecure, host)
	if err != nil {
		return nil, "", fmt.Errorf("read CA file %s: %w", caFile, err)
	}
	return cfg, trust, nil
}

// clientTLS is tlsConfigFor with the CA file's content (nil: none).
func clientTLS(pem []byte, insecure bool, host string) (*tls.Config, string, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure}
	trust := "system"
	if insecure {
		trust = "insecure"
	}
	if pem == nil {
		if !insecure {
			warmSystemRoots()
		}
		return cfg, trust, nil
	}
	ca := x509.NewCertPool()
	if !ca.AppendCertsFromPEM(pem) {
		return nil, "", errors.New("no PEM certificate in it")
	}
	sum := sha256.Sum256(pem)
	trust += " " + hex.EncodeToString(sum[:])
	switch {
	case insecure:
	case host != "" && !httpsProxied(host) && !fips140.Enabled():
		cfg.InsecureSkipVerify = true // verified by verifyCAFirst, as crypto/tls would
		cfg.VerifyConnection = verifyCAFirst(ca, host, func() *x509.CertPool { return nil })
	default:
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		pool.AppendCertsFromPEM(pem)
		cfg.RootCAs = pool
	}
	return cfg, trust, nil
}

// httpsProxied reports whether the environment sends requests to host
// through a proxy reached over TLS (HTTPS_PROXY=https://…): net/http opens
// that connection with the same settings, to the proxy's name, which
// verifyCAFirst would check as host's when it is an address. A NO_PROXY
// entry with a port is not matched here (no port is given): such a host
// keeps crypto/tls's own check, which is right either way.
func httpsProxied(host string) bool {
	u, err := http.ProxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: "https", Host: host}})
	return err == nil && u != nil && u.Scheme == "https"
}

// warmSystemRoots starts loading the system roots (x509.SystemCertPool
// keeps them), once, for a connection that will need them: the plan's
// other work runs meanwhile rather than its first handshake waiting for
// the load.
var warmSystemRoots = sync.OnceFunc(func() { go x509.SystemCertPool() }) //nolint:errcheck // an error is met again at the first handshake

// verifyCAFirst verifies a server's certificate as crypto/tls does against
// the system roots plus a CA file, without loading the system roots when
// the CA file verifies it. Loading them parses every certificate of the
// system bundle and of /etc/ssl/certs: 45-55 ms of CPU on this Debian VM,
// in every process, for a KES server and a Key Manager that a private CA
// signs. The name checked is the one the connection was opened with (its
// server name, as crypto/tls checks it), or host when that is an address
// (no server name is sent for one). A chain verifies against a union of
// pools when it verifies against one of them (every pooled certificate is
// an anchor); a wrong name, or a leaf expired or otherwise invalid in
// itself, fails alike against any roots, and any other failure is tried
// against fallback's roots (nil: the system's, as x509.Certificate.Verify
// loads them). The error is crypto/tls's for a failed verification, with
// the CA file's reason (its hint names a CA of the same name whose key
// differs).
func verifyCAFirst(ca *x509.CertPool, host string, fallback func() *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: the server presented no certificate")
		}
		name := cs.ServerName
		if name == "" {
			name = host
		}
		err := verifyChain(cs.PeerCertificates, ca, name)
		if err == nil || rootsMatter(err, cs.PeerCertificates[0]) && verifyChain(cs.PeerCertificates, fallback(), name) == nil {
			return nil
		}
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
}

// rootsMatter reports whether a failed verification may pass with other
// roots: not for a wrong name, nor for a leaf invalid in itself
// (x509.Certificate.Verify checks both before it builds a chain).
func rootsMatter(err error, leaf *x509.Certificate) bool {
	var name x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &name):
		return false
	case errors.As(err, &invalid):
		return invalid.Cert != leaf
	}
	return true
}

// oneHost is the host every endpoint names (URLs or host:port), without
// the port, or "" when they name several or one does not parse.
func oneHost(endpoints ...string) string {
	host := ""
	for _, e := range endpoints {
		if !strings.Contains(e, "://") {
			e = "https://" + e
		}
		u, err := url.Parse(e)
		if err != nil || u.Hostname() == "" || host != "" && u.Hostname() != host {
			return ""
		}
		host = u.Hostname()
	}
	return host
}

// clientKey tells a session's clients apart (sharedClient): what they are
// (kind), which servers they reach, what they trust (tlsConfigFor) and who
// they are (the identity of their key or certificate, never a secret).
type clientKey struct {
	kind, endpoints, trust, identity string
}

// sharedClient returns the session's client for key, made by make the first
// time (engine.Run.Memo). Connection blocks are decoded afresh for each
// walk: the quiet plan before an apply decodes each twice (StartEarly's
// walk and its own), the apply once more, and a block's client is made per
// decoding; shared, the same server is reached over the connection the
// plan opened, not a new one each walk (a TLS handshake: a few round trips
// at 10 ms to another site) whose every check (kesConnection.Server's
// probe) is asked again.
func sharedClient[T any](r *engine.Run, key clientKey, make func() T) T {
	return r.Memo(key, func() any { return make() }).(T)
}

func tlsX509KeyPair(certPEM, keyPEM []byte) (tls.Certificate, error) {
	return tls.X509KeyPair(certPEM, keyPEM)
}

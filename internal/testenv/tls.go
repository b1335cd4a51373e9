package testenv

import (
	"crypto/tls"
	"crypto/x509"
	"net"

	"github.com/runbook-dev/runbook/internal/devcert"
)

// TLSFiles is a freshly generated CA and a server certificate it signed for
// 127.0.0.1, ::1 and localhost, written as PEM files.
type TLSFiles = devcert.Files

// GenerateTLS writes a new CA and server certificate into dir, named
// ca.pem, server.crt and server.key.
func GenerateTLS(dir, commonName string) (TLSFiles, error) {
	return devcert.Generate(dir, commonName)
}

// GenerateTLSFor is GenerateTLS with more IP addresses in the server
// certificate (for example a non-loopback address of this machine).
func GenerateTLSFor(dir, commonName string, extraIPs ...net.IP) (TLSFiles, error) {
	return devcert.Generate(dir, commonName, extraIPs...)
}

// CertPool returns a pool holding the PEM certificates of the given files.
func CertPool(files ...string) (*x509.CertPool, error) { return devcert.Pool(files...) }

// clientTLS returns a TLS config that trusts only the CAs in caFiles.
func clientTLS(caFiles ...string) (*tls.Config, error) { return devcert.ClientConfig(caFiles...) }

// Package warmroots starts loading the system's root certificates when the
// process starts, for its side effect: every connection's TLS config adds
// its CA file to them (steps/tls.go), and the first load parses the whole
// system bundle and every file of /etc/ssl/certs (about 30 ms of CPU on a
// Debian host), which the first connection of a plan would otherwise wait
// for. Started from this package's init, it runs on another CPU while the
// rest of the program's packages initialise (60-70 ms; GODEBUG=inittrace=1).
// Import it from a main package only.
package warmroots

import "crypto/x509"

func init() { go x509.SystemCertPool() } //nolint:errcheck // the pool is kept by crypto/x509; an error is met again at the first connection

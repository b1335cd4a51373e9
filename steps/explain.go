package steps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
)

// Error explanations: what a refusal from a server means for the operator,
// and what to fix.

// permanentHint turns the Key Manager's permanent errors into what the
// operator must fix.
func permanentHint(err error, enclave string) error {
	switch {
	case errors.Is(err, kms.ErrPermission):
		return engine.WithHint(fmt.Errorf("%w (the key_manager's API key lacks permission in enclave %s)", err, enclave), "use the SysAdmin key or an enclave admin's")
	case errors.Is(err, kms.ErrEnclaveNotFound):
		return fmt.Errorf("%w (enclave %s: the enclave step creates it; was it deleted?)", err, enclave)
	}
	return err
}

// kesPolicyPaths are the KES policy entries the runbook's identity needs:
// kes-go lists through /v1/key/list/<pattern>, and KES matches a policy
// path exactly unless it ends in '*', so "/v1/key/list" allows nothing
// (docs/domain.md, "KES identities and policies").
const kesPolicyPaths = "/v1/key/list/* and /v1/key/generate/* (a path without the trailing /* allows nothing: KES matches it exactly)"

// kesPolicyHint is the fix for a KES identity whose policy refuses what
// verification asks.
const kesPolicyHint = "use the KES admin API key, or one whose policy allows " + kesPolicyPaths

// errKMPermission is the error for a Key Manager identity without the rights
// a step needs.
func errKMPermission(addr string, kmc *keyManagerConnection, what string) error {
	id := "unknown"
	if key, err := mtls.ParsePrivateKey(kmc.cfg.APIKey); err == nil {
		id = key.Identity().String()
	}
	return fmt.Errorf("%s: the Key Manager identity lacks permission: use the SysAdmin API key (the identity %s of the configured api_key may not %s)", addr, id, what)
}

// goneWhy says why something this run made at the Key Manager is gone
// there, as far as the journal knows: deleted (its step's rollback/deleted
// checkpoint) by a rollback of this run that did not finish, or not
// recorded so (a kill between the delete and its record, or a hand).
func goneWhy(deleted bool) string {
	if deleted {
		return "deleted by a rollback of this run that did not finish"
	}
	return "not recorded as deleted by this run's rollback"
}

// reachError explains a failed request to a server: TLS verification,
// unreachable, or something else, and what to fix.
func reachError(what, addr, endpoint string, err error) error {
	var (
		verr  *tls.CertificateVerificationError
		uaerr x509.UnknownAuthorityError
		herr  x509.HostnameError
		cierr x509.CertificateInvalidError
		rerr  tls.RecordHeaderError
		operr *net.OpError
	)
	switch {
	case errors.As(err, &verr), errors.As(err, &uaerr), errors.As(err, &herr), errors.As(err, &cierr):
		return fmt.Errorf("%s: %s %s: TLS verification failed (%s): set ca_file to the CA certificate that signed the server's certificate (or insecure = true explicitly, to skip verification)", addr, what, endpoint, tlsReason(err))
	case errors.As(err, &rerr):
		return fmt.Errorf("%s: %s %s does not speak TLS: use its https address", addr, what, endpoint)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %s %s is unreachable: no answer within %s: check the address and that the server runs", addr, what, endpoint, checkTimeout)
	case errors.As(err, &operr):
		return fmt.Errorf("%s: %s %s is unreachable (%v): check the address and that the server runs", addr, what, endpoint, operr)
	}
	return fmt.Errorf("%s: %s %s: %w", addr, what, endpoint, err)
}

// tlsReason says why a server's certificate did not verify.
func tlsReason(err error) string {
	var (
		uaerr x509.UnknownAuthorityError
		herr  x509.HostnameError
		cierr x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &uaerr):
		return "certificate signed by unknown authority"
	case errors.As(err, &herr):
		return herr.Error()
	case errors.As(err, &cierr):
		return cierr.Error()
	}
	return "the certificate does not verify"
}

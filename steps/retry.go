package steps

import (
	"context"
	"crypto/x509"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/minio/kms-go/kms"
)

// Retry policy for requests to the Key Manager and KES: transient errors
// (network errors, dropped connections, 5xx and 429 answers) are retried per
// request with exponential backoff and full jitter, a bounded number of
// times; everything else is final.
var (
	retryAttempts = 8
	retryBase     = 50 * time.Millisecond
	retryCap      = 3 * time.Second
)

// permanent marks an error that retrying cannot cure, whatever it wraps.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// transient reports whether an error may go away if the request is sent
// again.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var p permanent
	if errors.As(err, &p) {
		return false
	}
	var ke kms.Error
	if errors.As(err, &ke) {
		return ke.Code >= 500 || ke.Code == 429
	}
	var st interface{ Status() int } // kes-go's errors
	if errors.As(err, &st) {
		return st.Status() >= 500 || st.Status() == 429
	}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	if errors.As(err, &unknownCA) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return false
	}
	if strings.Contains(err.Error(), "tls: ") && strings.Contains(err.Error(), "certificate") {
		return false
	}
	return true // a network error: connection refused, reset, dropped, EOF
}

// withRetry runs fn until it succeeds, fails for good, or has failed
// transiently retryAttempts times. A permanent wrapper is removed from the
// error it returns.
func withRetry(ctx context.Context, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		if err == nil || !transient(err) || attempt >= retryAttempts || ctx.Err() != nil {
			var p permanent
			if errors.As(err, &p) {
				return p.error
			}
			return err
		}
		d := min(retryCap, retryBase<<(attempt-1))
		d = time.Duration(mrand.Int64N(int64(d)) + 1) // full jitter
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

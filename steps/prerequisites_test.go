package steps

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
)

// The digest must tell sets apart that a naive concatenation would not.
func TestKeySetDigest(t *testing.T) {
	t.Parallel()
	if keySetDigest([]string{"ab", "c"}) == keySetDigest([]string{"a", "bc"}) {
		t.Error("different key sets have the same digest")
	}
	if keySetDigest(nil) != keySetDigest([]string{}) {
		t.Error("the empty set has two digests")
	}
	if got := keySetDigest([]string{"k1", "k2"}); got != keySetDigest([]string{"k1", "k2"}) || len(got) != 64 {
		t.Errorf("digest %q is not a stable SHA-256", got)
	}
}

func TestReachError(t *testing.T) {
	t.Parallel()
	wrap := func(err error) error {
		return &url.Error{Op: "Get", URL: "https://127.0.0.1:7373/version", Err: err}
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{wrap(&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), "TLS verification failed (certificate signed by unknown authority): set ca_file"},
		{wrap(x509.HostnameError{Certificate: &x509.Certificate{}, Host: "kes.example.net"}), "TLS verification failed (x509: certificate is not valid for any names"},
		{wrap(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}), "is unreachable (dial tcp: connect: connection refused): check the address"},
		{wrap(context.DeadlineExceeded), "is unreachable: no answer within"},
		{wrap(tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"}), "does not speak TLS"},
		{errors.New("boom"), "KES server https://kes:7373: boom"},
	} {
		err := reachError("KES server", "kes.legacy", "https://kes:7373", tc.err)
		if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "kes.legacy: ") {
			t.Errorf("reachError(%v) = %q, want it to contain %q", tc.err, err, tc.want)
		}
	}
}

func TestEnclaveName(t *testing.T) {
	t.Parallel()
	for name, ok := range map[string]bool{"aistor-primary": true, "a_b": true, "": false, "a/b": false, "a b": false, strings.Repeat("x", 81): false} {
		if enclaveNameRE.MatchString(name) != ok {
			t.Errorf("enclave name %q accepted = %v, want %v", name, !ok, ok)
		}
	}
	if got := plural(1, "identity", "identities"); got != "1 identity" {
		t.Errorf("plural(1) = %q", got)
	}
	if got := plural(3, "identity", "identities"); got != "3 identities" {
		t.Errorf("plural(3) = %q", got)
	}
}

// The snapshot's buffer writes every byte in order, whatever the sizes of
// the writes against its own, in as few writes as it can, and holds nothing
// of them once flushed or wiped (they are key values).
func TestWipedBufferWritesAllAndKeepsNothing(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	writes := 0
	w := writerFunc(func(p []byte) (int, error) { writes++; return out.Write(p) })
	b := newWipedBuffer(w, 16)
	var want []byte
	for i, n := range []int{3, 5, 8, 1, 40, 2, 16, 15} { // 40: larger than the buffer, written through
		p := bytes.Repeat([]byte{byte('a' + i)}, n)
		want = append(want, p...)
		if m, err := b.Write(p); m != n || err != nil {
			t.Fatalf("write %d bytes: %d, %v", n, m, err)
		}
	}
	held := b.buf[:cap(b.buf)]
	if err := b.flush(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), want) {
		t.Fatalf("wrote %q, want %q", out.Bytes(), want)
	}
	if writes != 6 { // 3+5+8 | 1 | 40 | 2 | 16 | 15
		t.Errorf("%d writes, want 6", writes)
	}
	if !bytes.Equal(held, make([]byte, len(held))) {
		t.Errorf("the buffer still holds %q after the flush", held)
	}
	if err := b.flush(); err != nil || writes != 6 {
		t.Errorf("an empty flush wrote (%d writes, %v)", writes, err)
	}
	b.Write([]byte("secret"))
	b.wipe()
	if !bytes.Equal(held, make([]byte, len(held))) || writes != 6 {
		t.Errorf("wipe left %q or wrote", held)
	}

	failing := newWipedBuffer(writerFunc(func(p []byte) (int, error) { return 0, errors.New("disk full") }), 4)
	failing.Write([]byte("abc"))
	if _, err := failing.Write([]byte("defg")); err == nil {
		t.Error("a failed write-out was not reported")
	}
	if kept := failing.buf[:cap(failing.buf)]; !bytes.Equal(kept, make([]byte, len(kept))) {
		t.Errorf("a failed write-out left %q in the buffer", kept)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

package steps

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/engine"
)

// Which Key Manager an object store names. MinIO names its Key Manager by
// how MINIO_KMS_SERVER spells it, and its KMS status by the host each node
// answers /version with; the runbook's key_manager block may spell the same
// cluster otherwise: localhost for 127.0.0.1, a load balancer for the node
// names, a URL without its default port (issue 20, input 2). An endpoint is
// the enclave's Key Manager when it is spelled the same once normalised,
// resolves to the same address and port, presents the TLS key of one of the
// runbook's endpoints, or knows the enclave as created by the same identity
// at the same instant. It is another one only when it answered and none of
// that holds; when it cannot be asked, it is in doubt, and the guard refuses
// in doubt.

// kmVerdict is what is known of one endpoint.
type kmVerdict int

const (
	kmDoubt kmVerdict = iota // could not be ruled out
	kmSame
	kmOther
)

// kmAskTimeout bounds each question to an endpoint.
const kmAskTimeout = 10 * time.Second

// kmEndpoint is a Key Manager address: host lowercased without a trailing
// dot, and port, an https URL's default (443) applied, as kms-go reaches it
// (it strips http:// and https:// and always speaks HTTPS).
type kmEndpoint struct {
	written    string
	host, port string
}

func (e kmEndpoint) addr() string { return net.JoinHostPort(e.host, e.port) }

func parseKMEndpoint(s string) (kmEndpoint, error) {
	s = strings.TrimSpace(s)
	rest := strings.TrimPrefix(strings.TrimPrefix(s, "http://"), "https://")
	u, err := url.Parse("https://" + rest)
	if err != nil || u.Hostname() == "" {
		return kmEndpoint{}, fmt.Errorf("%q is not a host[:port] or an https URL", s)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return kmEndpoint{written: s, host: strings.TrimSuffix(strings.ToLower(u.Hostname()), "."), port: port}, nil
}

// kmIdentity compares endpoints with the Key Manager of one enclave, asking
// each endpoint once.
type kmIdentity struct {
	r    *engine.Run
	enc  enclaveRef
	ours []kmEndpoint

	oursOnce sync.Once
	ourIPs   map[string][]net.IP   // host → addresses
	ourKeys  map[string]kmEndpoint // SHA-256 of a TLS key → the endpoint presenting it
	ourEncl  *kms.EnclaveStatusResponse
	ourErr   []string // what could not be learned of our own endpoints

	mu   sync.Mutex
	seen map[string]kmAnswer
}

type kmAnswer struct {
	verdict kmVerdict
	why     string
}

func newKMIdentity(r *engine.Run, enc enclaveRef) *kmIdentity {
	id := &kmIdentity{r: r, enc: enc, seen: map[string]kmAnswer{}}
	for _, s := range enc.KM.Endpoints() {
		if e, err := parseKMEndpoint(s); err == nil {
			id.ours = append(id.ours, e)
		}
	}
	return id
}

// judge says whether endpoint (as an env file or a KMS status names it) is
// the enclave's Key Manager, and why.
func (id *kmIdentity) judge(ctx context.Context, endpoint string) (kmVerdict, string) {
	id.mu.Lock()
	if a, ok := id.seen[endpoint]; ok {
		id.mu.Unlock()
		return a.verdict, a.why
	}
	id.mu.Unlock()
	v, why := id.ask(ctx, endpoint)
	id.mu.Lock()
	id.seen[endpoint] = kmAnswer{v, why}
	id.mu.Unlock()
	return v, why
}

func (id *kmIdentity) ask(ctx context.Context, endpoint string) (kmVerdict, string) {
	e, err := parseKMEndpoint(endpoint)
	if err != nil {
		return kmDoubt, err.Error()
	}
	for _, o := range id.ours {
		if o.host == e.host && o.port == e.port {
			return kmSame, fmt.Sprintf("%s is %s", endpoint, o.written)
		}
	}
	id.oursOnce.Do(func() { id.learnOurs(ctx) })
	ips, resolveErr := lookupIPs(ctx, e.host)
	for _, o := range id.ours {
		if o.port != e.port {
			continue
		}
		if ip := sameAddress(ips, id.ourIPs[o.host]); ip != "" {
			return kmSame, fmt.Sprintf("%s resolves to %s, as %s does", endpoint, ip, o.written)
		}
	}
	key, tlsErr := tlsKey(ctx, e)
	if tlsErr == nil {
		if o, ok := id.ourKeys[key]; ok {
			return kmSame, fmt.Sprintf("%s presents the TLS key of %s (SHA-256 %s)", endpoint, o.written, key[:16])
		}
	}
	if tlsErr != nil {
		reason := fmt.Sprintf("it did not answer (%s)", oneLine(tlsErr))
		if resolveErr != nil {
			reason = fmt.Sprintf("it does not resolve here (%s)", oneLine(resolveErr))
		}
		return kmDoubt, fmt.Sprintf("could not tell whether %s is the Key Manager of enclave %s: %s", endpoint, id.enc.Name, reason)
	}
	// Another TLS key: a node of the same cluster with a certificate of its
	// own, or another Key Manager. The cluster knows the enclave, created
	// when and by whom it was.
	if id.ourEncl == nil {
		return kmDoubt, fmt.Sprintf("could not tell whether %s (another TLS key than the runbook's endpoints present) is the Key Manager of enclave %s: %s", endpoint, id.enc.Name, strings.Join(id.ourErr, "; "))
	}
	st, err := id.enclaveAt(ctx, e)
	var ke kms.Error
	switch {
	case err == nil && st.CreatedAt.Equal(id.ourEncl.CreatedAt) && st.CreatedBy == id.ourEncl.CreatedBy:
		return kmSame, fmt.Sprintf("%s knows enclave %s, created at %s by %s, as %s does", endpoint, id.enc.Name, st.CreatedAt.UTC().Format(time.RFC3339Nano), st.CreatedBy, id.ours[0].written)
	case err == nil:
		return kmOther, fmt.Sprintf("%s is another Key Manager: another TLS key, and an enclave %s of its own (created at %s by %s)", endpoint, id.enc.Name, st.CreatedAt.UTC().Format(time.RFC3339Nano), st.CreatedBy)
	case errors.Is(err, kms.ErrEnclaveNotFound):
		return kmOther, fmt.Sprintf("%s is another Key Manager: another TLS key, and no enclave %s", endpoint, id.enc.Name)
	case errors.As(err, &ke) && (ke.Code == 401 || ke.Code == 403):
		return kmOther, fmt.Sprintf("%s is another Key Manager: another TLS key, and it does not know the runbook's SysAdmin identity (%s)", endpoint, oneLine(err))
	}
	return kmDoubt, fmt.Sprintf("could not tell whether %s (another TLS key than the runbook's endpoints present) is the Key Manager of enclave %s: asked for the enclave, it answered %s", endpoint, id.enc.Name, oneLine(err))
}

// learnOurs resolves the runbook's endpoints, reads their TLS keys and the
// enclave's status.
func (id *kmIdentity) learnOurs(ctx context.Context) {
	id.ourIPs, id.ourKeys = map[string][]net.IP{}, map[string]kmEndpoint{}
	for _, o := range id.ours {
		if ips, err := lookupIPs(ctx, o.host); err == nil {
			id.ourIPs[o.host] = ips
		}
		if key, err := tlsKey(ctx, o); err == nil {
			id.ourKeys[key] = o
		} else {
			id.ourErr = append(id.ourErr, fmt.Sprintf("%s did not answer (%s)", o.written, oneLine(err)))
		}
	}
	c, err := id.enc.KM.Client(id.r)
	if err == nil {
		cctx, cancel := context.WithTimeout(ctx, kmAskTimeout)
		defer cancel()
		var st []*kms.EnclaveStatusResponse
		if st, err = c.EnclaveStatus(cctx, &kms.EnclaveStatusRequest{Name: id.enc.Name}); err == nil && len(st) == 1 {
			id.ourEncl = st[0]
			return
		}
	}
	id.ourErr = append(id.ourErr, fmt.Sprintf("the status of enclave %s could not be read from %s (%v)", id.enc.Name, id.enc.Addr, err))
}

// enclaveAt asks endpoint e for the enclave's status with the runbook's
// SysAdmin key. Its certificate is not verified: the question gathers
// evidence, the TLS client authentication proves nothing to a server that
// could be replayed, and a wrong answer can only make the guard refuse or
// find an endpoint the object store uses that is not the runbook's.
func (id *kmIdentity) enclaveAt(ctx context.Context, e kmEndpoint) (*kms.EnclaveStatusResponse, error) {
	key, err := mtls.ParsePrivateKey(id.enc.KM.cfg.APIKey)
	if err != nil {
		return nil, fmt.Errorf("parse Key Manager API key: %w", err)
	}
	c, err := kms.NewClient(&kms.Config{Endpoints: []string{e.addr()}, APIKey: key, TLS: &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}})
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, kmAskTimeout)
	defer cancel()
	st, err := c.EnclaveStatus(cctx, &kms.EnclaveStatusRequest{Name: id.enc.Name})
	if err != nil {
		return nil, err
	}
	if len(st) != 1 {
		return nil, fmt.Errorf("%d answers to one question", len(st))
	}
	return st[0], nil
}

func lookupIPs(ctx context.Context, host string) ([]net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	cctx, cancel := context.WithTimeout(ctx, kmAskTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(cctx, host)
	if err != nil {
		return nil, err
	}
	ips := make([]net.IP, len(addrs))
	for i, a := range addrs {
		ips[i] = a.IP
	}
	return ips, nil
}

// sameAddress returns an address both lists share, or "": loopback
// addresses (127.0.0.0/8, ::1) all count as one, since localhost may
// resolve to either and a server that listens on one of them usually
// listens on both.
func sameAddress(a, b []net.IP) string {
	for _, x := range a {
		for _, y := range b {
			if x.Equal(y) || (x.IsLoopback() && y.IsLoopback()) {
				return x.String()
			}
		}
	}
	return ""
}

// tlsKey is the SHA-256 (base64) of the public key the endpoint's TLS
// certificate holds. The certificate is not verified: only its key is
// compared with those of the runbook's own endpoints.
func tlsKey(ctx context.Context, e kmEndpoint) (string, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: kmAskTimeout}, Config: &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true, ServerName: e.host}}
	cctx, cancel := context.WithTimeout(ctx, kmAskTimeout)
	defer cancel()
	conn, err := d.DialContext(cctx, "tcp", e.addr())
	if err != nil {
		return "", err
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return "", errors.New("no TLS certificate")
	}
	sum := sha256.Sum256(certs[0].RawSubjectPublicKeyInfo)
	return base64.RawStdEncoding.EncodeToString(sum[:]), nil
}

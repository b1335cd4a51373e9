// Package emulator is an emulator of the AIStor Key Manager (minkms). It
// speaks the Key Manager wire protocol as implemented by the vendor's
// client library github.com/minio/kms-go/kms: HTTPS with mutual TLS
// where the client certificate's public key is the identity, GET
// /version and health probes, and framed protobuf commands on
// POST /v1/kms[/<enclave>]. See docs/domain.md, "The Key Manager
// protocol", and docs/emulator.md.
package emulator

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// Version is the version string the emulator reports on GET /version.
const Version = "2025-02-25T09-01-16Z-runbook-emulator"

// MaxBodySize is the largest request body the emulator accepts.
const MaxBodySize = 1 << 20

const rootKeyFile = "root.key"

// Config configures an emulator Server.
type Config struct {
	Addr           string        // listen address, e.g. "127.0.0.1:7373"; "127.0.0.1:0" picks a free port
	Dir            string        // state directory (created 0700 if missing); state survives restart
	Hosts          []string      // extra DNS names/IPs for the server certificate (always includes localhost, 127.0.0.1, ::1)
	FaultErrorRate float64       // 0..1: fraction of POST requests answered with HTTP 503
	FaultLatency   time.Duration // added before every response
	FaultDropRate  float64       // 0..1: fraction of POST requests whose connection is closed without a response
	// FaultRefuseFormats are ciphertext formats ("msgpack", "json") whose
	// Decrypt fails with kms.ErrDecrypt (fault_formats.go).
	FaultRefuseFormats []string
	// Readings: the answers where the protocol leaves the server open
	// (readings.go, docs/emulator.md); zero: the most demanding.
	Readings Readings
	Logf     func(format string, args ...any) // optional request log; never logs key material or API keys
}

// Server is a running emulator.
type Server struct {
	cfg      Config
	readings Readings
	st       *state
	ln       net.Listener
	srv      *http.Server
	caFile   string
	rootKey  string
	started  time.Time
	done     chan struct{}

	closeOnce sync.Once
	closeErr  error
}

// Start creates or opens the state in cfg.Dir, listens on cfg.Addr and
// serves in the background.
func Start(cfg Config) (*Server, error) {
	if cfg.Dir == "" {
		return nil, errors.New("emulator: no state directory (Config.Dir) given")
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:7373"
	}
	if cfg.FaultErrorRate < 0 || cfg.FaultErrorRate > 1 || cfg.FaultDropRate < 0 || cfg.FaultDropRate > 1 {
		return nil, errors.New("emulator: fault rates must be between 0 and 1")
	}
	if err := CheckRefuseFormats(cfg.FaultRefuseFormats); err != nil {
		return nil, err
	}
	readings, err := cfg.Readings.normalize()
	if err != nil {
		return nil, err
	}
	if err := atomicfile.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	// A crash mid-write leaves a temp file beside the root key, the TLS
	// files or the compacted state: the old file is still in place.
	if _, err := atomicfile.Sweep(cfg.Dir); err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}

	rootKey, err := loadOrCreateRootKey(filepath.Join(cfg.Dir, rootKeyFile))
	if err != nil {
		return nil, err
	}

	hosts := cfg.Hosts
	if h, _, err := net.SplitHostPort(cfg.Addr); err == nil && h != "" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			hosts = append([]string{h}, hosts...)
		}
	}
	cert, err := loadOrCreateTLS(cfg.Dir, hosts)
	if err != nil {
		return nil, err
	}

	st := newState(rootKey.Identity())
	if err := st.open(cfg.Dir); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		st.close()
		return nil, fmt.Errorf("emulator: %w", err)
	}

	s := &Server{
		cfg:      cfg,
		readings: readings,
		st:       st,
		ln:       ln,
		caFile:   filepath.Join(cfg.Dir, caCertFile),
		rootKey:  rootKey.String(),
		started:  time.Now(),
		done:     make(chan struct{}),
	}
	errLog := log.New(io.Discard, "", 0)
	if cfg.Logf != nil {
		errLog = log.New(logWriter(cfg.Logf), "", 0)
	}
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errLog,
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			// Authentication is identity pinning: any client certificate is
			// accepted and its public key hash is the identity. Asked for,
			// not required: /version and the health probes are
			// "Unprivileged by default" (kms-go internal/api/api.go); every
			// /v1/kms request is refused without one (ServeHTTP).
			ClientAuth: tls.RequestClientCert,
			MinVersion: tls.VersionTLS12,
			NextProtos: []string{"h2", "http/1.1"},
		},
	}
	go func() {
		defer close(s.done)
		s.srv.ServeTLS(ln, "", "")
	}()
	return s, nil
}

type logWriter func(string, ...any)

func (l logWriter) Write(p []byte) (int, error) {
	l("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func loadOrCreateRootKey(name string) (mtls.PrivateKey, error) {
	b, err := os.ReadFile(name)
	if errors.Is(err, os.ErrNotExist) {
		key, err := mtls.GenerateKeyEdDSA(nil)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(name, []byte(key.String()+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("emulator: %w", err)
		}
		return key, nil
	}
	if err != nil {
		return nil, fmt.Errorf("emulator: %w", err)
	}
	key, err := mtls.ParsePrivateKey(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("emulator: %s does not hold a valid API key", name)
	}
	return key, nil
}

// Readings returns the readings the server plays, defaults filled in.
func (s *Server) Readings() Readings { return s.readings }

// Addr returns the host:port the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL returns "https://" + Addr().
func (s *Server) URL() string { return "https://" + s.Addr() }

// CAFile returns the path of the PEM CA certificate that signs the
// server certificate.
func (s *Server) CAFile() string { return s.caFile }

// RootAPIKey returns the SysAdmin API key ("k1:…"). It is generated on
// first start and persisted in Dir.
func (s *Server) RootAPIKey() string { return s.rootKey }

// Close stops serving and closes the state log. The state stays on disk.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		err := s.srv.Close()
		<-s.done
		if cerr := s.st.close(); err == nil {
			err = cerr
		}
		s.closeErr = err
	})
	return s.closeErr
}

func (s *Server) logf(format string, args ...any) {
	if s.cfg.Logf != nil {
		s.cfg.Logf(format, args...)
	}
}

// statusWriter records the response status for the request log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := &statusWriter{ResponseWriter: rw}
	var caller mtls.Identity
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		caller = mtls.CertificateIdentity(r.TLS.PeerCertificates[0])
	}
	var cmdNames []string
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				s.logf("%s %s identity=%s dropped (injected fault)", r.Method, r.URL.Path, caller)
				panic(v)
			}
			s.logf("%s %s identity=%s internal error: %v", r.Method, r.URL.Path, caller, v)
			if w.status == 0 {
				writeError(w, r, kms.Error{Code: http.StatusInternalServerError, Err: "internal server error"})
			}
			return
		}
		s.logf("%s %s identity=%s cmds=%s status=%d duration=%s", r.Method, r.URL.Path, caller,
			strings.Join(cmdNames, ","), w.status, time.Since(start).Round(time.Microsecond))
	}()

	if d := s.cfg.FaultLatency; d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
		}
	}

	switch p := r.URL.Path; {
	case p == "/v1/kms" || strings.HasPrefix(p, "/v1/kms/"):
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, r, kms.Error{Code: http.StatusMethodNotAllowed, Err: "method not allowed: use POST"})
			return
		}
		if caller.IsZero() {
			writeError(w, r, kms.Error{Code: http.StatusUnauthorized, Err: "not authenticated: a client certificate is required"})
			return
		}
		enclave := strings.TrimPrefix(strings.TrimPrefix(p, "/v1/kms"), "/")
		cmdNames = s.serveKMS(w, r, caller, enclave)
	case p == "/version" || p == "/v1/health/live" || p == "/v1/health/ready":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, r, kms.Error{Code: http.StatusMethodNotAllowed, Err: "method not allowed: use GET"})
			return
		}
		var msg proto.Message
		if p == "/version" {
			host := r.Host
			if host == "" {
				host = s.Addr()
			}
			msg = &pb.VersionResponse{Version: Version, Commit: "runbook-emulator", APIVersion: "v1", Host: host}
		}
		writeMessage(w, r, msg)
	default:
		writeError(w, r, kms.Error{Code: http.StatusNotFound, Err: "not found: " + p})
	}
}

// fault is an injected failure of one request.
type fault int

const (
	faultNone  fault = iota
	faultError       // answered 503
	faultDrop        // connection closed (HTTP/1) or stream reset (HTTP/2) without an answer
)

// pickFault draws the injected fault of a POST request and how many of its
// n commands run before it strikes: any number from none to all of them
// (all: the request took effect and its answer is lost).
func (s *Server) pickFault(n int) (fault, int) {
	switch {
	case s.cfg.FaultDropRate > 0 && rand.Float64() < s.cfg.FaultDropRate:
		return faultDrop, rand.IntN(n + 1)
	case s.cfg.FaultErrorRate > 0 && rand.Float64() < s.cfg.FaultErrorRate:
		return faultError, rand.IntN(n + 1)
	}
	return faultNone, -1
}

// errInjected marks the point where an injected fault struck.
var errInjected = errors.New("injected fault")

// injectFault answers a request that an injected fault struck.
func (s *Server) injectFault(w http.ResponseWriter, r *http.Request, f fault) {
	if f == faultDrop {
		if hj, ok := w.(interface{ Unwrap() http.ResponseWriter }); ok {
			if h, ok := hj.Unwrap().(http.Hijacker); ok {
				if conn, _, err := h.Hijack(); err == nil {
					conn.Close()
					s.logf("%s %s dropped connection (injected fault)", r.Method, r.URL.Path)
					return
				}
			}
		}
		panic(http.ErrAbortHandler) // HTTP/2: reset the stream without a response
	}
	writeError(w, r, kms.Error{Code: http.StatusServiceUnavailable, Err: "injected fault: service unavailable (emulator fault injection)"})
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// frame is one decoded command of a request.
type frame struct {
	cmd cmds.Command
	def command
	req proto.Message
}

// serveKMS handles POST /v1/kms[/<enclave>] and returns the command names.
func (s *Server) serveKMS(w http.ResponseWriter, r *http.Request, caller mtls.Identity, enclave string) []string {
	if r.ContentLength > MaxBodySize {
		writeError(w, r, kms.Error{Code: http.StatusRequestEntityTooLarge, Err: "request body too large: the limit is 1 MiB"})
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodySize))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, r, kms.Error{Code: http.StatusRequestEntityTooLarge, Err: "request body too large: the limit is 1 MiB"})
		} else {
			writeError(w, r, kms.Error{Code: http.StatusBadRequest, Err: "cannot read request body"})
		}
		return nil
	}
	if len(body) == 0 {
		writeError(w, r, badRequest("malformed request: empty body, expected one or more command frames").(kms.Error))
		return nil
	}

	// Decode every frame before executing any, so that a malformed
	// request changes nothing.
	var frames []frame
	var names []string
	reads, writes := 0, 0
	for b := body; len(b) > 0; {
		if len(b) < 6 {
			writeError(w, r, badRequest("malformed request: truncated command frame header").(kms.Error))
			return names
		}
		c := cmds.Command(binary.BigEndian.Uint16(b))
		def, known := commands[c]
		if !known {
			writeError(w, r, badRequest("unknown command").(kms.Error))
			return append(names, strconv.Itoa(int(c)))
		}
		names = append(names, cmdName(c))
		if n := binary.BigEndian.Uint32(b[2:]); uint64(n) > uint64(len(b)-6) {
			writeError(w, r, badRequest(fmt.Sprintf("malformed request: command %s declares %d bytes of arguments but only %d follow", cmdName(c), n, len(b)-6)).(kms.Error))
			return names
		}
		req := def.new()
		rest, err := cmds.DecodePB(b, c, req)
		if err != nil {
			writeError(w, r, badRequest(fmt.Sprintf("malformed request: invalid arguments for command %s", cmdName(c))).(kms.Error))
			return names
		}
		if def.check == nil {
			writeError(w, r, kms.Error{Code: http.StatusNotImplemented, Err: "command " + cmdName(c) + " is not supported by the emulator"})
			return names
		}
		if c.IsWrite() {
			writes++
		} else {
			reads++
		}
		frames = append(frames, frame{c, def, req})
		b = rest
	}
	if reads > 0 && writes > 0 && s.readings.Mixed == MixedRefuse {
		writeError(w, r, badRequest("invalid request: read and write commands in one request; send them separately").(kms.Error))
		return names
	}

	f, at := s.pickFault(len(frames))
	answers, err := s.execute(caller, enclave, frames, at)
	if errors.Is(err, errInjected) {
		s.injectFault(w, r, f)
		return append(names, fmt.Sprintf("(injected fault after %d of %d commands)", at, len(frames)))
	}
	if err != nil {
		var e kms.Error
		if !errors.As(err, &e) {
			e = kms.Error{Code: http.StatusInternalServerError, Err: err.Error()}
		}
		writeError(w, r, e)
		return names
	}
	out := make([]byte, 0, 64*len(frames))
	for i, fr := range frames {
		if fr.cmd.IsWrite() && s.readings.WriteAnswer == WriteEmpty {
			continue
		}
		if out, err = cmds.EncodePB(out, fr.cmd, answers[i]); err != nil {
			writeError(w, r, kms.Error{Code: http.StatusInternalServerError, Err: "cannot encode response"})
			return names
		}
	}
	writeBody(w, http.StatusOK, "application/octet-stream", out)
	return names
}

// execute runs the commands of one request for caller in the enclave named
// by the URL and returns their answers (nil for writes). The state lock is
// taken and released here only. Every command is checked, and every write
// applied, in order under the lock; a request without writes computes its
// answers (crypto) after unlocking, while in one with writes each read runs
// in its turn, so that a failing read stops the writes after it. When a
// command fails, the writes before it stay (BatchPartial) or are undone
// (BatchAtomic). faultAt >= 0 makes an injected fault strike after that
// many commands, with the same effect as a failing command; after all of
// them, the request takes effect and only its answer is lost.
func (s *Server) execute(caller mtls.Identity, encName string, frames []frame, faultAt int) ([]proto.Message, error) {
	answers := make([]proto.Message, len(frames))
	runs := make([]run, len(frames))
	writes := slices.ContainsFunc(frames, func(f frame) bool { return f.cmd.IsWrite() })

	st := s.st
	st.mu.Lock()
	t := st.begin()
	var err error
	for i, f := range frames {
		if i == faultAt {
			err = errInjected
			break
		}
		var rn run
		if rn, err = s.check(t, caller, encName, f); err != nil {
			break
		}
		if rn != nil && writes {
			if answers[i], err = rn(); err != nil {
				break
			}
			rn = nil
		}
		runs[i] = rn
	}
	if err != nil && s.readings.Batch == BatchAtomic {
		t.rollback()
	}
	if cerr := t.commit(); cerr != nil {
		err = cerr
	}
	st.mu.Unlock()
	if err == nil && faultAt == len(frames) {
		err = errInjected // the request took effect; its answer is lost
	}
	if err != nil {
		return nil, err
	}

	for i, rn := range runs {
		if rn == nil {
			continue
		}
		if answers[i], err = rn(); err != nil {
			return nil, err
		}
	}
	return answers, nil
}

func writeBody(w http.ResponseWriter, status int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// acceptsBinary reports whether a GET response may be protobuf: when the
// Accept header is absent or admits application/octet-stream.
func acceptsBinary(r *http.Request) bool {
	accept := r.Header.Values("Accept")
	if len(accept) == 0 {
		return true
	}
	for _, v := range accept {
		for _, part := range strings.Split(v, ",") {
			mt, _, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			switch mt {
			case "application/octet-stream", "application/*", "*/*":
				return true
			}
		}
	}
	return false
}

// writeMessage writes a 200 response with msg as protobuf, or protojson
// if the client does not accept binary. A nil msg writes an empty body.
func writeMessage(w http.ResponseWriter, r *http.Request, msg proto.Message) {
	if acceptsBinary(r) {
		var b []byte
		if msg != nil {
			b, _ = proto.Marshal(msg)
		}
		writeBody(w, http.StatusOK, "application/octet-stream", b)
		return
	}
	b := []byte("{}")
	if msg != nil {
		b, _ = protojson.Marshal(msg)
	}
	writeBody(w, http.StatusOK, "application/json", b)
}

// writeError writes err as protobuf ErrResponse when the client sent
// application/octet-stream (or, without a body, accepts it explicitly),
// and as JSON {"message": …} otherwise (kms-go error.go readError).
func writeError(w http.ResponseWriter, r *http.Request, err kms.Error) {
	binaryReply := false
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		binaryReply = mt == "application/octet-stream"
	} else {
		for _, v := range r.Header.Values("Accept") {
			binaryReply = binaryReply || strings.Contains(v, "application/octet-stream")
		}
	}
	if binaryReply {
		b, _ := proto.Marshal(&pb.ErrResponse{Message: err.Err})
		writeBody(w, err.Code, "application/octet-stream", b)
		return
	}
	b, _ := json.Marshal(map[string]string{"message": err.Err})
	writeBody(w, err.Code, "application/json", b)
}

// Shutdown is like Close but waits for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// cmdName is c.String(), except that it also names KEY:IMPORT, which the
// vendor's cmds package leaves out of its name table.
func cmdName(c cmds.Command) string {
	if c == cmds.KeyImport {
		return "KEY:IMPORT"
	}
	return c.String()
}

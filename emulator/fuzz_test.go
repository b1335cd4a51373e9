package emulator

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"google.golang.org/protobuf/proto"
)

// FuzzKMSRequest sends arbitrary bodies to the command endpoint as the root
// identity (every command is allowed, so decoding is the only gate). The
// emulator must never panic, answer 500, or change its state for a request
// it refuses as malformed: every frame is decoded before any runs. Every
// error body must decode as the vendor client decodes one (pb.ErrResponse).
func FuzzKMSRequest(f *testing.F) {
	s := startServer(f, Config{})
	root := s.st.root
	frame := func(c cmds.Command, m proto.Message) []byte { return encodeFrame(f, c, m) }
	seeds := [][]byte{
		frame(cmds.EnclaveCreate, &pb.CreateEnclaveRequest{Name: "e"}),
		frame(cmds.KeyCreate, &pb.CreateKeyRequest{Name: "k"}),
		append(frame(cmds.KeyCreate, &pb.CreateKeyRequest{Name: "a"}), frame(cmds.KeyCreate, &pb.CreateKeyRequest{Name: "b"})...),
		frame(cmds.KeyImport, &pb.ImportKeyRequest{Name: "i", Type: "AES256", Key: make([]byte, 32)}),
		frame(cmds.KeyList, &pb.ListRequest{Prefix: "", Limit: 2}),
		frame(cmds.KeyGenerate, &pb.GenerateKeyRequest{Name: "k", Length: 32}),
		frame(cmds.KeyDelete, &pb.DeleteKeyRequest{Name: "a"}),
		frame(cmds.IdentityList, &pb.ListRequest{}),
		nil,
		{0, 201, 0},
		append(frameHeader(201, 100), 1, 2, 3),
		append(frameHeader(201, 3), 0xff, 0xff, 0xff),
		frameHeader(999, 0),
		append(frame(cmds.KeyCreate, &pb.CreateKeyRequest{Name: "never"}), 0, 201),
	}
	for _, b := range seeds {
		f.Add("e", b)
	}
	f.Add("", frame(cmds.EnclaveCreate, &pb.CreateEnclaveRequest{Name: "e2"}))

	f.Fuzz(func(t *testing.T, enclave string, body []byte) {
		s.st.mu.Lock()
		before := s.st.records
		s.st.mu.Unlock()

		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/v1/kms", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/octet-stream")
		s.serveKMS(rec, req, root, enclave)

		if rec.Code == http.StatusOK {
			return
		}
		if rec.Code == http.StatusInternalServerError {
			t.Fatalf("status 500 for %x in enclave %q: %s", body, enclave, rec.Body.Bytes())
		}
		var m pb.ErrResponse
		if err := proto.Unmarshal(rec.Body.Bytes(), &m); err != nil || m.Message == "" {
			t.Fatalf("status %d with a body the vendor client cannot decode (%v): %x", rec.Code, err, rec.Body.Bytes())
		}
		malformed := strings.HasPrefix(m.Message, "malformed request") || m.Message == "unknown command" ||
			rec.Code == http.StatusRequestEntityTooLarge || rec.Code == http.StatusNotImplemented
		if !malformed {
			return
		}
		s.st.mu.Lock()
		after := s.st.records
		s.st.mu.Unlock()
		if after != before {
			t.Fatalf("a request refused as malformed (%d %q) changed the state: %d record(s) committed", rec.Code, m.Message, after-before)
		}
	})
}

package emulator

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
)

// Each reading is judged through the vendor's client: its typed calls, and
// its Send for requests of several commands (what a batching client sends).

// send posts the frames through the vendor client and returns the answer
// body, or the error.
func send(t *testing.T, c *kms.Client, enclave string, frames ...[]byte) ([]byte, error) {
	t.Helper()
	var body []byte
	for _, f := range frames {
		body = append(body, f...)
	}
	resp, err := c.Send(ctx, &kms.Request{Enclave: enclave, Body: body})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	must(t, err)
	if resp.ContentLength != int64(len(b)) {
		t.Fatalf("Content-Length %d, body %d bytes", resp.ContentLength, len(b))
	}
	return b, nil
}

func importFrame(t *testing.T, name string) []byte {
	return encodeFrame(t, cmds.KeyImport, &pb.ImportKeyRequest{Name: name, Type: "AES256", Key: make([]byte, 32)})
}

func statusFrame(t *testing.T, name string) []byte {
	return encodeFrame(t, cmds.KeyStatus, &pb.KeyStatusRequest{Name: name})
}

// exists asks, with a read-only request, whether key name is in enclave e.
func exists(t *testing.T, c *kms.Client, e, name string) bool {
	t.Helper()
	_, err := c.KeyStatus(ctx, e, &kms.KeyStatusRequest{Name: name})
	if errors.Is(err, kms.ErrKeyNotFound) {
		return false
	}
	must(t, err)
	return true
}

func withEnclave(t *testing.T, r Readings) (*Server, *kms.Client) {
	t.Helper()
	return withEnclaveIn(t, "", r)
}

func withEnclaveIn(t *testing.T, dir string, r Readings) (*Server, *kms.Client) {
	t.Helper()
	s := startServer(t, Config{Dir: dir, Readings: r})
	c := newClient(t, s, s.RootAPIKey())
	must(t, c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: "e"}))
	return s, c
}

func TestReadingsDefaultAndInvalid(t *testing.T) {
	t.Parallel()
	r, err := Readings{}.normalize()
	must(t, err)
	if want := (Readings{WriteEmpty, MixedRefuse, BatchPartial, DeletedTombstoned}); r != want {
		t.Fatalf("defaults %+v, want the most demanding %+v", r, want)
	}
	if _, err := Start(Config{Dir: t.TempDir(), Addr: "127.0.0.1:0", Readings: Readings{Batch: "sometimes"}}); err == nil {
		t.Fatal("an unknown reading was accepted")
	}
}

func TestReadingWriteAnswer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		reading string
		want    func(body []byte) bool
	}{
		{WriteEmpty, func(b []byte) bool { return len(b) == 0 }},
		{WriteFrames, func(b []byte) bool {
			// one empty KEY:IMPORT frame per command
			return string(b) == string(append(frameHeader(uint16(cmds.KeyImport), 0), frameHeader(uint16(cmds.KeyImport), 0)...))
		}},
	} {
		t.Run(tc.reading, func(t *testing.T) {
			_, c := withEnclave(t, Readings{WriteAnswer: tc.reading})
			body, err := send(t, c, "e", importFrame(t, "a"), importFrame(t, "b"))
			must(t, err)
			if !tc.want(body) {
				t.Fatalf("answer to two imports: %x", body)
			}
			// The vendor's typed calls work either way: they close a write's
			// body unread.
			must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "c", Type: kms.AES256, Key: make([]byte, 32)}))
			must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "d"}))
			if !exists(t, c, "e", "a") || !exists(t, c, "e", "b") || !exists(t, c, "e", "c") {
				t.Fatal("imports did not take effect")
			}
			// Reads are answered with one frame per command in every reading.
			st, err := c.KeyStatus(ctx, "e", &kms.KeyStatusRequest{Name: "a"}, &kms.KeyStatusRequest{Name: "b"})
			must(t, err)
			if len(st) != 2 || st[0].Name != "a" || st[1].Name != "b" {
				t.Fatalf("status answers %+v", st)
			}
		})
	}
}

func TestReadingMixed(t *testing.T) {
	t.Parallel()
	t.Run(MixedRefuse, func(t *testing.T) {
		_, c := withEnclave(t, Readings{Mixed: MixedRefuse})
		must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "old", Key: make([]byte, 32)}))
		_, err := send(t, c, "e", importFrame(t, "new"), statusFrame(t, "old"))
		ke, ok := errors.AsType[kms.Error](err)
		if !ok || ke.Code != http.StatusBadRequest {
			t.Fatalf("mixed request: %v, want 400", err)
		}
		if exists(t, c, "e", "new") {
			t.Fatal("a refused mixed request imported a key")
		}
	})
	t.Run(MixedAccept, func(t *testing.T) {
		_, c := withEnclave(t, Readings{Mixed: MixedAccept, WriteAnswer: WriteFrames})
		body, err := send(t, c, "e", importFrame(t, "new"), statusFrame(t, "new"))
		must(t, err)
		if !exists(t, c, "e", "new") {
			t.Fatal("accepted mixed request did not import")
		}
		// the read sees the write before it: an empty import frame, then the status
		if n := countTestFrames(t, body); n != 2 {
			t.Fatalf("answer has %d frames, want 2", n)
		}
		// a read that fails stops the writes after it
		_, err = send(t, c, "e", statusFrame(t, "missing"), importFrame(t, "after"))
		wantErr(t, err, kms.ErrKeyNotFound)
		if exists(t, c, "e", "after") {
			t.Fatal("a write after a failed read took effect")
		}
	})
}

func countTestFrames(t *testing.T, b []byte) int {
	t.Helper()
	n := 0
	for len(b) > 0 {
		if len(b) < 6 {
			t.Fatalf("truncated frame %x", b)
		}
		l := int(uint32(b[2])<<24 | uint32(b[3])<<16 | uint32(b[4])<<8 | uint32(b[5]))
		b = b[6+l:]
		n++
	}
	return n
}

func TestReadingBatch(t *testing.T) {
	t.Parallel()
	for _, reading := range []string{BatchPartial, BatchAtomic} {
		t.Run(reading, func(t *testing.T) {
			_, c := withEnclave(t, Readings{Batch: reading})
			must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "b", Key: make([]byte, 32)}))
			_, err := send(t, c, "e", importFrame(t, "a"), importFrame(t, "b"), importFrame(t, "c"))
			wantErr(t, err, kms.ErrKeyExists) // the answer is the failed command's error
			if got, want := exists(t, c, "e", "a"), reading == BatchPartial; got != want {
				t.Fatalf("%s: the import before the failing one committed: %v", reading, got)
			}
			if exists(t, c, "e", "c") {
				t.Fatal("the import after the failing one committed")
			}
		})
	}
}

// An injected fault strikes before, between or after the commands of a
// request: partial leaves a prefix committed, atomic all or nothing, and a
// fault after the last command loses the answer of a request that took
// effect.
func TestFaultStrikesPartWay(t *testing.T) {
	t.Parallel()
	for _, reading := range []string{BatchPartial, BatchAtomic} {
		t.Run(reading, func(t *testing.T) {
			dir := t.TempDir()
			s, c := withEnclaveIn(t, dir, Readings{Batch: reading})
			must(t, s.Close())
			s = startServer(t, Config{Dir: dir, Readings: Readings{Batch: reading}, FaultErrorRate: 1})
			faulty := newClient(t, s, s.RootAPIKey())
			var groups [][]string
			for i := range 60 {
				names := []string{fmt.Sprint(i, "-0"), fmt.Sprint(i, "-1"), fmt.Sprint(i, "-2"), fmt.Sprint(i, "-3")}
				var frames [][]byte
				for _, n := range names {
					frames = append(frames, importFrame(t, n))
				}
				_, err := send(t, faulty, "e", frames...)
				if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != http.StatusServiceUnavailable {
					t.Fatalf("fault rate 1: %v", err)
				}
				groups = append(groups, names)
			}
			must(t, s.Close())
			s = startServer(t, Config{Dir: dir})
			c = newClient(t, s, s.RootAPIKey())
			seen := map[string]bool{}
			for _, names := range groups {
				committed := 0
				for j, n := range names {
					if exists(t, c, "e", n) {
						if committed != j {
							t.Fatalf("key %s committed after one that was not", n)
						}
						committed++
					}
				}
				switch {
				case committed == 0:
					seen["none"] = true
				case committed == len(names):
					seen["all, answer lost"] = true
				default:
					seen["part"] = true
				}
			}
			want := map[string]bool{"none": true, "all, answer lost": true, "part": reading == BatchPartial}
			for k, v := range want {
				if seen[k] != v {
					t.Fatalf("%s: outcome %q seen=%v, want %v (seen %v)", reading, k, seen[k], v, seen)
				}
			}
		})
	}
}

func TestReadingDeletedNames(t *testing.T) {
	t.Parallel()
	for _, reading := range []string{DeletedTombstoned, DeletedReusable} {
		t.Run(reading, func(t *testing.T) {
			s, c := withEnclave(t, Readings{DeletedNames: reading})
			imp := &kms.ImportKeyRequest{Name: "k", Type: kms.AES256, Key: make([]byte, 32)}
			must(t, c.ImportKey(ctx, "e", imp))
			must(t, c.DeleteKey(ctx, "e", &kms.DeleteKeyRequest{Name: "k", AllVersions: true}))
			if exists(t, c, "e", "k") {
				t.Fatal("deleted key still there")
			}
			// the fact outlives a restart on the same state
			dir := s.cfg.Dir
			must(t, s.Close())
			s2 := startServer(t, Config{Dir: dir, Readings: Readings{DeletedNames: reading}})
			c = newClient(t, s2, s2.RootAPIKey())
			err := c.ImportKey(ctx, "e", imp)
			if reading == DeletedTombstoned {
				wantErr(t, err, kms.ErrKeyExists)
				wantErr(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: "k"}), kms.ErrKeyExists)
				if exists(t, c, "e", "k") {
					t.Fatal("a tombstoned name answers KEY:STATUS")
				}
				// and it is not listed
				p, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: "e"})
				must(t, err)
				if len(p.Items) != 0 {
					t.Fatalf("listing shows %+v", p.Items)
				}
				return
			}
			must(t, err)
			if !exists(t, c, "e", "k") {
				t.Fatal("re-import did not take effect")
			}
		})
	}
}

func TestContinueAtNamingNoElementIsRefused(t *testing.T) {
	t.Parallel()
	_, c := withEnclave(t, Readings{})
	for _, n := range []string{"k-1", "k-2", "k-3"} {
		must(t, c.CreateKey(ctx, "e", &kms.CreateKeyRequest{Name: n}))
	}
	p, err := c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", Limit: 2})
	must(t, err)
	if p.ContinueAt != "k-3" {
		t.Fatalf("continue_at %q", p.ContinueAt)
	}
	p, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", ContinueAt: "k-3"})
	must(t, err)
	if len(p.Items) != 1 || p.Items[0].Name != "k-3" {
		t.Fatalf("page %+v", p.Items)
	}
	// what kes migrate does: the continuation passed back as something else
	_, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", ContinueAt: "k-2x"})
	if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != http.StatusBadRequest {
		t.Fatalf("continue_at naming no element: %v, want 400", err)
	}
	// outside the prefix: an empty listing (kms-go request.go ListRequest)
	p, err = c.ListKeys(ctx, &kms.ListRequest{Enclave: "e", Prefix: "k-", ContinueAt: "x"})
	must(t, err)
	if len(p.Items) != 0 {
		t.Fatalf("page %+v", p.Items)
	}
}

func TestNoIdentityActsAboveItsPrivilege(t *testing.T) {
	t.Parallel()
	s, root := withEnclave(t, Readings{})
	adminKey, otherAdmin, userKey, victim := newAPIKey(t), newAPIKey(t), newAPIKey(t), newAPIKey(t)
	must(t, root.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: adminKey.Identity(), Privilege: kms.Admin}))
	must(t, root.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: otherAdmin.Identity(), Privilege: kms.Admin}))
	admin := newClient(t, s, adminKey.String())
	must(t, admin.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: userKey.Identity(), Privilege: kms.User}))
	must(t, admin.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: victim.Identity(), Privilege: kms.User}))
	// A policy that lets the User manage every identity.
	all := kms.RuleSet{"*": {}}
	must(t, admin.CreatePolicy(ctx, "e", &kms.CreatePolicyRequest{Name: "ids", Allow: map[cmds.Command]kms.RuleSet{
		cmds.IdentityCreate: all, cmds.IdentityDelete: all, cmds.IdentityGet: all,
	}}))
	must(t, admin.AssignPolicy(ctx, "e", &kms.AssignPolicyRequest{Policy: "ids", Identity: userKey.Identity()}))
	user := newClient(t, s, userKey.String())

	wantErr(t, user.DeleteIdentity(ctx, "e", &kms.DeleteIdentityRequest{Identity: adminKey.Identity()}), kms.ErrPermission)
	wantErr(t, user.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: adminKey.Identity(), Privilege: kms.User}), kms.ErrPermission) // overwrite
	wantErr(t, user.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: newAPIKey(t).Identity(), Privilege: kms.Admin}), kms.ErrPermission)
	// a User creates service accounts only (kms-go internal/api/api.go)
	wantErr(t, user.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: newAPIKey(t).Identity(), Privilege: kms.User}), kms.ErrPermission)
	sa := newAPIKey(t)
	must(t, user.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: sa.Identity(), IsServiceAccount: true}))
	// an identity of equal privilege may be deleted as the policy allows
	must(t, user.DeleteIdentity(ctx, "e", &kms.DeleteIdentityRequest{Identity: victim.Identity()}))
	// the admin is untouched
	ids, err := root.GetIdentity(ctx, "e", &kms.IdentityRequest{Identity: adminKey.Identity()})
	must(t, err)
	if ids[0].Privilege != kms.Admin {
		t.Fatalf("admin now %v", ids[0].Privilege)
	}
	// An Admin may manage Admins of its enclave, not a SysAdmin's service account.
	must(t, admin.DeleteIdentity(ctx, "e", &kms.DeleteIdentityRequest{Identity: otherAdmin.Identity()}))
	rootSA := newAPIKey(t)
	must(t, root.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: rootSA.Identity(), IsServiceAccount: true}))
	wantErr(t, admin.DeleteIdentity(ctx, "e", &kms.DeleteIdentityRequest{Identity: rootSA.Identity()}), kms.ErrPermission)
	wantErr(t, admin.CreateIdentity(ctx, "e", &kms.CreateIdentityRequest{Identity: rootSA.Identity(), Privilege: kms.Admin}), kms.ErrPermission)
}

// The vendor's client refuses to start without a client certificate, so
// the anonymous caller here is a plain HTTPS client sending what the
// vendor's client sends (kms-go client.go Version, Live, Ready, Send).
func TestVersionAndHealthWithoutClientCertificate(t *testing.T) {
	t.Parallel()
	s, _ := withEnclave(t, Readings{})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: caPool(t, s)}, ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	anon := &http.Client{Transport: tr}
	for _, p := range []string{"/version", "/v1/health/live", "/v1/health/ready", "/v1/health/ready?write"} {
		req, _ := http.NewRequest(http.MethodGet, s.URL()+p, nil)
		req.Header.Set("Accept", "application/*")
		resp, err := anon.Do(req)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") == "" {
			t.Fatalf("GET %s without a client certificate: %s", p, resp.Status)
		}
	}
	for _, p := range []string{"/v1/kms/e", "/v1/kms"} {
		r := post(t, anon, s.URL()+p, "application/octet-stream", statusFrame(t, "x"))
		if r.status != http.StatusUnauthorized {
			t.Fatalf("POST %s without a client certificate: %d, want 401", p, r.status)
		}
	}
}

// Key names: the vendor states no rule, so the emulator takes any
// non-empty name, including what KES itself would refuse.
func TestKeyNamesOnlyWhatTheVendorStates(t *testing.T) {
	t.Parallel()
	_, c := withEnclave(t, Readings{})
	for _, name := range []string{"a/b", `back\slash`, "with space", "ctl\x01", "ünïcode", strings.Repeat("x", 1500)} {
		must(t, c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: name, Type: kms.AES256, Key: make([]byte, 32)}))
		if !exists(t, c, "e", name) {
			t.Fatalf("%q not there", name)
		}
	}
	err := c.ImportKey(ctx, "e", &kms.ImportKeyRequest{Name: "", Type: kms.AES256, Key: make([]byte, 32)})
	if ke, ok := errors.AsType[kms.Error](err); !ok || ke.Code != http.StatusBadRequest {
		t.Fatalf("empty name: %v", err)
	}
}

package testenv

// Interop tests: the proofs that the Key Manager emulator is faithful where
// the product depends on it, judged by real parts — real KES servers
// (v0.24.0 and v0.23.0), the vendor's kms-go client and a real MinIO.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/encrypt"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/s3bucket"
)

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func random32(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// assertStoredFormat checks that a stored key has the format the KES version
// writes: JSON for v0.23, base64 protobuf for v0.24.
func assertStoredFormat(t *testing.T, version string, stored []byte) {
	t.Helper()
	isJSON := json.Valid(stored)
	switch version {
	case KES023Version:
		if !isJSON {
			t.Fatalf("KES %s stored a key that is not JSON: %.20q...", version, stored)
		}
	case KESVersion:
		if isJSON {
			t.Fatalf("KES %s stored a JSON key; want base64 protobuf", version)
		}
		if _, err := base64.StdEncoding.DecodeString(string(stored)); err != nil {
			t.Fatalf("KES %s stored a key that is not base64: %v", version, err)
		}
	default:
		t.Fatalf("unknown KES version %s", version)
	}
}

// assertCiphertextFormat checks that a KES ciphertext has the format the KES
// version writes: msgpack (0x95...) for v0.23, raw (sealed||tag||iv||nonce)
// for v0.24.
func assertCiphertextFormat(t *testing.T, version string, ct []byte, plaintextLen int) {
	t.Helper()
	switch version {
	case KES023Version:
		if len(ct) == 0 || ct[0] != 0x95 {
			t.Fatalf("KES %s ciphertext is not msgpack (first byte %#x)", version, ct[:1])
		}
	case KESVersion:
		if want := plaintextLen + 16 + 16 + 12; len(ct) != want {
			t.Fatalf("KES %s ciphertext has %d bytes; the raw format has %d for a %d-byte plaintext", version, len(ct), want, plaintextLen)
		}
		if ct[0] == 0x95 && len(ct) > 1 && ct[1] == 0xa6 {
			t.Fatalf("KES %s ciphertext looks like msgpack", version)
		}
	}
}

// TestKESCiphertextsDecryptAtEmulator: a data key generated at a real KES
// decrypts at the emulator, after the key was read from the KES fs key
// store and imported through the kms-go client, for both KES releases, both
// ciphers, and imported as well as server-created keys.
func TestKESCiphertextsDecryptAtEmulator(t *testing.T) {
	km := StartKeyManager(t, KeyManagerOptions{})
	kc := km.Client()
	ctx := testContext(t, 5*time.Minute)
	const enclave = "interop"
	if err := kc.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: enclave}); err != nil {
		t.Fatalf("CreateEnclave: %v", err)
	}

	for _, v023 := range []bool{false, true} {
		k := StartKES(t, KESOptions{V023: v023})
		kesc := k.Client()
		if got, err := kesc.Version(ctx); err != nil {
			t.Fatalf("KES version: %v", err)
		} else {
			t.Logf("KES at %s reports version %q", k.URL, got)
		}
		type keyCase struct {
			name   string
			cipher kes.KeyAlgorithm
			create bool // CreateKey (server chooses the cipher) instead of ImportKey
		}
		cases := []keyCase{
			{name: "imported-aes256", cipher: kes.AES256},
			{name: "imported-chacha20", cipher: kes.ChaCha20},
			{name: "created", create: true},
		}
		for _, c := range cases {
			t.Run(k.Version+"/"+c.name, func(t *testing.T) {
				keyName := strings.ReplaceAll("kes-"+k.Version[1:5]+"-"+c.name, ".", "_") // kes-0_24-imported-aes256
				var material []byte
				if c.create {
					if err := kesc.CreateKey(ctx, keyName); err != nil {
						t.Fatalf("KES CreateKey: %v", err)
					}
				} else {
					material = random32(t)
					if err := kesc.ImportKey(ctx, keyName, &kes.ImportKeyRequest{Key: material, Cipher: c.cipher}); err != nil {
						t.Fatalf("KES ImportKey: %v", err)
					}
				}
				info, err := kesc.DescribeKey(ctx, keyName)
				if err != nil {
					t.Fatalf("KES DescribeKey: %v", err)
				}

				aad := []byte(`{"bkt":"bkt/obj"}`)
				dek, err := kesc.GenerateKey(ctx, keyName, aad)
				if err != nil {
					t.Fatalf("KES GenerateKey: %v", err)
				}
				if len(dek.Plaintext) != 32 {
					t.Fatalf("KES data key has %d bytes", len(dek.Plaintext))
				}
				assertCiphertextFormat(t, k.Version, dek.Ciphertext, len(dek.Plaintext))

				stored, err := os.ReadFile(filepath.Join(k.KeyStoreDir, keyName))
				if err != nil {
					t.Fatalf("reading the fs key store: %v", err)
				}
				assertStoredFormat(t, k.Version, stored)
				key, err := kescrypto.ParseKey(stored)
				if err != nil {
					t.Fatalf("kescrypto.ParseKey: %v", err)
				}
				if key.Algorithm.String() != info.Algorithm.String() {
					t.Fatalf("stored key algorithm %s, KES describes %s", key.Algorithm, info.Algorithm)
				}
				if !c.create {
					if key.Algorithm.String() != c.cipher.String() {
						t.Fatalf("stored key algorithm %s, imported %s", key.Algorithm, c.cipher)
					}
					if !bytes.Equal(key.Material, material) {
						t.Fatal("stored key material differs from the imported material")
					}
				}
				switch k.Version {
				case KESVersion:
					if len(key.HMAC) != 32 {
						t.Fatalf("KES %s key has a %d-byte HMAC key; v0.24 attaches one", k.Version, len(key.HMAC))
					}
				case KES023Version:
					if key.HMAC != nil {
						t.Fatalf("KES %s key has an HMAC key; v0.23 has none", k.Version)
					}
				}

				typ, err := kms.ParseSecretKeyType(key.Algorithm.String())
				if err != nil {
					t.Fatal(err)
				}
				if err := kc.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: keyName, Type: typ, Key: key.Material}); err != nil {
					t.Fatalf("emulator ImportKey: %v", err)
				}
				resp, err := kc.Decrypt(ctx, enclave, &kms.DecryptRequest{Name: keyName, Ciphertext: dek.Ciphertext, AssociatedData: aad})
				if err != nil {
					t.Fatalf("emulator Decrypt of a KES %s ciphertext (%s key): %v", k.Version, key.Algorithm, err)
				}
				if len(resp) != 1 || !bytes.Equal(resp[0].Plaintext, dek.Plaintext) {
					t.Fatalf("emulator decrypted the KES %s ciphertext to a different plaintext", k.Version)
				}

				// The associated data is bound: another context must fail
				// with the Key Manager's decryption error.
				_, err = kc.Decrypt(ctx, enclave, &kms.DecryptRequest{Name: keyName, Ciphertext: dek.Ciphertext, AssociatedData: []byte(`{"bkt":"bkt/other"}`)})
				if !errors.Is(err, kms.ErrDecrypt) {
					t.Fatalf("emulator Decrypt with the wrong associated data: got %v, want %v", err, kms.ErrDecrypt)
				}
				// And so is the key material: a tampered ciphertext fails.
				bad := slices.Clone(dek.Ciphertext)
				bad[len(bad)/2] ^= 1
				if _, err := kc.Decrypt(ctx, enclave, &kms.DecryptRequest{Name: keyName, Ciphertext: bad, AssociatedData: aad}); err == nil {
					t.Fatal("emulator decrypted a tampered ciphertext")
				}
			})
		}
	}
}

// sseObjects puts one SSE-S3 and one SSE-KMS object and returns their
// contents by name.
func sseObjects(t *testing.T, ctx context.Context, c *minio.Client, bucket, kmsKey string) map[string][]byte {
	t.Helper()
	if _, err := s3bucket.Make(ctx, c, bucket); err != nil {
		t.Fatalf("MakeBucket: %v", err)
	}
	sseKMS, err := encrypt.NewSSEKMS(kmsKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	objects := map[string][]byte{}
	for name, sse := range map[string]encrypt.ServerSide{
		"sse-s3.bin":  encrypt.NewSSE(),
		"sse-kms.bin": sseKMS,
	} {
		data := make([]byte, 1<<20+17)
		_, _ = rand.Read(data)
		if _, err := c.PutObject(ctx, bucket, name, bytes.NewReader(data), int64(len(data)),
			minio.PutObjectOptions{ServerSideEncryption: sse}); err != nil {
			t.Fatalf("PutObject %s: %v", name, err)
		}
		objects[name] = data
	}
	return objects
}

// checkObjects reads the objects back and compares them byte for byte; it
// also checks the SSE type each reports.
func checkObjects(t *testing.T, ctx context.Context, c *minio.Client, bucket string, objects map[string][]byte) {
	t.Helper()
	for name, want := range objects {
		obj, err := c.GetObject(ctx, bucket, name, minio.GetObjectOptions{})
		if err != nil {
			t.Fatalf("GetObject %s: %v", name, err)
		}
		got, err := io.ReadAll(obj)
		obj.Close()
		if err != nil {
			t.Fatalf("reading %s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s read back differs (%d bytes, want %d)", name, len(got), len(want))
		}
		info, err := c.StatObject(ctx, bucket, name, minio.StatObjectOptions{})
		if err != nil {
			t.Fatalf("StatObject %s: %v", name, err)
		}
		wantSSE := map[string]string{"sse-s3.bin": "AES256", "sse-kms.bin": "aws:kms"}[name]
		if got := info.Metadata.Get("X-Amz-Server-Side-Encryption"); got != wantSSE {
			t.Fatalf("%s: X-Amz-Server-Side-Encryption %q, want %q", name, got, wantSSE)
		}
	}
}

// checkKMSStatus checks that MinIO reports the named KMS with exactly one
// endpoint, online, and that its default key passes MinIO's own
// generate+decrypt round trip.
func checkKMSStatus(t *testing.T, ctx context.Context, m *MinIO, wantName, defaultKey string) {
	t.Helper()
	adm := m.Admin()
	st, err := adm.KMSStatus(ctx)
	if err != nil {
		t.Fatalf("KMSStatus: %v", err)
	}
	if st.Name != wantName {
		t.Fatalf("KMSStatus name %q, want %q", st.Name, wantName)
	}
	if st.DefaultKeyID != defaultKey {
		t.Fatalf("KMSStatus default key %q, want %q", st.DefaultKeyID, defaultKey)
	}
	if len(st.Endpoints) != 1 {
		t.Fatalf("KMSStatus endpoints %v, want exactly one", st.Endpoints)
	}
	for ep, state := range st.Endpoints {
		if state != madmin.ItemOnline {
			t.Fatalf("KMSStatus endpoint %s is %q", ep, state)
		}
	}
	ks, err := adm.GetKeyStatus(ctx, defaultKey)
	if err != nil {
		t.Fatalf("GetKeyStatus: %v", err)
	}
	if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
		t.Fatalf("GetKeyStatus %s: encryption error %q, decryption error %q", defaultKey, ks.EncryptionErr, ks.DecryptionErr)
	}
	t.Logf("MinIO reports %s, endpoints %v", st.Name, st.Endpoints)
}

// sealedDEK returns the KMS ciphertext of an object's data key as MinIO
// stored it in xl.meta (X-Minio-Internal-Server-Side-Encryption-S3-Kms-Sealed-Key,
// a msgpack bin or str holding base64). No API exposes it.
func sealedDEK(t *testing.T, m *MinIO, bucket, object string) []byte {
	t.Helper()
	meta, err := os.ReadFile(filepath.Join(m.DataDir, bucket, object, "xl.meta"))
	if err != nil {
		t.Fatalf("reading xl.meta: %v", err)
	}
	const key = "X-Minio-Internal-Server-Side-Encryption-S3-Kms-Sealed-Key"
	i := bytes.Index(meta, []byte(key))
	if i < 0 {
		t.Fatalf("%s/%s: xl.meta has no %s", bucket, object, key)
	}
	b := meta[i+len(key):]
	var n int
	switch {
	case len(b) > 2 && (b[0] == 0xc4 || b[0] == 0xd9): // bin8, str8
		n, b = int(b[1]), b[2:]
	case len(b) > 3 && (b[0] == 0xc5 || b[0] == 0xda): // bin16, str16
		n, b = int(b[1])<<8|int(b[2]), b[3:]
	case len(b) > 1 && b[0]&0xe0 == 0xa0: // fixstr
		n, b = int(b[0]&0x1f), b[1:]
	default:
		t.Fatalf("%s/%s: unexpected msgpack type after %s", bucket, object, key)
	}
	if n > len(b) {
		t.Fatalf("%s/%s: truncated xl.meta", bucket, object)
	}
	ct, err := base64.StdEncoding.DecodeString(string(b[:n]))
	if err != nil {
		t.Fatalf("%s/%s: sealed data key is not base64: %v", bucket, object, err)
	}
	return ct
}

// TestMinIOWithKES: the baseline — a real MinIO on a real KES.
func TestMinIOWithKES(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	k := StartKES(t, KESOptions{})
	if err := k.Client().CreateKey(ctx, "sse-kms-key"); err != nil {
		t.Fatal(err)
	}
	m := StartMinIOWithKES(t, k, "minio-default-key")
	objects := sseObjects(t, ctx, m.Client(), "bucket", "sse-kms-key")
	checkObjects(t, ctx, m.Client(), "bucket", objects)
	checkKMSStatus(t, ctx, m, "MinIO KES", "minio-default-key")
}

// TestMinIOWithEmulator: a real MinIO runs on the emulator as its Key
// Manager.
func TestMinIOWithEmulator(t *testing.T) {
	ctx := testContext(t, 5*time.Minute)
	km := StartKeyManager(t, KeyManagerOptions{})
	const enclave = "aistor"
	apiKey, err := km.CreateEnclaveAdmin(ctx, enclave)
	if err != nil {
		t.Fatal(err)
	}
	if err := km.Client().CreateKey(ctx, enclave, &kms.CreateKeyRequest{Name: "sse-kms-key"}); err != nil {
		t.Fatalf("emulator CreateKey: %v", err)
	}
	m := StartMinIO(t, MinIOOptions{
		Env:     KeyManagerEnv(km, enclave, apiKey, "minio-default-key"),
		CAFiles: []string{km.CAFile},
	})
	objects := sseObjects(t, ctx, m.Client(), "bucket", "sse-kms-key")
	checkObjects(t, ctx, m.Client(), "bucket", objects)
	checkKMSStatus(t, ctx, m, "MinIO KMS", "minio-default-key")

	// MinIO created its default key at the emulator on startup.
	st, err := km.Client().KeyStatus(ctx, enclave, &kms.KeyStatusRequest{Name: "minio-default-key"})
	if err != nil || len(st) != 1 {
		t.Fatalf("emulator KeyStatus of MinIO's default key: %v", err)
	}

	// A full restart on the same emulator state reads everything back.
	m.Restart()
	checkObjects(t, ctx, m.Client(), "bucket", objects)
}

// TestCutoverKESToEmulator is the heart of the product: objects written by
// MinIO under a real KES read back byte-identical after the KES keys were
// imported into the emulator (read from the fs key store), MinIO's env file
// was switched to the Key Manager and MinIO was fully restarted — with KES
// stopped, so nothing can come from it.
func TestCutoverKESToEmulator(t *testing.T) {
	for _, v023 := range []bool{false, true} {
		name := KESVersion
		if v023 {
			name = KES023Version
		}
		t.Run(name, func(t *testing.T) {
			ctx := testContext(t, 10*time.Minute)
			k := StartKES(t, KESOptions{V023: v023})
			if err := k.Client().CreateKey(ctx, "sse-kms-key"); err != nil {
				t.Fatal(err)
			}
			m := StartMinIOWithKES(t, k, "minio-default-key")
			checkKMSStatus(t, ctx, m, "MinIO KES", "minio-default-key")
			objects := sseObjects(t, ctx, m.Client(), "bucket", "sse-kms-key")
			checkObjects(t, ctx, m.Client(), "bucket", objects)
			// The data keys MinIO stored are in the KES release's
			// ciphertext format: msgpack from v0.23, raw from v0.24.
			// The Key Manager receives them unchanged.
			for name := range objects {
				assertCiphertextFormat(t, k.Version, sealedDEK(t, m, "bucket", name), 32)
			}
			// IAM data is sealed with the KMS too.
			if err := m.Admin().AddUser(ctx, "cutover-user", "cutover-secret-123"); err != nil {
				t.Fatalf("AddUser: %v", err)
			}

			// Migrate: every key in the fs store into the enclave.
			km := StartKeyManager(t, KeyManagerOptions{})
			const enclave = "aistor"
			apiKey, err := km.CreateEnclaveAdmin(ctx, enclave)
			if err != nil {
				t.Fatal(err)
			}
			entries, err := os.ReadDir(k.KeyStoreDir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range entries {
				stored, err := os.ReadFile(filepath.Join(k.KeyStoreDir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				assertStoredFormat(t, k.Version, stored)
				key, err := kescrypto.ParseKey(stored)
				if err != nil {
					t.Fatalf("parsing stored key %s: %v", e.Name(), err)
				}
				typ, err := kms.ParseSecretKeyType(key.Algorithm.String())
				if err != nil {
					t.Fatal(err)
				}
				if err := km.Client().ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: e.Name(), Type: typ, Key: key.Material}); err != nil {
					t.Fatalf("emulator ImportKey %s: %v", e.Name(), err)
				}
				names = append(names, e.Name())
			}
			slices.Sort(names)
			if want := []string{"minio-default-key", "sse-kms-key"}; !slices.Equal(names, want) {
				t.Fatalf("KES key store holds %v, want %v", names, want)
			}

			// Cut over: KES gone, env file switched, full restart.
			k.Stop()
			if err := m.AddCA(km.CAFile); err != nil {
				t.Fatal(err)
			}
			if err := m.WriteEnv(KeyManagerEnv(km, enclave, apiKey, "minio-default-key")); err != nil {
				t.Fatal(err)
			}
			m.Restart()

			checkKMSStatus(t, ctx, m, "MinIO KMS", "minio-default-key")
			checkObjects(t, ctx, m.Client(), "bucket", objects)
			if _, err := m.Admin().GetUserInfo(ctx, "cutover-user"); err != nil {
				t.Fatalf("GetUserInfo after cutover: %v", err)
			}
			// New writes under the Key Manager work too.
			more := sseObjects(t, ctx, m.Client(), "after", "sse-kms-key")
			checkObjects(t, ctx, m.Client(), "after", more)
		})
	}
}

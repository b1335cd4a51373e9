package kescrypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func seq(start byte) []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

var created = time.Date(2024, 3, 1, 12, 30, 45, 123456789, time.UTC)

func testKey(alg Algorithm) Key {
	return Key{Algorithm: alg, Material: seq(1), HMAC: seq(100), CreatedAt: created, CreatedBy: "h1:creator"}
}

// independentSeal is a from-scratch implementation of the KES derivation
// (DOMAIN A6): AES256 → AES-256-GCM under HMAC-SHA256(master, iv);
// ChaCha20 → ChaCha20-Poly1305 under HChaCha20(master, iv).
func independentAEAD(t testing.TB, alg Algorithm, master, iv []byte) cipher.AEAD {
	t.Helper()
	switch alg {
	case AES256:
		m := hmac.New(sha256.New, master)
		m.Write(iv)
		blk, err := aes.NewCipher(m.Sum(nil))
		if err != nil {
			t.Fatal(err)
		}
		g, err := cipher.NewGCM(blk)
		if err != nil {
			t.Fatal(err)
		}
		return g
	case ChaCha20:
		k, err := chacha20.HChaCha20(master, iv)
		if err != nil {
			t.Fatal(err)
		}
		c, err := chacha20poly1305.New(k)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Fatalf("bad alg %v", alg)
	return nil
}

func TestAlgorithmString(t *testing.T) {
	if AES256.String() != "AES256" || ChaCha20.String() != "ChaCha20" {
		t.Fatalf("got %q %q", AES256, ChaCha20)
	}
	for in, want := range map[string]Algorithm{"AES256": AES256, "AES256-GCM_SHA256": AES256, "ChaCha20": ChaCha20, "XCHACHA20-POLY1305": ChaCha20} {
		if got, err := ParseAlgorithm(in); err != nil || got != want {
			t.Errorf("ParseAlgorithm(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseAlgorithm("aes256"); err == nil {
		t.Error("ParseAlgorithm accepted lowercase name")
	}
}

func TestSealIsKESRawFormat(t *testing.T) {
	for _, alg := range []Algorithm{AES256, ChaCha20} {
		k := testKey(alg)
		pt, ad := []byte("data encryption key"), []byte(`{"bkt":"bkt/obj"}`)
		ct, err := Seal(k, pt, ad)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != len(pt)+44 {
			t.Fatalf("%v: len %d, want %d", alg, len(ct), len(pt)+44)
		}
		// Layout: sealed‖tag16‖iv16‖nonce12 — decrypt independently.
		n := len(ct)
		iv, nonce, sealed := ct[n-28:n-12], ct[n-12:], ct[:n-28]
		got, err := independentAEAD(t, alg, k.Material, iv).Open(nil, nonce, sealed, ad)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("%v: independent open: %v %q", alg, err, got)
		}
		// Two seals differ (random iv/nonce).
		ct2, _ := Seal(k, pt, ad)
		if bytes.Equal(ct, ct2) {
			t.Fatalf("%v: Seal is deterministic", alg)
		}
	}
}

// Known-answer vectors: ciphertexts built with fixed iv/nonce by the
// independent implementation in all three layouts, opened by Open.
func TestOpenKnownAnswer(t *testing.T) {
	iv, _ := hex.DecodeString("000102030405060708090a0b0c0d0e0f")
	nonce, _ := hex.DecodeString("a0a1a2a3a4a5a6a7a8a9aaab")
	pt, ad := []byte("The quick brown fox"), []byte("context")
	for _, alg := range []Algorithm{AES256, ChaCha20} {
		k := testKey(alg)
		sealed := independentAEAD(t, alg, k.Material, iv).Seal(nil, nonce, pt, ad)

		raw := append(append(append([]byte{}, sealed...), iv...), nonce...)

		// msgpack: fixarray(5) fixstr(alg) fixstr(id) bin8(16) bin8(12) bin8(n)
		mp := []byte{0x95, 0xa0 | byte(len(alg.String()))}
		mp = append(mp, alg.String()...)
		mp = append(mp, 0xd9, 32) // str8: the 32-character hex id
		mp = append(mp, k.ID()...)
		mp = append(mp, 0xc4, 16)
		mp = append(mp, iv...)
		mp = append(mp, 0xc4, 12)
		mp = append(mp, nonce...)
		mp = append(mp, 0xc4, byte(len(sealed)))
		mp = append(mp, sealed...)

		aead := map[Algorithm]string{AES256: "AES-256-GCM-HMAC-SHA-256", ChaCha20: "ChaCha20Poly1305"}[alg]
		js := `{"aead":"` + aead + `","id":"` + k.ID() + `","iv":"` + base64.StdEncoding.EncodeToString(iv) +
			`","nonce":"` + base64.StdEncoding.EncodeToString(nonce) + `","bytes":"` + base64.StdEncoding.EncodeToString(sealed) + `"}`

		for name, ct := range map[string][]byte{"raw": raw, "msgpack": mp, "json": []byte(js)} {
			got, err := Open(k, ct, ad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Errorf("%v/%s: Open = %q, %v", alg, name, got, err)
			}
			if _, err := Open(k, ct, []byte("other")); !errors.Is(err, ErrDecrypt) {
				t.Errorf("%v/%s: wrong AAD: %v", alg, name, err)
			}
			other := k
			other.Material = seq(2)
			if _, err := Open(other, ct, ad); !errors.Is(err, ErrDecrypt) {
				t.Errorf("%v/%s: wrong key: %v", alg, name, err)
			}
		}
	}
}

func TestSealFormatsRoundTrip(t *testing.T) {
	sealers := map[string]func(Key, []byte, []byte) ([]byte, error){"raw": Seal, "msgpack": SealMsgpack, "json": SealLegacyJSON}
	for _, alg := range []Algorithm{AES256, ChaCha20} {
		k := testKey(alg)
		for name, seal := range sealers {
			for _, pt := range [][]byte{nil, []byte("x"), bytes.Repeat([]byte("y"), 1000)} {
				ct, err := seal(k, pt, []byte("ad"))
				if err != nil {
					t.Fatal(err)
				}
				got, err := Open(k, ct, []byte("ad"))
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("%v/%s: %v", alg, name, err)
				}
				// Tamper with one byte in the middle.
				bad := bytes.Clone(ct)
				bad[len(bad)/2] ^= 1
				if _, err := Open(k, bad, []byte("ad")); err == nil {
					t.Fatalf("%v/%s: tampered ciphertext opened", alg, name)
				}
			}
		}
	}
	// msgpack layout check: first byte 0x95, algorithm name and key id embedded.
	k := testKey(ChaCha20)
	ct, _ := SealMsgpack(k, []byte("p"), nil)
	if ct[0] != 0x95 || !bytes.Contains(ct, []byte("ChaCha20")) || !bytes.Contains(ct, []byte(k.ID())) {
		t.Fatalf("unexpected msgpack layout %x", ct)
	}
}

// KES v0.24 uses the stored key's type: a msgpack ciphertext claiming
// ChaCha20 is still opened with an AES256 key's cipher (the alg is ignored).
func TestOpenIgnoresEmbeddedAlgorithm(t *testing.T) {
	k := testKey(AES256)
	ct, _ := SealMsgpack(k, []byte("secret"), nil)
	ct = bytes.Replace(ct, []byte("\xa6AES256"), []byte("\xa8ChaCha20"), 1)
	if got, err := Open(k, ct, nil); err != nil || string(got) != "secret" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// ... and an AES ciphertext does not open with a ChaCha20 key of the same bytes.
	kc := k
	kc.Algorithm = ChaCha20
	if _, err := Open(kc, ct, nil); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Open with other cipher: %v", err)
	}
}

func TestOpenShortInput(t *testing.T) {
	k := testKey(AES256)
	for _, ct := range [][]byte{nil, {}, {0x95}, []byte("{}"), make([]byte, 28), make([]byte, 44)} {
		if _, err := Open(k, ct, nil); !errors.Is(err, ErrDecrypt) {
			t.Errorf("Open(%x) = %v", ct, err)
		}
	}
	if _, err := Open(Key{Algorithm: AES256, Material: []byte("short")}, make([]byte, 60), nil); err == nil {
		t.Error("Open accepted a short key")
	}
}

// v0.23 JSON: exactly what kes@v0.23.0 key.MarshalText writes.
func TestMarshalV023(t *testing.T) {
	k := testKey(AES256)
	b, err := k.MarshalV023()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"version":"v1","bytes":"` + base64.StdEncoding.EncodeToString(seq(1)) + `","created_at":"2024-03-01T12:30:45.123456789Z","created_by":"h1:creator"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	k = testKey(ChaCha20)
	k.CreatedBy = ""
	b, _ = k.MarshalV023()
	want = `{"version":"v1","bytes":"` + base64.StdEncoding.EncodeToString(seq(1)) + `","algorithm":"ChaCha20","created_at":"2024-03-01T12:30:45.123456789Z"}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	p, err := ParseKey(b)
	if err != nil || p.Algorithm != ChaCha20 || !bytes.Equal(p.Material, seq(1)) || p.HMAC != nil || !p.CreatedAt.Equal(created) {
		t.Fatalf("ParseKey = %+v, %v", p, err)
	}
}

func TestParseKeyJSONVariants(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString(seq(1))
	for in, alg := range map[string]Algorithm{
		`{"version":"v1","bytes":"` + b64 + `"}`:                                    AES256,
		`{"bytes":"` + b64 + `","algorithm":""}`:                                    AES256,
		`{"version":"v1","bytes":"` + b64 + `","algorithm":"AES256-GCM_SHA256"}`:    AES256,
		`{"version":"v1","bytes":"` + b64 + `","algorithm":"XCHACHA20-POLY1305"}`:   ChaCha20,
		`{"version":"v1","bytes":"` + b64 + `","algorithm":"ChaCha20","x":[1,2,3]}`: ChaCha20,
		"\n\t " + `{"bytes":"` + b64 + `"}`:                                         AES256,
	} {
		k, err := ParseKey([]byte(in))
		if err != nil || k.Algorithm != alg || !bytes.Equal(k.Material, seq(1)) {
			t.Errorf("ParseKey(%s) = %v, %v", in, k.Algorithm, err)
		}
	}
	for in, msg := range map[string]string{
		`{"version":"v1","bytes":"` + base64.StdEncoding.EncodeToString(seq(1)[:16]) + `"}`: "invalid key length 16",
		`{"version":"v1","bytes":"` + b64 + `","algorithm":"DES"}`:                          `"DES" is not supported`,
		`{"version":"v1","bytes":42}`:                                                       `field "bytes"`,
		`{"version":"v1","bytes":"!!!!"}`:                                                   "not valid base64",
		`[]`:                                                                                "invalid JSON key",
		`42`:                                                                                "invalid JSON key",
		`"bytes"`:                                                                           "invalid JSON key",
		`null`:                                                                              "invalid key length 0",
		`{"bytes":"` + b64 + `","created_at":"yesterday"}`: "invalid JSON key",
		`{"version":"v1","bytes":"` + b64 + `"`:            "invalid base64",
		`not a key at all`:                                 "invalid base64",
		``:                                                 "no secret key",
	} {
		_, err := ParseKey([]byte(in))
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseKey(%q) error %v, want %q", in, err, msg)
		}
		if err != nil && strings.Contains(err.Error(), b64) {
			t.Errorf("error leaks key material: %v", err)
		}
	}
}

// keyVersionType builds the KES v0.24 KeyVersion message type from its
// .proto definition (internal/protobuf/crypto.proto) with dynamicpb, an
// implementation independent of MarshalV024/ParseKey.
func keyVersionType(t *testing.T) protoreflect.MessageType {
	t.Helper()
	s := proto.String
	f := func(name string, num int32, typ descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		d := &descriptorpb.FieldDescriptorProto{Name: s(name), JsonName: s(name), Number: proto.Int32(num), Type: typ.Enum(),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()}
		if typeName != "" {
			d.TypeName = s(typeName)
		}
		return d
	}
	fd := &descriptorpb.FileDescriptorProto{
		Name: s("kescrypto_test/crypto.proto"), Package: s("miniohq.kms"), Syntax: s("proto3"),
		Dependency: []string{"google/protobuf/timestamp.proto"},
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: s("SecretKey"), Field: []*descriptorpb.FieldDescriptorProto{
				f("Key", 1, descriptorpb.FieldDescriptorProto_TYPE_BYTES, ""), f("Type", 2, descriptorpb.FieldDescriptorProto_TYPE_UINT32, "")}},
			{Name: s("HMACKey"), Field: []*descriptorpb.FieldDescriptorProto{
				f("Key", 1, descriptorpb.FieldDescriptorProto_TYPE_BYTES, ""), f("Hash", 2, descriptorpb.FieldDescriptorProto_TYPE_UINT32, "")}},
			{Name: s("KeyVersion"), Field: []*descriptorpb.FieldDescriptorProto{
				f("Key", 1, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".miniohq.kms.SecretKey"),
				f("HMACKey", 2, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".miniohq.kms.HMACKey"),
				f("CreatedAt", 3, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".google.protobuf.Timestamp"),
				f("CreatedBy", 4, descriptorpb.FieldDescriptorProto_TYPE_STRING, "")}},
		},
	}
	_ = timestamppb.Now() // link the well-known type into the global registry
	file, err := protodesc.NewFile(fd, protoregistryFiles())
	if err != nil {
		t.Fatal(err)
	}
	return dynamicpb.NewMessageType(file.Messages().ByName("KeyVersion"))
}

// kesEncode mirrors KES v0.24 EncodeKeyVersion using the dynamic message.
func kesEncode(t *testing.T, mt protoreflect.MessageType, k Key) []byte {
	t.Helper()
	m := mt.New()
	fields := m.Descriptor().Fields()
	sk := m.NewField(fields.ByNumber(1)).Message()
	sk.Set(sk.Descriptor().Fields().ByNumber(1), protoreflect.ValueOfBytes(k.Material))
	sk.Set(sk.Descriptor().Fields().ByNumber(2), protoreflect.ValueOfUint32(uint32(k.Algorithm)))
	m.Set(fields.ByNumber(1), protoreflect.ValueOfMessage(sk))
	hk := m.NewField(fields.ByNumber(2)).Message()
	hk.Set(hk.Descriptor().Fields().ByNumber(1), protoreflect.ValueOfBytes(k.HMAC))
	hk.Set(hk.Descriptor().Fields().ByNumber(2), protoreflect.ValueOfUint32(1))
	m.Set(fields.ByNumber(2), protoreflect.ValueOfMessage(hk))
	m.Set(fields.ByNumber(3), protoreflect.ValueOfMessage(timestamppb.New(k.CreatedAt).ProtoReflect()))
	if k.CreatedBy != "" {
		m.Set(fields.ByNumber(4), protoreflect.ValueOfString(k.CreatedBy))
	}
	b, err := proto.Marshal(m.Interface())
	if err != nil {
		t.Fatal(err)
	}
	return []byte(base64.StdEncoding.EncodeToString(b))
}

func TestMarshalV024MatchesProtobufRuntime(t *testing.T) {
	mt := keyVersionType(t)
	for _, k := range []Key{
		testKey(AES256),
		testKey(ChaCha20),
		{Algorithm: AES256, Material: seq(7), HMAC: seq(9)},                                            // zero time, no creator
		{Algorithm: AES256, Material: seq(7), HMAC: seq(9), CreatedAt: time.Unix(1700000000, 0).UTC()}, // no nanos
	} {
		got, err := k.MarshalV024()
		if err != nil {
			t.Fatal(err)
		}
		// Same message as the protobuf runtime encodes ...
		want := kesEncode(t, mt, k)
		a, b := mt.New().Interface(), mt.New().Interface()
		rawGot, _ := base64.StdEncoding.DecodeString(string(got))
		rawWant, _ := base64.StdEncoding.DecodeString(string(want))
		if err := proto.Unmarshal(rawGot, a); err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(rawWant, b); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(a, b) || len(rawGot) != len(rawWant) {
			t.Fatalf("MarshalV024 mismatch\n got %s\nwant %s", got, want)
		}
		// ... with top-level fields in field-number order, as generated Go
		// code (which KES uses) writes them; dynamicpb does not promise an order.
		last := protowire.Number(0)
		for r := rawGot; len(r) > 0; {
			num, typ, n := protowire.ConsumeTag(r)
			if num <= last {
				t.Fatalf("field %d after %d", num, last)
			}
			last = num
			r = r[n:]
			r = r[protowire.ConsumeFieldValue(num, typ, r):]
		}
		p, err := ParseKey(got)
		if err != nil {
			t.Fatal(err)
		}
		if p.Algorithm != k.Algorithm || !bytes.Equal(p.Material, k.Material) || !bytes.Equal(p.HMAC, k.HMAC) ||
			!p.CreatedAt.Equal(k.CreatedAt) || p.CreatedBy != k.CreatedBy {
			t.Fatalf("round trip: %+v != %+v", p.CreatedAt, k.CreatedAt)
		}
	}
	if _, err := (Key{Algorithm: AES256, Material: seq(1)}).MarshalV024(); err == nil {
		t.Fatal("MarshalV024 without HMAC key succeeded; KES v0.24 cannot store that")
	}
}

func TestParseKeyV024Errors(t *testing.T) {
	mt := keyVersionType(t)
	enc := func(mutate func(m protoreflect.Message)) []byte {
		raw, _ := base64.StdEncoding.DecodeString(string(kesEncode(t, mt, testKey(AES256))))
		m := mt.New()
		if err := proto.Unmarshal(raw, m.Interface()); err != nil {
			t.Fatal(err)
		}
		mutate(m)
		b, _ := proto.Marshal(m.Interface())
		return []byte(base64.StdEncoding.EncodeToString(b))
	}
	fields := mt.Descriptor().Fields()
	cases := map[string][]byte{
		"no secret key": enc(func(m protoreflect.Message) { m.Clear(fields.ByNumber(1)) }),
		"no HMAC key":   enc(func(m protoreflect.Message) { m.Clear(fields.ByNumber(2)) }),
		"invalid secret key type 3": enc(func(m protoreflect.Message) {
			sk := m.Get(fields.ByNumber(1)).Message()
			sk.Set(sk.Descriptor().Fields().ByNumber(2), protoreflect.ValueOfUint32(3))
		}),
		"invalid secret key length 5": enc(func(m protoreflect.Message) {
			sk := m.Get(fields.ByNumber(1)).Message()
			sk.Set(sk.Descriptor().Fields().ByNumber(1), protoreflect.ValueOfBytes([]byte("short")))
		}),
		"invalid protobuf": []byte(base64.StdEncoding.EncodeToString([]byte{0x0a, 0xff})),
	}
	for msg, in := range cases {
		_, err := ParseKey(in)
		if err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("want error containing %q, got %v", msg, err)
		}
	}
	// Unknown fields are ignored, as by the Go protobuf runtime.
	raw, _ := base64.StdEncoding.DecodeString(string(kesEncode(t, mt, testKey(ChaCha20))))
	raw = append(raw, 0x50, 0x01) // field 10 varint
	if k, err := ParseKey([]byte(base64.StdEncoding.EncodeToString(raw))); err != nil || k.Algorithm != ChaCha20 {
		t.Errorf("unknown field: %v", err)
	}
}

func TestKeyID(t *testing.T) {
	h := sha256.Sum256(seq(1))
	if got := testKey(AES256).ID(); got != hex.EncodeToString(h[:16]) || len(got) != 32 {
		t.Fatalf("ID = %s", got)
	}
}

func TestErrorsDoNotLeakMaterial(t *testing.T) {
	k := Key{Algorithm: Algorithm(9), Material: seq(1)}
	_, err := Seal(k, nil, nil)
	if err == nil || strings.Contains(err.Error(), string(seq(1))) || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(seq(1))) {
		t.Fatalf("err = %v", err)
	}
	js, _ := json.Marshal(map[string]any{"bytes": seq(1)[:31]})
	if _, err := ParseKey(js); err == nil || strings.Contains(err.Error(), base64.StdEncoding.EncodeToString(seq(1)[:31])) {
		t.Fatalf("err = %v", err)
	}
}

func FuzzParseKey(f *testing.F) {
	k := testKey(ChaCha20)
	v24, _ := k.MarshalV024()
	v23, _ := k.MarshalV023()
	f.Add(v24)
	f.Add(v23)
	f.Add([]byte(`{"bytes":"AAAA","algorithm":"AES256"}`))
	f.Add([]byte("CgA="))
	f.Fuzz(func(t *testing.T, b []byte) {
		key, err := ParseKey(b)
		if err != nil {
			return
		}
		if len(key.Material) != KeySize || (key.Algorithm != AES256 && key.Algorithm != ChaCha20) {
			t.Fatalf("ParseKey accepted an invalid key: alg %v len %d", key.Algorithm, len(key.Material))
		}
		if _, err := Seal(key, []byte("x"), nil); err != nil {
			t.Fatalf("parsed key unusable: %v", err)
		}
	})
}

func FuzzOpen(f *testing.F) {
	k := testKey(AES256)
	for _, seal := range []func(Key, []byte, []byte) ([]byte, error){Seal, SealMsgpack, SealLegacyJSON} {
		ct, _ := seal(k, []byte("plaintext"), []byte("ad"))
		f.Add(ct, []byte("ad"))
	}
	f.Add([]byte{0x95}, []byte{})
	f.Add([]byte("{"), []byte{})
	f.Fuzz(func(t *testing.T, ct, ad []byte) {
		orig := bytes.Clone(ct)
		pt, err := Open(k, ct, ad)
		if !bytes.Equal(ct, orig) {
			t.Fatal("Open modified its input")
		}
		if err != nil && !errors.Is(err, ErrDecrypt) {
			t.Fatalf("unexpected error type: %v", err)
		}
		if err == nil && pt == nil {
			t.Fatal("nil plaintext without error")
		}
	})
}

// A raw ciphertext that begins with 0x95 or '{' by chance is still raw: a
// Key Manager judged by its first byte alone would refuse it as msgpack.
func TestFormatOf(t *testing.T) {
	k := testKey(AES256)
	msgpack, err := SealMsgpack(k, []byte("p"), nil)
	if err != nil {
		t.Fatal(err)
	}
	legacy, err := SealLegacyJSON(k, []byte("p"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := FormatOf(msgpack); got != FormatMsgpack {
		t.Errorf("FormatOf(msgpack) = %q", got)
	}
	if got := FormatOf(legacy); got != FormatJSON {
		t.Errorf("FormatOf(json) = %q", got)
	}
	for _, first := range []byte{0x95, '{'} {
		var raw []byte
		for i := 0; i < 100000 && (len(raw) == 0 || raw[0] != first); i++ {
			if raw, err = Seal(k, []byte("p"), nil); err != nil {
				t.Fatal(err)
			}
		}
		if raw[0] != first {
			t.Fatalf("no raw ciphertext beginning with %#x in 100000 seals", first)
		}
		if got := FormatOf(raw); got != FormatRaw {
			t.Errorf("FormatOf(raw beginning with %#x) = %q, want raw", first, got)
		}
		if _, err := Open(k, raw, nil); err != nil {
			t.Errorf("Open(raw beginning with %#x): %v", first, err)
		}
	}
}

// mayBeJSON only ever skips the JSON decoder for text json.Valid refuses.
func TestMayBeJSONNeverSkipsJSON(t *testing.T) {
	k, err := Key{Algorithm: AES256, Material: seq(1), HMAC: seq(2)}.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range []string{``, ` `, `{}`, ` []`, "\n\"s\"", `-1`, `0`, `9`, `true`, `false`, `null`, "\t{\"bytes\":1}", string(k), `Cg`, `x`, "\ufeff{}", `+1`, `.5`} {
		if json.Valid([]byte(in)) && !mayBeJSON([]byte(in)) {
			t.Errorf("mayBeJSON(%q) = false for valid JSON", in)
		}
	}
	if mayBeJSON(k) {
		t.Error("mayBeJSON is true for a key KES v0.24 wrote: the decoder runs for nothing")
	}
}

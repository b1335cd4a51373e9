// Package kescrypto ports the KES key material and ciphertext formats so
// that keys exported from a KES key store can be parsed, and ciphertexts
// produced by KES v0.22–v0.24 can be decrypted, without importing KES
// internals.
//
// Sources (the authority for every detail here):
//   - github.com/minio/kes@v0.24.0 internal/crypto/key.go        (ParseKeyVersion, SecretKey)
//   - github.com/minio/kes@v0.24.0 internal/crypto/ciphertext.go (parseCiphertext)
//   - github.com/minio/kes@v0.24.0 internal/protobuf/crypto.proto (KeyVersion)
//   - github.com/minio/kes@v0.23.0 internal/key/key.go, ciphertext.go (JSON keys, msgpack ciphertexts)
package kescrypto

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// KeySize is the size of a KES secret key and of a KES HMAC key in bytes.
const KeySize = 32

// Algorithm is the type of a KES secret key. Its values match the KES
// v0.24 protobuf SecretKey.Type field (1 = AES256, 2 = ChaCha20).
type Algorithm int

// Supported key algorithms.
const (
	AES256   Algorithm = 1 // AES-256-GCM with an HMAC-SHA256 derived per-message key
	ChaCha20 Algorithm = 2 // ChaCha20-Poly1305 with an HChaCha20 derived per-message key
)

// String returns "AES256" or "ChaCha20".
func (a Algorithm) String() string {
	switch a {
	case AES256:
		return "AES256"
	case ChaCha20:
		return "ChaCha20"
	default:
		return "!INVALID:" + strconv.Itoa(int(a))
	}
}

// ParseAlgorithm parses a key algorithm name as KES does, including the
// legacy names "AES256-GCM_SHA256" and "XCHACHA20-POLY1305"
// (kes internal/crypto/key.go ParseSecretKeyType).
func ParseAlgorithm(s string) (Algorithm, error) {
	switch s {
	case "AES256", "AES256-GCM_SHA256":
		return AES256, nil
	case "ChaCha20", "XCHACHA20-POLY1305":
		return ChaCha20, nil
	default:
		return 0, fmt.Errorf("kescrypto: key algorithm %q is not supported", s)
	}
}

// Key is one KES key version.
type Key struct {
	Algorithm Algorithm
	Material  []byte // 32 bytes
	HMAC      []byte // 32 bytes HMAC-SHA256 key, nil if none (keys written by KES v0.22/v0.23 have none)
	CreatedAt time.Time
	CreatedBy string
}

// ID returns the key ID KES v0.22/v0.23 embed in msgpack and JSON
// ciphertexts: hex of the first 16 bytes of SHA-256(key material)
// (kes@v0.23.0 internal/key/key.go ID).
func (k Key) ID() string {
	h := sha256.Sum256(k.Material)
	return hex.EncodeToString(h[:16])
}

func (k Key) validate() error {
	if k.Algorithm != AES256 && k.Algorithm != ChaCha20 {
		return fmt.Errorf("kescrypto: invalid key algorithm %d", int(k.Algorithm))
	}
	if n := len(k.Material); n != KeySize {
		return fmt.Errorf("kescrypto: invalid key length %d for %s: want %d bytes", n, k.Algorithm, KeySize)
	}
	if k.HMAC != nil && len(k.HMAC) != KeySize {
		return fmt.Errorf("kescrypto: invalid HMAC key length %d: want %d bytes", len(k.HMAC), KeySize)
	}
	return nil
}

// ParseKey parses a key as stored by a KES key store. Like KES v0.24
// (internal/crypto/key.go ParseKeyVersion) it accepts
//   - JSON written by KES v0.22/v0.23: {"version":"v1","bytes":…,"algorithm":…,"created_at":…,"created_by":…}
//     (an empty or absent algorithm means AES256; legacy names are accepted; the version field is not checked)
//   - base64 (standard encoding) of a protobuf KeyVersion written by KES v0.24.
//
// Errors never contain key material.
func ParseKey(stored []byte) (Key, error) {
	if mayBeJSON(stored) {
		if k, isJSON, err := parseJSONKey(stored); isJSON {
			return k, err
		}
	}
	raw, err := base64.StdEncoding.DecodeString(string(stored))
	if err != nil {
		return Key{}, errors.New("kescrypto: key is neither JSON (KES v0.22/v0.23) nor base64 protobuf (KES v0.24): invalid base64")
	}
	return parseKeyVersion(raw)
}

// mayBeJSON reports whether stored could be JSON: its first byte after
// JSON's white space can start a JSON value. When it cannot (or there is
// none), json.Valid is false and the decoder need not run (the base64 KES
// v0.24 writes starts with 'C').
func mayBeJSON(stored []byte) bool {
	t := bytes.TrimLeft(stored, " \t\r\n")
	return len(t) > 0 && strings.IndexByte(`{["-0123456789tfn`, t[0]) >= 0
}

// parseJSONKey parses a key KES v0.22/v0.23 wrote (JSON); isJSON is false
// when stored is not JSON at all (json.Valid's answer), and the caller
// tries the base64 of KES v0.24.
func parseJSONKey(stored []byte) (k Key, isJSON bool, err error) {
	type JSON struct {
		Bytes     []byte    `json:"bytes"`
		Type      string    `json:"algorithm"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}
	var v JSON
	// Unmarshal checks the whole text is JSON before it decodes any of it
	// and answers a *json.SyntaxError when it is not (what json.Valid
	// would say, without scanning the text a second time).
	err = json.Unmarshal(stored, &v)
	if _, notJSON := errors.AsType[*json.SyntaxError](err); notJSON {
		return Key{}, false, nil
	}
	if err != nil {
		return Key{}, true, fmt.Errorf("kescrypto: invalid JSON key (KES v0.22/v0.23 format): %s", jsonErrorText(err))
	}
	alg := AES256
	if v.Type != "" {
		if alg, err = ParseAlgorithm(v.Type); err != nil {
			return Key{}, true, err
		}
	}
	if n := len(v.Bytes); n != KeySize {
		return Key{}, true, fmt.Errorf("kescrypto: invalid key length %d for %s: want %d bytes", n, alg, KeySize)
	}
	return Key{Algorithm: alg, Material: v.Bytes, CreatedAt: v.CreatedAt, CreatedBy: v.CreatedBy}, true, nil
}

// jsonErrorText describes a JSON decoding error without echoing input
// values (a *json.UnmarshalTypeError or base64 error may quote data).
func jsonErrorText(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has JSON type %s, want %s", te.Field, te.Value, te.Type)
	}
	var ce base64.CorruptInputError
	if errors.As(err, &ce) {
		return "field \"bytes\" is not valid base64"
	}
	return "malformed JSON"
}

// KES v0.24 internal/protobuf/crypto.proto:
//
//	message SecretKey  { bytes Key = 1; uint32 Type = 2; }
//	message HMACKey    { bytes Key = 1; uint32 Hash = 2; }
//	message KeyVersion { SecretKey Key = 1; HMACKey HMACKey = 2; google.protobuf.Timestamp CreatedAt = 3; string CreatedBy = 4; }
type pbKeyVersion struct {
	hasKey, hasHMAC bool
	key, hmacKey    []byte
	keyType, hash   uint32
	seconds         int64
	nanos           int32
	createdBy       string
}

// walk calls fn for each field of a protobuf message. Fields are consumed
// as the Go protobuf runtime does: unknown fields are skipped.
func walk(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errors.New("invalid protobuf field tag")
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			x, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return errors.New("invalid protobuf varint")
			}
			b = b[m:]
			if err := fn(num, typ, nil, x); err != nil {
				return err
			}
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return errors.New("invalid protobuf length-delimited field")
			}
			b = b[m:]
			if err := fn(num, typ, v, 0); err != nil {
				return err
			}
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return errors.New("invalid protobuf field")
			}
			b = b[m:]
		}
	}
	return nil
}

func parseKeyVersion(raw []byte) (Key, error) {
	var pb pbKeyVersion
	sub := func(v []byte, key *[]byte, typ *uint32) error {
		return walk(v, func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
			switch {
			case num == 1 && t == protowire.BytesType:
				*key = append([]byte(nil), v...)
			case num == 2 && t == protowire.VarintType:
				*typ = uint32(x)
			}
			return nil
		})
	}
	err := walk(raw, func(num protowire.Number, t protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && t == protowire.BytesType:
			pb.hasKey = true
			return sub(v, &pb.key, &pb.keyType)
		case num == 2 && t == protowire.BytesType:
			pb.hasHMAC = true
			return sub(v, &pb.hmacKey, &pb.hash)
		case num == 3 && t == protowire.BytesType:
			return walk(v, func(num protowire.Number, t protowire.Type, _ []byte, x uint64) error {
				switch {
				case num == 1 && t == protowire.VarintType:
					pb.seconds = int64(x)
				case num == 2 && t == protowire.VarintType:
					pb.nanos = int32(x)
				}
				return nil
			})
		case num == 4 && t == protowire.BytesType:
			if !utf8.Valid(v) {
				return errors.New("created_by is not valid UTF-8")
			}
			pb.createdBy = string(v)
		}
		return nil
	})
	if err != nil {
		return Key{}, fmt.Errorf("kescrypto: invalid protobuf key (KES v0.24 format): %v", err)
	}
	// Validation as in KES v0.24 SecretKey.UnmarshalPB and HMACKey.UnmarshalPB.
	if !pb.hasKey {
		return Key{}, errors.New("kescrypto: invalid protobuf key (KES v0.24 format): no secret key")
	}
	if n := len(pb.key); n != KeySize {
		return Key{}, fmt.Errorf("kescrypto: invalid secret key length %d: want %d bytes", n, KeySize)
	}
	alg := Algorithm(pb.keyType)
	if alg != AES256 && alg != ChaCha20 {
		return Key{}, fmt.Errorf("kescrypto: invalid secret key type %d", pb.keyType)
	}
	if !pb.hasHMAC || len(pb.hmacKey) == 0 {
		return Key{}, errors.New("kescrypto: invalid protobuf key (KES v0.24 format): no HMAC key (KES v0.24 requires one)")
	}
	if n := len(pb.hmacKey); n != KeySize {
		return Key{}, fmt.Errorf("kescrypto: invalid HMAC key length %d: want %d bytes", n, KeySize)
	}
	if pb.hash != 1 {
		return Key{}, fmt.Errorf("kescrypto: invalid HMAC key hash %d: want 1 (SHA256)", pb.hash)
	}
	return Key{
		Algorithm: alg,
		Material:  pb.key,
		HMAC:      pb.hmacKey,
		CreatedAt: time.Unix(pb.seconds, int64(pb.nanos)).UTC(), // timestamppb AsTime
		CreatedBy: pb.createdBy,
	}, nil
}

// MarshalV024 returns the key exactly as KES v0.24 stores it
// (internal/crypto/key.go EncodeKeyVersion): base64 (standard encoding)
// of the protobuf KeyVersion, fields in field-number order as the Go
// protobuf runtime writes them. KES v0.24 requires an HMAC key, so a Key
// without HMAC cannot be marshaled in this format.
func (k Key) MarshalV024() ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	if k.HMAC == nil {
		return nil, errors.New("kescrypto: KES v0.24 keys require an HMAC key, but the key has none")
	}
	if !utf8.ValidString(k.CreatedBy) {
		return nil, errors.New("kescrypto: created_by is not valid UTF-8")
	}

	var secret, mac, ts, b []byte
	secret = protowire.AppendTag(secret, 1, protowire.BytesType)
	secret = protowire.AppendBytes(secret, k.Material)
	secret = protowire.AppendTag(secret, 2, protowire.VarintType)
	secret = protowire.AppendVarint(secret, uint64(k.Algorithm))

	mac = protowire.AppendTag(mac, 1, protowire.BytesType)
	mac = protowire.AppendBytes(mac, k.HMAC)
	mac = protowire.AppendTag(mac, 2, protowire.VarintType)
	mac = protowire.AppendVarint(mac, 1) // SHA256

	// timestamppb.New(t): Seconds = t.Unix(), Nanos = t.Nanosecond(); zero values are omitted.
	if s := k.CreatedAt.Unix(); s != 0 {
		ts = protowire.AppendTag(ts, 1, protowire.VarintType)
		ts = protowire.AppendVarint(ts, uint64(s))
	}
	if n := k.CreatedAt.Nanosecond(); n != 0 {
		ts = protowire.AppendTag(ts, 2, protowire.VarintType)
		ts = protowire.AppendVarint(ts, uint64(int64(n)))
	}

	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, secret)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, mac)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	if k.CreatedBy != "" {
		b = protowire.AppendTag(b, 4, protowire.BytesType)
		b = protowire.AppendString(b, k.CreatedBy)
	}

	out := make([]byte, base64.StdEncoding.EncodedLen(len(b)))
	base64.StdEncoding.Encode(out, b)
	return out, nil
}

// MarshalV023 returns the key exactly as KES v0.22/v0.23 store it
// (kes@v0.23.0 internal/key/key.go MarshalText). In kes-go the AES256
// algorithm is the zero value, so `omitempty` drops the "algorithm" field
// for AES256 keys; ChaCha20 keys carry "algorithm":"ChaCha20". KES v0.23
// has no HMAC keys: the HMAC key, if any, is not written.
func (k Key) MarshalV023() ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	type JSON struct {
		Version   string    `json:"version"`
		Bytes     []byte    `json:"bytes"`
		Algorithm string    `json:"algorithm,omitempty"`
		CreatedAt time.Time `json:"created_at,omitempty"`
		CreatedBy string    `json:"created_by,omitempty"`
	}
	v := JSON{Version: "v1", Bytes: k.Material, CreatedAt: k.CreatedAt, CreatedBy: k.CreatedBy}
	if k.Algorithm == ChaCha20 {
		v.Algorithm = "ChaCha20"
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, errors.New("kescrypto: cannot encode key as JSON: created_at out of range")
	}
	return b, nil
}

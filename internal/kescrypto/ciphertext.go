package kescrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"

	"github.com/tinylib/msgp/msgp"
	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/chacha20poly1305"
)

// ErrDecrypt is returned when a ciphertext is not authentic: it was
// modified, sealed with another key or with other associated data, or is
// not a ciphertext at all.
var ErrDecrypt = errors.New("kescrypto: decryption failed: ciphertext is not authentic")

const (
	ivSize    = 16
	nonceSize = 12
	randSize  = ivSize + nonceSize // kes internal/crypto/key.go randSize
	tagSize   = 16

	// Overhead is the size difference between a raw (KES v0.24) ciphertext and its plaintext.
	Overhead = randSize + tagSize
)

// newAEAD derives the per-message key from the master key and the 16-byte
// IV and returns the AEAD (kes internal/crypto/key.go Encrypt/Decrypt):
// AES256: AES-256-GCM under HMAC-SHA256(master, iv);
// ChaCha20: ChaCha20-Poly1305 under HChaCha20(master, iv).
func newAEAD(k Key, iv []byte) (cipher.AEAD, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	switch k.Algorithm {
	case AES256:
		prf := hmac.New(sha256.New, k.Material)
		prf.Write(iv)
		block, err := aes.NewCipher(prf.Sum(nil))
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(block)
	default: // ChaCha20, checked by validate
		key, err := chacha20.HChaCha20(k.Material, iv)
		if err != nil {
			return nil, err
		}
		return chacha20poly1305.New(key)
	}
}

func random() (iv, nonce []byte, err error) {
	var b [randSize]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, nil, err
	}
	return b[:ivSize], b[ivSize:], nil
}

// Seal encrypts plaintext in the KES v0.24 raw format:
// sealed ‖ tag(16) ‖ iv(16) ‖ nonce(12).
func Seal(k Key, plaintext, associatedData []byte) ([]byte, error) {
	iv, nonce, err := random()
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(k, iv)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(plaintext)+Overhead)
	out = aead.Seal(out, nonce, plaintext, associatedData)
	out = append(out, iv...)
	return append(out, nonce...), nil
}

// SealMsgpack encrypts plaintext in the KES v0.22/v0.23 msgpack format
// (kes@v0.23.0 internal/key/key.go Wrap, ciphertext.go MarshalBinary):
// a 5-element array [algorithm, key id, iv bin16, nonce bin12, sealed bin].
func SealMsgpack(k Key, plaintext, associatedData []byte) ([]byte, error) {
	iv, nonce, err := random()
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(k, iv)
	if err != nil {
		return nil, err
	}
	var b []byte
	b = msgp.AppendArrayHeader(b, 5)
	b = msgp.AppendString(b, k.Algorithm.String())
	b = msgp.AppendString(b, k.ID())
	b = msgp.AppendBytes(b, iv)
	b = msgp.AppendBytes(b, nonce)
	b = msgp.AppendBytes(b, aead.Seal(nil, nonce, plaintext, associatedData))
	return b, nil
}

// Legacy JSON ciphertext AEAD names (kes internal/crypto/ciphertext.go UnmarshalJSON).
const (
	jsonAES256   = "AES-256-GCM-HMAC-SHA-256"
	jsonChaCha20 = "ChaCha20Poly1305"
)

// SealLegacyJSON encrypts plaintext in the legacy JSON format of early KES
// releases: {"aead":…,"id":…,"iv":…,"nonce":…,"bytes":…}. Provided for
// tests and demos; KES v0.22+ never writes it but still decrypts it.
func SealLegacyJSON(k Key, plaintext, associatedData []byte) ([]byte, error) {
	iv, nonce, err := random()
	if err != nil {
		return nil, err
	}
	aead, err := newAEAD(k, iv)
	if err != nil {
		return nil, err
	}
	name := jsonAES256
	if k.Algorithm == ChaCha20 {
		name = jsonChaCha20
	}
	type JSON struct {
		Algorithm string `json:"aead"`
		ID        string `json:"id,omitempty"`
		IV        []byte `json:"iv"`
		Nonce     []byte `json:"nonce"`
		Bytes     []byte `json:"bytes"`
	}
	return json.Marshal(JSON{
		Algorithm: name,
		ID:        k.ID(),
		IV:        iv,
		Nonce:     nonce,
		Bytes:     aead.Seal(nil, nonce, plaintext, associatedData),
	})
}

// Open decrypts a ciphertext produced by any KES release with the key k:
// the raw v0.24 format, the msgpack v0.22/v0.23 format (first byte 0x95)
// and the legacy JSON format (first byte '{'). Like KES v0.24
// (internal/crypto/key.go Decrypt, ciphertext.go parseCiphertext), the
// key's own algorithm decides the cipher; the algorithm and key id
// embedded in msgpack and JSON ciphertexts are ignored, and a ciphertext
// that fails to parse as msgpack or JSON is treated as raw.
// Any failure returns ErrDecrypt.
func Open(k Key, ciphertext, associatedData []byte) ([]byte, error) {
	if err := k.validate(); err != nil {
		return nil, err
	}
	ciphertext = normalize(ciphertext)
	if len(ciphertext) <= randSize {
		return nil, ErrDecrypt
	}
	sealed, rnd := ciphertext[:len(ciphertext)-randSize], ciphertext[len(ciphertext)-randSize:]
	aead, err := newAEAD(k, rnd[:ivSize])
	if err != nil {
		return nil, ErrDecrypt
	}
	plaintext, err := aead.Open(nil, rnd[ivSize:], sealed, associatedData)
	if err != nil {
		return nil, ErrDecrypt
	}
	return plaintext, nil
}

// Ciphertext formats (docs/domain.md, "Ciphertext formats"), as FormatOf
// names them.
const (
	FormatRaw     = "raw"     // KES v0.24: sealed ‖ tag ‖ iv ‖ nonce
	FormatMsgpack = "msgpack" // KES v0.22/v0.23: first byte 0x95
	FormatJSON    = "json"    // legacy: a JSON object
)

// FormatOf names the format KES v0.24 reads ciphertext in: msgpack or JSON
// only when it parses as one (kes internal/crypto/ciphertext.go
// parseCiphertext), otherwise raw — a raw ciphertext begins with 0x95 or '{'
// in about one case in 128, by chance.
func FormatOf(ciphertext []byte) string {
	if len(ciphertext) > 0 {
		switch ciphertext[0] {
		case 0x95:
			if _, _, _, ok := parseMsgpack(ciphertext); ok {
				return FormatMsgpack
			}
		case '{':
			if _, _, _, ok := parseJSON(ciphertext); ok {
				return FormatJSON
			}
		}
	}
	return FormatRaw
}

// normalize converts msgpack and JSON ciphertexts into the raw layout
// sealed ‖ iv ‖ nonce. It never modifies its argument.
func normalize(b []byte) []byte {
	if len(b) == 0 {
		return b
	}
	var iv, nonce, sealed []byte
	switch b[0] {
	case 0x95:
		var ok bool
		if iv, nonce, sealed, ok = parseMsgpack(b); !ok {
			return b
		}
	case '{':
		var ok bool
		if iv, nonce, sealed, ok = parseJSON(b); !ok {
			return b
		}
	default:
		return b
	}
	out := make([]byte, 0, len(sealed)+randSize)
	out = append(out, sealed...)
	out = append(out, iv...)
	return append(out, nonce...)
}

// parseMsgpack follows kes internal/crypto/ciphertext.go UnmarshalBinary.
func parseMsgpack(b []byte) (iv, nonce, sealed []byte, ok bool) {
	items, b, err := msgp.ReadArrayHeaderBytes(b)
	if err != nil || items != 5 {
		return nil, nil, nil, false
	}
	alg, b, err := msgp.ReadStringBytes(b)
	if err != nil {
		return nil, nil, nil, false
	}
	if _, b, err = msgp.ReadStringBytes(b); err != nil { // key id, ignored
		return nil, nil, nil, false
	}
	var ivb [ivSize]byte
	if b, err = msgp.ReadExactBytes(b, ivb[:]); err != nil {
		return nil, nil, nil, false
	}
	var nb [nonceSize]byte
	if b, err = msgp.ReadExactBytes(b, nb[:]); err != nil {
		return nil, nil, nil, false
	}
	sealed, b, err = msgp.ReadBytesZC(b)
	if err != nil || len(b) != 0 {
		return nil, nil, nil, false
	}
	if _, err := ParseAlgorithm(alg); err != nil { // must be a known name, but is otherwise ignored
		return nil, nil, nil, false
	}
	return ivb[:], nb[:], sealed, true
}

// parseJSON follows kes internal/crypto/ciphertext.go UnmarshalJSON.
func parseJSON(b []byte) (iv, nonce, sealed []byte, ok bool) {
	var v struct {
		Algorithm string `json:"aead"`
		ID        string `json:"id,omitempty"`
		IV        []byte `json:"iv"`
		Nonce     []byte `json:"nonce"`
		Bytes     []byte `json:"bytes"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, nil, nil, false
	}
	if v.Algorithm != jsonAES256 && v.Algorithm != jsonChaCha20 {
		return nil, nil, nil, false
	}
	if len(v.IV) != ivSize || len(v.Nonce) != nonceSize {
		return nil, nil, nil, false
	}
	return v.IV, v.Nonce, v.Bytes, true
}

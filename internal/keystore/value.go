package keystore

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strings"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// Class is what a stored value is (steps/keystore.go has the operator's
// view of the boundary).
type Class int

const (
	// ClassKey: a KES key, which KES v0.24's ParseKeyVersion accepts.
	ClassKey Class = iota
	// ClassBroken: a value in one of the two formats KES writes that does
	// not parse: a KES key damaged or cut short. Named, never migrated.
	ClassBroken
	// ClassForeign: neither format: not a KES key (another application's
	// secret in a store KES shares). Counted, never copied, its name
	// shown only where the operator asks.
	ClassForeign
)

// The stored-key formats KES wrote (docs/domain.md, "KES stored keys").
const (
	FormatV024 = "v0.24" // base64 (standard) of a protobuf KeyVersion
	FormatV023 = "v0.23" // JSON, written by KES v0.22 and v0.23
)

// Entry is a classified value. Reason never holds anything of the value.
type Entry struct {
	Class  Class
	Key    kescrypto.Key // ClassKey only; the caller wipes it
	Format string        // FormatV024 or FormatV023 ("" for ClassForeign)
	Reason string        // why it is broken or foreign
}

// Wipe clears the key material the entry holds.
func (e *Entry) Wipe() {
	clear(e.Key.Material)
	clear(e.Key.HMAC)
	e.Key.Material, e.Key.HMAC = nil, nil
}

// Classify judges a stored value, in this order:
//
//  1. KES's own parser (kescrypto.ParseKey, a port of KES v0.24's
//     ParseKeyVersion) accepts it: ClassKey.
//  2. It has the shape of a format KES writes, so KES wrote it and it was
//     damaged or cut short: ClassBroken. The shapes are
//     - KES v0.22/v0.23 JSON: a JSON object with a top-level member
//     "bytes" (the member holding the material in every JSON key KES
//     wrote: kes@v0.22.3 internal/key/key.go MarshalText); or, when the
//     text is not valid JSON (cut short), text whose first non-blank byte
//     is '{' and that holds "bytes";
//     - KES v0.24 protobuf: text whose first four bytes are standard
//     base64 decoding to the byte 0x0a first: the tag of KeyVersion's
//     field 1 (SecretKey, length-delimited), which KES writes first
//     (kes@v0.24.0 internal/protobuf/crypto.proto); a value cut short
//     keeps it;
//     - an empty value (what a key creation cut short leaves in an fs
//     store: KES creates the file, then writes it).
//  3. Anything else (JSON without "bytes", such as {"username": …,
//     "password": …}; plain text; binary data): ClassForeign.
//
// Errors of the parser name fields and lengths, never content.
func Classify(raw []byte) Entry {
	k, err := kescrypto.ParseKey(raw)
	if err == nil {
		// A JSON value that parses is an object; base64 holds no '{'.
		format := FormatV024
		if t := bytes.TrimLeft(raw, " \t\r\n"); len(t) > 0 && t[0] == '{' {
			format = FormatV023
		}
		return Entry{Class: ClassKey, Key: k, Format: format}
	}
	switch {
	case len(raw) == 0:
		return Entry{Class: ClassBroken, Format: FormatV024, Reason: "the entry is empty"}
	case jsonKeyShape(raw):
		return Entry{Class: ClassBroken, Format: FormatV023, Reason: strings.TrimPrefix(err.Error(), "kescrypto: ")}
	case protobufKeyShape(raw):
		return Entry{Class: ClassBroken, Format: FormatV024, Reason: strings.TrimPrefix(err.Error(), "kescrypto: ")}
	}
	return Entry{Class: ClassForeign, Reason: "not a KES key: neither KES's JSON key format (an object with \"bytes\") nor its base64 protobuf format"}
}

// Foreign reports whether Classify finds raw not a KES key (ClassForeign),
// without parsing a value that has the shape KES v0.24 writes (such a
// value is a key or a broken key, never foreign): for a step that only
// needs to leave out other applications' secrets (the snapshot).
func Foreign(raw []byte) bool {
	if len(raw) == 0 || protobufKeyShape(raw) {
		return false
	}
	e := Classify(raw)
	e.Wipe()
	return e.Class == ClassForeign
}

// jsonKeyShape reports whether raw has the shape of a KES JSON key.
func jsonKeyShape(raw []byte) bool {
	if json.Valid(raw) {
		var members map[string]json.RawMessage
		if json.Unmarshal(raw, &members) != nil {
			return false // not an object
		}
		_, ok := members["bytes"]
		return ok
	}
	t := bytes.TrimLeft(raw, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && bytes.Contains(t, []byte(`"bytes"`))
}

// protobufKeyShape reports whether raw starts as KES v0.24 writes a key.
func protobufKeyShape(raw []byte) bool {
	if len(raw) < 4 {
		return false
	}
	b, err := base64.StdEncoding.DecodeString(string(raw[:4]))
	return err == nil && len(b) > 0 && b[0] == 0x0a
}

//go:build tools

// Package tools pins the KES v0.23.0 server that the tests run against: the
// last release that writes JSON stored keys and msgpack ciphertexts.
package tools

import _ "github.com/minio/kes/cmd/kes"

//go:build tools

// Package tools pins the KES server that the tests run against.
package tools

import _ "github.com/minio/kes/cmd/kes"

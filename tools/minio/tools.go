//go:build tools

// Package tools pins the MinIO server that the tests run against.
package tools

import _ "github.com/minio/minio"

//go:build tools

// Package tools pins the KES v0.22.3 server that the tests run against: the
// last tagged release before KES's API refactor of 2023-10-24 (commit
// 0e49f95), so it lists keys by glob pattern as a stream of JSON lines,
// refuses the empty listing pattern, matches policies with path.Match and
// describes any identity's own policy.
package tools

import _ "github.com/minio/kes/cmd/kes"

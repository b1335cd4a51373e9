// Package runbooks holds the project's real runbooks: migrate.hcl (the
// vendor's documented procedure, corrected) and demo.hcl with the key store
// it rehearses on, embedded so `runbook demo` runs anywhere.
package runbooks

import "embed"

// Demo is demo.hcl and the demo/ folder it reads (a KES config and the fs
// key store it names).
//
//go:embed demo.hcl demo
var Demo embed.FS

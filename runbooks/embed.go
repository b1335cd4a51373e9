// Package runbooks holds the project's real runbooks: migrate.hcl (the
// vendor's documented procedure, corrected), and the two that `runbook demo`
// rehearses on, embedded so that it runs anywhere: demo.hcl (the whole
// procedure, on servers the demo starts) and demo-keys.hcl (the key
// migration alone), with the key store they read.
package runbooks

import "embed"

// Demo is demo.hcl, demo-keys.hcl and the demo/ folder they read: the
// bundled fs key store, and the KES config through which demo-keys.hcl
// reads it (demo.hcl reads it through the config of the KES server the
// demo starts).
//
//go:embed demo.hcl demo-keys.hcl demo
var Demo embed.FS

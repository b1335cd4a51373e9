// Package demo holds runbook fleet demo's runbook.
package demo

import _ "embed"

// Runbook is the demo fleet's runbook: runbooks/demo.hcl with its KES
// config a variable, one key store per deployment.
//
//go:embed runbook.hcl
var Runbook []byte

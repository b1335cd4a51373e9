package steps

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"

	"github.com/runbook-dev/runbook/engine"
)

// Validation helpers: the checks the blocks' Validate methods share. Each
// skips a value not known yet, and reports on the attribute's range.

// requireNonEmpty reports a required string argument that evaluated to "".
func requireNonEmpty(d *engine.Decoded, attr, value, what string) hcl.Diagnostics {
	if value != "" || d.Unknown(attr) {
		return nil
	}
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Missing " + attr, Detail: what, Subject: d.AttrRange(attr)}}
}

// oneOf reports a string argument outside its allowed values.
func oneOf(d *engine.Decoded, attr, value string, allowed ...string) hcl.Diagnostics {
	if d.Unknown(attr) {
		return nil
	}
	for _, a := range allowed {
		if value == a {
			return nil
		}
	}
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid " + attr, Detail: fmt.Sprintf("%s is %q; it must be one of %q.", attr, value, allowed), Subject: d.AttrRange(attr)}}
}

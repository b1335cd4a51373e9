package engine

import (
	"fmt"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// durationVal is a parsed duration setting; zero means unset.
type durationVal = time.Duration

func (s *Session) duration(expr hcl.Expression, what string) (time.Duration, hcl.Diagnostics) {
	v, diags := s.Scope.Eval(expr)
	if diags.HasErrors() {
		return 0, diags
	}
	v, _ = v.Unmark()
	if !v.IsKnown() {
		return 0, nil
	}
	if v.IsNull() || v.Type() != cty.String {
		return 0, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid " + what, Detail: fmt.Sprintf("%s is a duration string such as \"30s\", \"5m\" or \"1h30m\".", what), Subject: expr.Range().Ptr()}}
	}
	d, err := time.ParseDuration(v.AsString())
	if err != nil || d <= 0 {
		return 0, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid " + what, Detail: fmt.Sprintf("%q is not a positive duration: write it like \"30s\", \"5m\" or \"1h30m\".", v.AsString()), Subject: expr.Range().Ptr()}}
	}
	return d, nil
}

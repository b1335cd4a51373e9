package engine

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// decode is the one way the engine turns a block of the runbook into
// its Go value, for validate, plan, apply and rollback alike: a fresh
// instance of the block's type, its body decoded with the values known now,
// and, when that succeeds, the type's own checks (Validator). inst is nil
// when the body does not decode; diags say why.
func (s *Session) decode(b *BlockConfig) (inst Block, d *Decoded, diags hcl.Diagnostics) {
	inst = b.BlockType.New()
	d, diags = s.Scope.Decode(b, inst.Config())
	if diags.HasErrors() {
		return nil, d, diags
	}
	if v, ok := inst.(Validator); ok {
		diags = append(diags, v.Validate(d)...)
	}
	return inst, d, diags
}

// decodeConnection decodes a connection block and makes it what references
// to it evaluate to. The error names the block.
func (s *Session) decodeConnection(b *BlockConfig) error {
	inst, _, diags := s.decode(b)
	if diags.HasErrors() {
		return fmt.Errorf("decode %s: %w", b.Addr(), diagsError(diags))
	}
	s.Scope.SetConnection(b.Addr(), inst)
	return nil
}

// diagsError turns diagnostics met at run time into one error:
// "file:line,col: Summary: Detail; …".
func diagsError(diags hcl.Diagnostics) error {
	var parts []string
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject != nil {
			msg = d.Subject.String() + ": " + msg
		}
		parts = append(parts, msg)
	}
	return errors.New(strings.Join(parts, "; "))
}

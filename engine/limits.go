package engine

import (
	"fmt"
	"math/big"
	"regexp"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Limits on what a runbook (or a variables file, or a -var value) may make
// the loader do (issue 20, input 9): a 200 KB file nested 100,000 levels deep
// overflowed the stack, and one setproduct(...) used over 23 GB. Each limit
// is far beyond what a runbook needs, and each is reported as a diagnostic
// that says which limit, where.
const (
	// maxNesting bounds brackets, braces, parentheses, quoted strings,
	// template interpolations and %{if}/%{for} directives open at once.
	maxNesting = 100
	// maxOperators bounds the operators (unary, binary and conditional) in
	// one file: an expression's depth grows with its chain of operators.
	maxOperators = 20000
	// maxValueBytes bounds a function's result, a local value, a variable
	// and an attribute's value: strings by their bytes, collections by 16
	// bytes per element plus their elements.
	maxValueBytes = 16 << 20
)

// checkNesting reads src's tokens (without parsing it) and reports the
// first place where it nests deeper than maxNesting, or where it holds more
// than maxOperators operators: the parser and the evaluator recurse that
// deep, and a deep enough file overflows the stack, which no recover()
// catches. A file that does not lex is left to the parser.
func checkNesting(src []byte, filename string) hcl.Diagnostics {
	tokens, diags := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil
	}
	depth, operators := 0, 0
	for i, t := range tokens {
		switch t.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen, hclsyntax.TokenOQuote, hclsyntax.TokenOHeredoc, hclsyntax.TokenTemplateInterp:
			depth++
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenCQuote, hclsyntax.TokenCHeredoc:
			depth--
		case hclsyntax.TokenTemplateSeqEnd:
			if i > 0 && tokens[i-1].Type == hclsyntax.TokenTemplateInterp {
				depth--
			}
		case hclsyntax.TokenIdent:
			// %{if …} and %{for …} open a directive that %{endif} and
			// %{endfor} close; the interpolation token itself is not
			// counted for them.
			if i > 0 && tokens[i-1].Type == hclsyntax.TokenTemplateControl {
				switch string(t.Bytes) {
				case "if", "for":
					depth++
				case "endif", "endfor":
					depth--
				}
			}
		case hclsyntax.TokenBang, hclsyntax.TokenMinus, hclsyntax.TokenPlus, hclsyntax.TokenStar, hclsyntax.TokenSlash, hclsyntax.TokenPercent,
			hclsyntax.TokenAnd, hclsyntax.TokenOr, hclsyntax.TokenEqualOp, hclsyntax.TokenNotEqual, hclsyntax.TokenLessThan,
			hclsyntax.TokenLessThanEq, hclsyntax.TokenGreaterThan, hclsyntax.TokenGreaterThanEq, hclsyntax.TokenQuestion:
			operators++
			if operators > maxOperators {
				return hcl.Diagnostics{{
					Severity: hcl.DiagError,
					Summary:  "Too many operators",
					Detail:   fmt.Sprintf("This file holds more than %d operators, the most a runbook may hold: an expression's depth grows with its chain of operators, and one deep enough would overflow the stack. Split the expression, or compute the value outside the runbook.", maxOperators),
					Subject:  t.Range.Ptr(),
				}}
			}
		}
		if depth > maxNesting {
			return hcl.Diagnostics{{
				Severity: hcl.DiagError,
				Summary:  "Nesting too deep",
				Detail:   fmt.Sprintf("Brackets, braces, parentheses, strings, interpolations and template directives nest here more than %d deep, the most a runbook may: parsing deeper would overflow the stack. Flatten the expression.", maxNesting),
				Subject:  t.Range.Ptr(),
			}}
		}
	}
	return nil
}

// valueSize is v's size as maxValueBytes counts it, or maxValueBytes+1 as
// soon as it is larger: strings by their bytes, every element of a
// collection 16 bytes plus its own size.
func valueSize(v cty.Value) int64 {
	var n int64
	var walk func(cty.Value) bool
	walk = func(v cty.Value) bool {
		v, _ = v.Unmark()
		if !v.IsKnown() || v.IsNull() {
			return true
		}
		switch {
		case v.Type() == cty.String:
			n += int64(len(v.AsString()))
		case v.Type() == cty.Number:
			n += 16
		case v.Type().IsCollectionType() || v.Type().IsObjectType() || v.Type().IsTupleType():
			for it := v.ElementIterator(); it.Next(); {
				_, e := it.Element()
				n += 16
				if n > maxValueBytes || !walk(e) {
					return false
				}
			}
		default:
			n++
		}
		return n <= maxValueBytes
	}
	if !walk(v) {
		return maxValueBytes + 1
	}
	return n
}

// tooLarge reports a value larger than maxValueBytes: what names it ("local
// value \"x\"", "the result of setproduct").
func tooLarge(what string, subject *hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Value too large",
		Detail:   fmt.Sprintf("%s would be larger than %d MiB (strings by their bytes, collections 16 bytes per element and their elements), the most a runbook value may be. Compute it outside the runbook.", capitalise(what), maxValueBytes>>20),
		Subject:  subject,
	}
}

// errTooLarge is a function's refusal to build a result over maxValueBytes.
func errTooLarge() error {
	return fmt.Errorf("its result would be larger than %d MiB (strings by their bytes, collections 16 bytes per element and their elements), the most a runbook value may be", maxValueBytes>>20)
}

// limitFunctions wraps every function so that none returns a value larger
// than maxValueBytes. The ones whose result can be much larger than their
// arguments (setproduct, format and formatlist widths, indent, join,
// replace) are refused before they build it; every other result is
// measured after. try and can are left as they are: they take expressions,
// not values, and return what those evaluate to, which is measured where it
// is built.
func limitFunctions(fs map[string]function.Function) map[string]function.Function {
	out := make(map[string]function.Function, len(fs))
	for name, f := range fs {
		if name == "try" || name == "can" {
			out[name] = f
			continue
		}
		out[name] = limitFunction(name, f)
	}
	return out
}

func limitFunction(name string, f function.Function) function.Function {
	spec := &function.Spec{
		Description: f.Description(),
		Params:      f.Params(),
		VarParam:    f.VarParam(),
		Type:        f.ReturnTypeForValues,
		Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
			if est, ok := estimate(name, args); ok && est > maxValueBytes {
				return cty.DynamicVal, errTooLarge()
			}
			v, err := f.Call(args)
			if err != nil {
				return v, err
			}
			if valueSize(v) > maxValueBytes {
				return cty.DynamicVal, errTooLarge()
			}
			return v, nil
		},
	}
	return function.New(spec)
}

// formatWidth finds the widths and precisions of format verbs.
var formatWidth = regexp.MustCompile(`%[-+# 0]*(\d*)(?:\.(\d*))?`)

// estimate bounds the size of a function's result from its arguments, for
// the functions that can build much more than they are given (estimators);
// ok is false for the others.
func estimate(name string, args []cty.Value) (int64, bool) {
	for _, a := range args {
		if a, _ := a.UnmarkDeep(); !a.IsWhollyKnown() {
			return 0, false
		}
	}
	if e, ok := estimators[name]; ok {
		return e(name, args)
	}
	return 0, false
}

// estimators bound, by function name, the size of a result in bytes from
// the known arguments; ok false: not bounded here (measured after).
var estimators = map[string]func(name string, args []cty.Value) (n int64, ok bool){
	"setproduct": estimateSetproduct,
	"format":     estimateFormat,
	"formatlist": estimateFormat,
	"indent":     estimateIndent,
	"join":       estimateJoin,
	"replace":    estimateReplace,
}

// unmarkedString is v's string, or "" if it is not a known string.
func unmarkedString(v cty.Value) string {
	v, _ = v.Unmark()
	if v.IsNull() || v.Type() != cty.String {
		return ""
	}
	return v.AsString()
}

// estimateSetproduct: the product of the lengths, 16 bytes per element.
func estimateSetproduct(_ string, args []cty.Value) (int64, bool) {
	n := big.NewInt(1)
	for _, a := range args {
		a, _ = a.Unmark()
		if a.IsNull() || !a.CanIterateElements() {
			return 0, false
		}
		n.Mul(n, big.NewInt(int64(a.LengthInt())))
	}
	n.Mul(n, big.NewInt(int64(16*(len(args)+1))))
	if !n.IsInt64() {
		return maxValueBytes + 1, true
	}
	return n.Int64(), true
}

// estimateFormat: the widths and precisions the format asks for plus the
// arguments, once per element of the longest list for formatlist.
func estimateFormat(name string, args []cty.Value) (int64, bool) {
	if len(args) == 0 {
		return 0, false
	}
	var n int64
	for _, m := range formatWidth.FindAllStringSubmatch(unmarkedString(args[0]), -1) {
		for _, d := range m[1:] {
			w, err := strconv.ParseInt(d, 10, 64)
			if err != nil && d != "" {
				return maxValueBytes + 1, true
			}
			n += w
		}
	}
	for _, a := range args {
		n += valueSize(a)
	}
	if name == "formatlist" {
		n *= int64(max(1, maxListLen(args)))
	}
	return n, true
}

// estimateIndent: the text plus the indent once per line.
func estimateIndent(_ string, args []cty.Value) (int64, bool) {
	if len(args) != 2 {
		return 0, false
	}
	spaces, _ := args[0].Unmark()
	w, ok := numberInt(spaces)
	if !ok {
		return 0, false
	}
	s := unmarkedString(args[1])
	if w > maxValueBytes {
		return maxValueBytes + 1, true
	}
	return int64(len(s)) + int64(w)*int64(strings.Count(s, "\n")+1), true
}

// estimateJoin: the lists plus a separator per element.
func estimateJoin(_ string, args []cty.Value) (int64, bool) {
	if len(args) < 2 {
		return 0, false
	}
	sep := int64(len(unmarkedString(args[0])))
	var n int64
	for _, l := range args[1:] {
		l, _ = l.Unmark()
		if l.IsNull() || !l.CanIterateElements() {
			return 0, false
		}
		n += valueSize(l) + sep*int64(l.LengthInt())
	}
	return n, true
}

// estimateReplace: the text plus the replacement once per match of a
// plain substring (a regular expression is measured after).
func estimateReplace(_ string, args []cty.Value) (int64, bool) {
	if len(args) != 3 {
		return 0, false
	}
	s, sub, repl := unmarkedString(args[0]), unmarkedString(args[1]), unmarkedString(args[2])
	if strings.HasPrefix(sub, "/") && strings.HasSuffix(sub, "/") && len(sub) > 1 {
		return 0, false
	}
	count := int64(strings.Count(s, sub))
	return int64(len(s)) + count*int64(len(repl)), true
}

// maxListLen is the length of the longest list among args (formatlist
// repeats its format once per element).
func maxListLen(args []cty.Value) int {
	n := 0
	for _, a := range args {
		a, _ = a.Unmark()
		if !a.IsNull() && (a.Type().IsListType() || a.Type().IsTupleType()) {
			n = max(n, a.LengthInt())
		}
	}
	return n
}

// checkTemplates bounds the strings expr's templates build from the values
// they interpolate, before they are built: a template of many references
// to one large value ("${local.x}${local.x}…") would otherwise build a
// string as large as their sum. Parts that are not a literal or a reference
// to a value in ctx are not counted here (function calls are bounded
// themselves); parts inside for expressions are not seen.
func checkTemplates(expr hcl.Expression, ctx *hcl.EvalContext) hcl.Diagnostics {
	syn, ok := hcl.UnwrapExpression(expr).(hclsyntax.Expression)
	if !ok || ctx == nil {
		return nil
	}
	var diags hcl.Diagnostics
	hclsyntax.VisitAll(syn, func(n hclsyntax.Node) hcl.Diagnostics {
		t, ok := n.(*hclsyntax.TemplateExpr)
		if !ok || diags.HasErrors() {
			return nil
		}
		var total int64
		for _, part := range t.Parts {
			switch p := part.(type) {
			case *hclsyntax.LiteralValueExpr:
				total += valueSize(p.Val)
			case *hclsyntax.ScopeTraversalExpr:
				if v, d := p.Traversal.TraverseAbs(ctx); !d.HasErrors() {
					total += valueSize(v)
				}
			}
			if total > maxValueBytes {
				diags = append(diags, tooLarge("the string this template builds", t.SrcRange.Ptr()))
				break
			}
		}
		return nil
	})
	return diags
}

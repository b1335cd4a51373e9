package engine

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Scope evaluates one runbook's expressions during one command: variables,
// locals, connection values and the outputs of steps as they become known.
type Scope struct {
	cfg      *Config
	vars     map[string]cty.Value
	locals   map[string]cty.Value
	funcs    map[string]function.Function
	redactor *Redactor

	mu     sync.Mutex
	values map[string]cty.Value // block address → its value once known
	reads  map[string]string    // "file PATH" → SHA-256 of what a function read
}

// NewScope evaluates the locals and registers every sensitive value with rd.
func NewScope(cfg *Config, vars map[string]cty.Value, rd *Redactor) (*Scope, hcl.Diagnostics) {
	s := &Scope{cfg: cfg, vars: vars, locals: map[string]cty.Value{}, redactor: rd, values: map[string]cty.Value{}, reads: map[string]string{}}
	s.funcs = functions(cfg.Dir, func(path, digest string) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.reads["file "+path] = digest
	})
	for _, v := range vars {
		s.registerSecrets(v)
	}
	diags := s.evalLocals()
	return s, diags
}

// Reads returns the files the runbook's functions (file, filebase64,
// fileexists) read so far: "file PATH" → SHA-256 hex, or what was found
// instead of a file.
func (s *Scope) Reads() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.reads))
	for k, v := range s.reads {
		out[k] = v
	}
	return out
}

// Vars returns the variable values (sensitive ones marked).
func (s *Scope) Vars() map[string]cty.Value { return s.vars }

func (s *Scope) registerSecrets(v cty.Value) {
	if s.redactor == nil {
		return
	}
	_, paths := v.UnmarkDeepWithPaths()
	for _, pm := range paths {
		if _, ok := pm.Marks[sensitiveMark]; !ok {
			continue
		}
		sub, err := pm.Path.Apply(v)
		if err != nil {
			continue
		}
		sub, _ = sub.UnmarkDeep()
		collectStrings(sub, s.redactor)
	}
}

func collectStrings(v cty.Value, rd *Redactor) {
	if v.IsNull() || !v.IsKnown() {
		return
	}
	switch {
	case v.Type() == cty.String:
		rd.Add(v.AsString())
	case v.Type().IsPrimitiveType():
		rd.Add(v.GoString())
	case v.CanIterateElements():
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			collectStrings(e, rd)
		}
	}
}

func (s *Scope) evalLocals() hcl.Diagnostics {
	var diags hcl.Diagnostics
	pending := append([]*Local(nil), s.cfg.Locals...)
	declared := map[string]bool{}
	for _, l := range s.cfg.Locals {
		declared[l.Name] = true
	}
	var valid []*Local
	for _, l := range pending {
		ok := true
		for _, tr := range l.Expr.Variables() {
			switch tr.RootName() {
			case "var", "local":
			default:
				ok = false
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid reference in local value", Detail: "Local values can refer to variables (var.NAME) and other local values (local.NAME) only.", Subject: tr.SourceRange().Ptr()})
			}
		}
		if ok {
			valid = append(valid, l)
		} else {
			s.locals[l.Name] = cty.DynamicVal
		}
	}
	pending = valid
	for len(pending) > 0 {
		var next []*Local
		for _, l := range pending {
			ready := true
			for _, tr := range l.Expr.Variables() {
				if name := secondName(tr); tr.RootName() == "local" && declared[name] {
					if _, ok := s.locals[name]; !ok {
						ready = false
					}
				}
			}
			if !ready {
				next = append(next, l)
				continue
			}
			v, moreDiags := s.evalBounded(l.Expr, "local value \""+l.Name+"\"")
			diags = append(diags, moreDiags...)
			s.locals[l.Name] = v
		}
		if len(next) == len(pending) {
			names := make([]string, len(next))
			for i, l := range next {
				names[i] = "local." + l.Name
			}
			sort.Strings(names)
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Cycle in local values", Detail: "These local values refer to each other in a cycle: " + strings.Join(names, ", ") + ".", Subject: next[0].DeclRange.Ptr()})
			break
		}
		pending = next
	}
	return diags
}

func secondName(tr hcl.Traversal) string {
	if len(tr) < 2 {
		return ""
	}
	if a, ok := tr[1].(hcl.TraverseAttr); ok {
		return a.Name
	}
	return ""
}

// SetConnection records a decoded connection block.
func (s *Scope) SetConnection(addr string, b Block) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[addr] = connectionVal(addr, b)
}

// connection returns the connection block decoded at addr, or nil when it
// was not decoded (yet).
func (s *Scope) connection(addr string) Block {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[addr]
	if !ok || !v.IsKnown() || v.IsNull() || !v.Type().Equals(ConnectionType) {
		return nil
	}
	return v.EncapsulatedValue().(*connectionRef).Block
}

// SetOutputs records a step's outputs (known or partly known), marking the
// block type's sensitive outputs and registering their values for redaction.
func (s *Scope) SetOutputs(addr string, outs map[string]cty.Value) {
	b := s.cfg.Block(addr)
	obj := map[string]cty.Value{}
	for name, ty := range b.BlockType.Outputs {
		v, ok := outs[name]
		if !ok || v == cty.NilVal {
			v = cty.UnknownVal(ty)
		}
		if b.BlockType.isSensitive(name) {
			v = v.Mark(sensitiveMark)
		}
		obj[name] = v
		s.registerSecrets(v)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values[addr] = cty.ObjectVal(obj)
}

// blockValue is what type.name evaluates to now.
func (s *Scope) blockValue(b *BlockConfig) cty.Value {
	if v, ok := s.values[b.Addr()]; ok {
		return v
	}
	if b.BlockType.Kind == KindConnection {
		return cty.UnknownVal(ConnectionType)
	}
	obj := map[string]cty.Value{}
	for name, ty := range b.BlockType.Outputs {
		v := cty.UnknownVal(ty)
		if b.BlockType.isSensitive(name) {
			v = v.Mark(sensitiveMark)
		}
		obj[name] = v
	}
	return cty.ObjectVal(obj)
}

func (s *Scope) evalContext() *hcl.EvalContext {
	s.mu.Lock()
	defer s.mu.Unlock()
	vars := map[string]cty.Value{
		"var":   cty.ObjectVal(s.vars),
		"local": cty.ObjectVal(s.locals),
	}
	byType := map[string]map[string]cty.Value{}
	for _, b := range s.cfg.Blocks {
		if byType[b.Type] == nil {
			byType[b.Type] = map[string]cty.Value{}
		}
		byType[b.Type][b.Name] = s.blockValue(b)
	}
	for t, m := range byType {
		vars[t] = cty.ObjectVal(m)
	}
	return &hcl.EvalContext{Variables: vars, Functions: s.funcs}
}

// evalBounded evaluates expr in the scope within the limits on values
// (boundedValue); what names it in a diagnostic.
func (s *Scope) evalBounded(expr hcl.Expression, what string) (cty.Value, hcl.Diagnostics) {
	return boundedValue(expr, s.evalContext(), what)
}

// boundedValue evaluates expr unless a template in it would build a string
// larger than maxValueBytes, and refuses a result larger than that (an
// unknown value takes its place): a local value built by doubling another
// stops growing there.
func boundedValue(expr hcl.Expression, ctx *hcl.EvalContext, what string) (cty.Value, hcl.Diagnostics) {
	if diags := checkTemplates(expr, ctx); diags.HasErrors() {
		return cty.DynamicVal, diags
	}
	v, diags := expr.Value(ctx)
	if valueSize(v) > maxValueBytes {
		return cty.DynamicVal, append(diags, tooLarge(what, expr.Range().Ptr()))
	}
	return v, diags
}

// Eval evaluates one expression in the scope.
func (s *Scope) Eval(expr hcl.Expression) (cty.Value, hcl.Diagnostics) {
	return expr.Value(s.evalContext())
}

// Decoded is what the engine learned while decoding a block's body: which
// attributes were sensitive and which were not known yet.
type Decoded struct {
	Addr      string
	Range     hcl.Range
	sensitive map[string]bool
	unknown   map[string]bool
	// unknownRefs are the references of the expressions whose value was
	// not wholly known: where those values were to come from.
	unknownRefs []hcl.Traversal
	null        map[string]bool
	credential  map[string]bool // BlockType.Credentials
	ranges      map[string]hcl.Range
	failed      map[hcl.Range]bool
	scope       *Scope
}

// AddSecret registers values that must never be shown, found while checking
// the configuration (a password inside a URL): the diagnostic that refuses
// them quotes the source line, and must not show them either.
func (d *Decoded) AddSecret(values ...string) {
	if d.scope != nil && d.scope.redactor != nil {
		d.scope.redactor.Add(values...)
	}
}

// Sensitive reports whether an attribute's value was sensitive.
func (d *Decoded) Sensitive(attr string) bool { return d.sensitive[attr] }

// Unknown reports whether an attribute's value is not known yet (it then holds
// its zero value).
func (d *Decoded) Unknown(attr string) bool { return d.unknown[attr] }

// AttrRange is the source range of an attribute's value, or the block's.
func (d *Decoded) AttrRange(attr string) *hcl.Range {
	if r, ok := d.ranges[attr]; ok {
		return &r
	}
	return &d.Range
}

// Decode evaluates a block's body into target (its Config()). Sensitive values
// are unmarked for the Go struct after their secrets are registered with the
// redactor; values not known yet are replaced by zero values and reported
// through Decoded.Unknown.
func (s *Scope) Decode(b *BlockConfig, target any) (*Decoded, hcl.Diagnostics) {
	d := &Decoded{Addr: b.Addr(), Range: b.DeclRange, sensitive: map[string]bool{}, unknown: map[string]bool{}, null: map[string]bool{}, credential: map[string]bool{}, ranges: map[string]hcl.Range{}, failed: map[hcl.Range]bool{}, scope: s}
	for _, name := range b.BlockType.Credentials {
		d.credential[name] = true
	}
	body := evalBody{Body: b.Body, d: d, s: s}
	diags := gohcl.DecodeBody(body, s.evalContext(), target)
	// An expression that failed to evaluate has said why; gohcl's follow-up
	// "Unsuitable value type" about the same expression only repeats it.
	out := diags[:0]
	for _, diag := range diags {
		if diag.Summary == "Unsuitable value type" && diag.Context != nil && d.failed[*diag.Context] {
			continue
		}
		out = append(out, diag)
	}
	return d, append(out, d.checkCredentials(b)...)
}

// checkCredentials reports each credential attribute (BlockType.Credentials)
// given a value that is not sensitive: a literal in the runbook text, or a
// variable not declared sensitive.
func (d *Decoded) checkCredentials(b *BlockConfig) hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, name := range b.BlockType.Credentials {
		rng, set := d.ranges[name]
		if !set || d.sensitive[name] || d.null[name] || d.failed[rng] {
			continue
		}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Credential not sensitive",
			Detail:   fmt.Sprintf("%s holds a credential, and its value here is not sensitive: it would be shown in plans and copied, with the runbook text, into the journal and the change request. Declare a variable with sensitive = true and no default, use it here (%s = var.NAME), and pass the value at run time with -var NAME=VALUE or the environment as %sNAME.", name, name, EnvPrefix),
			Subject:  rng.Ptr(),
		})
	}
	return diags
}

// evalBody wraps a body so that every attribute's value passes through
// evalExpr, which records marks and unknowns before gohcl sees the value.
type evalBody struct {
	hcl.Body
	d      *Decoded
	s      *Scope
	prefix string
}

func (b evalBody) Content(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Diagnostics) {
	c, diags := b.Body.Content(schema)
	return b.wrap(c), diags
}

func (b evalBody) PartialContent(schema *hcl.BodySchema) (*hcl.BodyContent, hcl.Body, hcl.Diagnostics) {
	c, rest, diags := b.Body.PartialContent(schema)
	return b.wrap(c), evalBody{Body: rest, d: b.d, s: b.s, prefix: b.prefix}, diags
}

func (b evalBody) JustAttributes() (hcl.Attributes, hcl.Diagnostics) {
	attrs, diags := b.Body.JustAttributes()
	out := hcl.Attributes{}
	for n, a := range attrs {
		out[n] = b.wrapAttr(a)
	}
	return out, diags
}

func (b evalBody) wrap(c *hcl.BodyContent) *hcl.BodyContent {
	if c == nil {
		return nil
	}
	out := &hcl.BodyContent{Attributes: hcl.Attributes{}, MissingItemRange: c.MissingItemRange}
	for n, a := range c.Attributes {
		out.Attributes[n] = b.wrapAttr(a)
	}
	for _, blk := range c.Blocks {
		nb := *blk
		nb.Body = evalBody{Body: blk.Body, d: b.d, s: b.s, prefix: b.prefix + blk.Type + "."}
		out.Blocks = append(out.Blocks, &nb)
	}
	return out
}

func (b evalBody) wrapAttr(a *hcl.Attribute) *hcl.Attribute {
	na := *a
	name := b.prefix + a.Name
	b.d.ranges[name] = a.Expr.Range()
	na.Expr = evalExpr{Expression: a.Expr, d: b.d, s: b.s, name: name}
	return &na
}

type evalExpr struct {
	hcl.Expression
	d    *Decoded
	s    *Scope
	name string
}

func (e evalExpr) UnwrapExpression() hcl.Expression { return e.Expression }

func (e evalExpr) Value(ctx *hcl.EvalContext) (cty.Value, hcl.Diagnostics) {
	v, diags := boundedValue(e.Expression, ctx, e.name)
	if diags.HasErrors() {
		e.d.failed[e.Expression.Range()] = true
	}
	if v.IsMarked() || v.ContainsMarked() {
		e.d.sensitive[e.name] = true
		e.s.registerSecrets(v)
		v, _ = v.UnmarkDeep()
	}
	if v.IsKnown() && v.IsNull() {
		e.d.null[e.name] = true
	}
	if e.d.credential[e.name] && !e.d.sensitive[e.name] && e.s.redactor != nil {
		// A credential written as a literal is refused (checkCredentials);
		// the refusal, which quotes the source line, must not show it either.
		collectStrings(v, e.s.redactor)
	}
	if !v.IsWhollyKnown() {
		e.d.unknown[e.name] = true
		e.d.unknownRefs = append(e.d.unknownRefs, e.Expression.Variables()...)
		v = zeroUnknowns(v)
	}
	return v, diags
}

// zeroUnknowns replaces unknown parts of v by zero values of their type, so a
// configuration can be decoded for validation and planning.
func zeroUnknowns(v cty.Value) cty.Value {
	out, _ := cty.Transform(v, func(_ cty.Path, v cty.Value) (cty.Value, error) {
		if v.IsKnown() {
			return v, nil
		}
		return zeroValue(v.Type()), nil
	})
	return out
}

func zeroValue(ty cty.Type) cty.Value {
	switch {
	case ty == cty.String:
		return cty.StringVal("")
	case ty == cty.Number:
		return cty.Zero
	case ty == cty.Bool:
		return cty.False
	case ty.IsListType():
		return cty.ListValEmpty(ty.ElementType())
	case ty.IsSetType():
		return cty.SetValEmpty(ty.ElementType())
	case ty.IsMapType():
		return cty.MapValEmpty(ty.ElementType())
	case ty.IsObjectType():
		attrs := map[string]cty.Value{}
		for n, at := range ty.AttributeTypes() {
			attrs[n] = zeroValue(at)
		}
		return cty.ObjectVal(attrs)
	case ty.IsTupleType():
		elems := make([]cty.Value, 0, len(ty.TupleElementTypes()))
		for _, et := range ty.TupleElementTypes() {
			elems = append(elems, zeroValue(et))
		}
		return cty.TupleVal(elems)
	}
	return cty.NullVal(ty)
}

// FormatValue renders a value for humans, with sensitive parts as "(sensitive)".
func FormatValue(v cty.Value) string {
	if v.HasMark(sensitiveMark) {
		return Sensitive
	}
	if !v.IsKnown() {
		return "(known after apply)"
	}
	if v.IsNull() {
		return "null"
	}
	switch {
	case v.Type() == cty.String:
		return fmt.Sprintf("%q", v.AsString())
	case v.Type() == cty.Number:
		return v.AsBigFloat().Text('f', -1)
	case v.Type() == cty.Bool:
		return fmt.Sprint(v.True())
	case v.Type().Equals(ConnectionType):
		return v.EncapsulatedValue().(*connectionRef).Address
	case v.Type().IsObjectType() || v.Type().IsMapType():
		var parts []string
		for it := v.ElementIterator(); it.Next(); {
			k, e := it.Element()
			parts = append(parts, k.AsString()+" = "+FormatValue(e))
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case v.CanIterateElements():
		var parts []string
		for it := v.ElementIterator(); it.Next(); {
			_, e := it.Element()
			parts = append(parts, FormatValue(e))
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return v.GoString()
}

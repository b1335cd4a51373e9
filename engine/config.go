package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/agext/levenshtein"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Config is a runbook as written: representations of the source, not the
// result of evaluating it (evaluation happens per run in eval.go).
type Config struct {
	Path        string // the runbook file, as given
	Dir         string // relative paths inside the runbook resolve from here
	Src         []byte
	Name        string
	Description string
	Approvals   int
	// AllowedSigners is runbook { allowed_signers } as written: an OpenSSH
	// allowed-signers file whose keys sign plans and approvals.
	AllowedSigners      string
	AllowedSignersRange hcl.Range
	Variables           []*Variable
	Locals              []*Local
	Blocks              []*BlockConfig
	Files               map[string]*hcl.File // for diagnostic snippets

	byAddr map[string]*BlockConfig
	// varFiles are the -var-file files ResolveVariables read: absolute
	// path → SHA-256 hex of the content, which a saved plan binds (keyed:
	// they may hold secrets).
	varFiles map[string]string
}

// Variable is a `variable "name" {}` block.
type Variable struct {
	Name        string
	Type        cty.Type
	Default     cty.Value // cty.NilVal when there is none
	Description string
	Sensitive   bool
	Validations []*Validation
	DeclRange   hcl.Range
}

// Validation is a variable's `validation {}` block.
type Validation struct {
	Condition    hcl.Expression
	ErrorMessage hcl.Expression
	DeclRange    hcl.Range
}

// Local is one attribute of a `locals {}` block.
type Local struct {
	Name      string
	Expr      hcl.Expression
	DeclRange hcl.Range
}

// BlockConfig is a connection or step block: the engine's meta-arguments plus
// the remaining body, which the block type decodes itself.
type BlockConfig struct {
	Type      string
	Name      string
	BlockType *BlockType
	DependsOn []hcl.Traversal
	Timeout   hcl.Expression // nil when unset
	Retry     *RetryConfig
	Body      hcl.Body
	DeclRange hcl.Range
	TypeRange hcl.Range
}

// RetryConfig is a step's `retry { attempts, backoff }`.
type RetryConfig struct {
	Attempts  hcl.Expression
	Backoff   hcl.Expression
	DeclRange hcl.Range
}

// Addr is the block's address, type.name.
func (b *BlockConfig) Addr() string { return b.Type + "." + b.Name }

// Block returns the block at address type.name.
func (c *Config) Block(addr string) *BlockConfig { return c.byAddr[addr] }

// LoadFile reads and parses a runbook file.
func LoadFile(path string) (*Config, hcl.Diagnostics) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Cannot read runbook",
			Detail:   fmt.Sprintf("Reading %s failed: %s. Check the path.", path, err),
		}}
	}
	return Load(path, src)
}

// Load parses runbook source. It reports every problem it finds, each with
// its source range, and never stops at the first.
func Load(path string, src []byte) (*Config, hcl.Diagnostics) {
	p := hclparse.NewParser()
	diags := checkNesting(src, path)
	var f *hcl.File
	if !diags.HasErrors() {
		f, diags = p.ParseHCL(src, path)
	}
	cfg := &Config{Path: path, Dir: filepath.Dir(path), Src: src, Files: p.Files(), byAddr: map[string]*BlockConfig{}, varFiles: map[string]string{}}
	// Absolute, so that a path the runbook names is spelled the same from
	// any working directory: a saved plan binds what it observed by path,
	// and apply DIR may run from elsewhere than plan did.
	if abs, err := filepath.Abs(cfg.Dir); err == nil {
		cfg.Dir = abs
	}
	if f == nil || diags.HasErrors() {
		return cfg, diags
	}
	body := f.Body.(*hclsyntax.Body)
	for name, attr := range body.Attributes {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Unexpected attribute",
			Detail:   fmt.Sprintf("An argument named %q is not expected at the top level of a runbook; arguments belong inside a block.", name),
			Subject:  attr.NameRange.Ptr(),
		})
	}
	ld := &loader{cfg: cfg, vars: map[string]*Variable{}, locals: map[string]*Local{}}
	for _, blk := range body.Blocks {
		diags = append(diags, ld.add(blk)...)
	}
	runbookBlock := ld.runbook
	if runbookBlock == nil {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Missing runbook block",
			Detail:   "A runbook file needs one runbook { name = \"...\" } block that names it.",
			Subject:  body.MissingItemRange().Ptr(),
		})
	}
	diags = append(diags, cfg.checkDependsOn()...)
	return cfg, diags
}

// loader adds the top-level blocks of a runbook to its Config, reporting
// duplicates.
type loader struct {
	cfg     *Config
	runbook *hclsyntax.Block
	vars    map[string]*Variable
	locals  map[string]*Local
}

// add decodes one top-level block: the runbook block, a variable, locals,
// or a block of a registered type.
func (ld *loader) add(blk *hclsyntax.Block) hcl.Diagnostics {
	cfg := ld.cfg
	switch blk.Type {
	case "runbook":
		if ld.runbook != nil {
			return hcl.Diagnostics{duplicateDiag("runbook", blk, ld.runbook.DefRange())}
		}
		ld.runbook = blk
		return cfg.decodeRunbook(blk)
	case "variable":
		v, diags := decodeVariable(blk)
		if v == nil {
			return diags
		}
		if prev, dup := ld.vars[v.Name]; dup {
			return append(diags, duplicateDiag("variable \""+v.Name+"\"", blk, prev.DeclRange))
		}
		ld.vars[v.Name] = v
		cfg.Variables = append(cfg.Variables, v)
		return diags
	case "locals":
		return ld.addLocals(blk)
	}
	b, diags := decodeBlock(blk)
	if b == nil {
		return diags
	}
	if prev, dup := cfg.byAddr[b.Addr()]; dup {
		return append(diags, duplicateDiag(fmt.Sprintf("%s %q", b.Type, b.Name), blk, prev.DeclRange))
	}
	cfg.byAddr[b.Addr()] = b
	cfg.Blocks = append(cfg.Blocks, b)
	return diags
}

// addLocals adds the local values of a locals block.
func (ld *loader) addLocals(blk *hclsyntax.Block) hcl.Diagnostics {
	attrs, diags := blk.Body.JustAttributes()
	for _, name := range sortedAttrNames(attrs) {
		a := attrs[name]
		if prev, dup := ld.locals[name]; dup {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Duplicate local value",
				Detail:   fmt.Sprintf("A local value named %q was already defined at %s. Local value names must be unique.", name, prev.DeclRange),
				Subject:  a.NameRange.Ptr(),
			})
			continue
		}
		l := &Local{Name: name, Expr: a.Expr, DeclRange: a.Range}
		ld.locals[name] = l
		ld.cfg.Locals = append(ld.cfg.Locals, l)
	}
	return diags
}

func duplicateDiag(what string, blk *hclsyntax.Block, prev hcl.Range) *hcl.Diagnostic {
	return &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  "Duplicate " + strings.SplitN(what, " ", 2)[0] + " block",
		Detail:   fmt.Sprintf("Only one %s block is allowed. Another was defined at %s.", what, prev),
		Subject:  blk.DefRange().Ptr(),
	}
}

func sortedAttrNames(attrs hcl.Attributes) []string {
	names := make([]string, 0, len(attrs))
	for n := range attrs {
		names = append(names, n)
	}
	// Declaration order reads best in output; fall back to name for ties.
	sort.Slice(names, func(i, j int) bool {
		ri, rj := attrs[names[i]].Range, attrs[names[j]].Range
		if ri.Start.Byte != rj.Start.Byte {
			return ri.Start.Byte < rj.Start.Byte
		}
		return names[i] < names[j]
	})
	return names
}

// AllowedSignersPath is the allowed-signers file resolved from the runbook's
// folder, or "" when the runbook names none.
func (c *Config) AllowedSignersPath() string {
	if c.AllowedSigners == "" || filepath.IsAbs(c.AllowedSigners) {
		return c.AllowedSigners
	}
	return filepath.Join(c.Dir, c.AllowedSigners)
}

func (c *Config) decodeRunbook(blk *hclsyntax.Block) hcl.Diagnostics {
	var raw struct {
		Name           string `hcl:"name"`
		Description    string `hcl:"description,optional"`
		Approvals      int    `hcl:"approvals,optional"`
		AllowedSigners string `hcl:"allowed_signers,optional"`
	}
	diags := labelDiags(blk, 0)
	diags = append(diags, gohcl.DecodeBody(blk.Body, nil, &raw)...)
	c.Name, c.Description, c.Approvals, c.AllowedSigners = raw.Name, raw.Description, raw.Approvals, raw.AllowedSigners
	if a, ok := blk.Body.Attributes["allowed_signers"]; ok && raw.AllowedSigners != "" {
		c.AllowedSignersRange = a.Expr.Range()
		if _, err := os.Stat(c.AllowedSignersPath()); err != nil {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Cannot read allowed_signers",
				Detail:   fmt.Sprintf("allowed_signers names the OpenSSH allowed-signers file (lines of \"PRINCIPAL KEYTYPE BASE64KEY\") whose keys sign plans and approvals; reading %s failed: %s.", c.AllowedSignersPath(), err),
				Subject:  a.Expr.Range().Ptr(),
			})
		}
		if raw.Approvals == 0 {
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagWarning,
				Summary:  "allowed_signers without approvals",
				Detail:   "allowed_signers only matters when a saved plan needs approvals: set approvals = N (N distinct signers) in the runbook block.",
				Subject:  a.Expr.Range().Ptr(),
			})
		}
	}
	if raw.Approvals < 0 {
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Invalid approvals",
			Detail:   "approvals is the number of distinct approvers a saved plan needs; it cannot be negative.",
			Subject:  blk.Body.Attributes["approvals"].Expr.Range().Ptr(),
		})
	}
	return diags
}

func labelDiags(blk *hclsyntax.Block, want int) hcl.Diagnostics {
	if len(blk.Labels) == want {
		for i, l := range blk.Labels {
			if !hclsyntax.ValidIdentifier(l) {
				return hcl.Diagnostics{{
					Severity: hcl.DiagError,
					Summary:  "Invalid block name",
					Detail:   fmt.Sprintf("%q is not a valid name: use letters, digits, underscores and dashes, starting with a letter.", l),
					Subject:  blk.LabelRanges[i].Ptr(),
				}}
			}
		}
		return nil
	}
	detail := fmt.Sprintf("A %s block takes no label.", blk.Type)
	if want == 1 {
		detail = fmt.Sprintf("A %s block takes exactly one label, its name: %s \"NAME\" { ... }.", blk.Type, blk.Type)
	}
	subject := blk.TypeRange
	if len(blk.Labels) > 0 {
		subject = hcl.RangeBetween(blk.LabelRanges[0], blk.LabelRanges[len(blk.LabelRanges)-1])
	}
	return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Wrong number of block labels", Detail: detail, Subject: &subject}}
}

var variableSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "type"}, {Name: "default"}, {Name: "description"}, {Name: "sensitive"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "validation"}},
}

var validationSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "condition", Required: true}, {Name: "error_message", Required: true}},
}

func decodeVariable(blk *hclsyntax.Block) (*Variable, hcl.Diagnostics) {
	diags := labelDiags(blk, 1)
	if diags.HasErrors() {
		return nil, diags
	}
	v := &Variable{Name: blk.Labels[0], Type: cty.DynamicPseudoType, DeclRange: blk.DefRange()}
	content, moreDiags := blk.Body.Content(variableSchema)
	diags = append(diags, moreDiags...)
	if a, ok := content.Attributes["type"]; ok {
		ty, moreDiags := typeexpr.TypeConstraint(a.Expr)
		diags = append(diags, moreDiags...)
		v.Type = ty
	}
	if a, ok := content.Attributes["description"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &v.Description)...)
	}
	if a, ok := content.Attributes["sensitive"]; ok {
		diags = append(diags, gohcl.DecodeExpression(a.Expr, nil, &v.Sensitive)...)
	}
	if a, ok := content.Attributes["default"]; ok && v.Sensitive {
		if val, moreDiags := a.Expr.Value(nil); !moreDiags.HasErrors() {
			v.Default = val // kept only so that output can redact it
		}
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "Sensitive variable with a default",
			Detail:   fmt.Sprintf("A sensitive variable holds a secret, and the runbook text is copied into the journal and the change request, which are meant to be shared. Remove the default and pass the value at run time: -var %s=VALUE, a -var-file kept out of version control, or the environment as %s%s.", v.Name, EnvPrefix, v.Name),
			Subject:  a.Expr.Range().Ptr(),
		})
	} else if ok {
		val, moreDiags := a.Expr.Value(nil)
		diags = append(diags, moreDiags...)
		if !moreDiags.HasErrors() {
			conv, err := convert.Convert(val, v.Type)
			if err != nil {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Invalid default value for variable",
					Detail:   fmt.Sprintf("The default value does not fit the variable's type: %s.", err),
					Subject:  a.Expr.Range().Ptr(),
				})
			} else {
				v.Default = conv
			}
		}
	}
	for _, vb := range content.Blocks {
		vc, moreDiags := vb.Body.Content(validationSchema)
		diags = append(diags, moreDiags...)
		if moreDiags.HasErrors() {
			continue
		}
		val := &Validation{Condition: vc.Attributes["condition"].Expr, ErrorMessage: vc.Attributes["error_message"].Expr, DeclRange: vb.DefRange}
		for _, tr := range val.Condition.Variables() {
			if tr.RootName() != "var" || len(tr) < 2 || !traversesVar(tr, v.Name) {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Invalid reference in variable validation",
					Detail:   fmt.Sprintf("The condition for variable %q can only refer to the variable itself, as var.%s.", v.Name, v.Name),
					Subject:  tr.SourceRange().Ptr(),
				})
			}
		}
		v.Validations = append(v.Validations, val)
	}
	return v, diags
}

func traversesVar(tr hcl.Traversal, name string) bool {
	a, ok := tr[1].(hcl.TraverseAttr)
	return ok && a.Name == name
}

var metaSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "depends_on"}, {Name: "timeout"}},
	Blocks:     []hcl.BlockHeaderSchema{{Type: "retry"}},
}

var retrySchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{{Name: "attempts", Required: true}, {Name: "backoff"}},
}

func decodeBlock(blk *hclsyntax.Block) (*BlockConfig, hcl.Diagnostics) {
	bt, ok := LookupType(blk.Type)
	if !ok {
		detail := fmt.Sprintf("Blocks of type %q are not known. Known block types: runbook, variable, locals, %s.", blk.Type, strings.Join(TypeNames(), ", "))
		if s := nameSuggestion(blk.Type, append([]string{"runbook", "variable", "locals"}, TypeNames()...)); s != "" {
			detail = fmt.Sprintf("Blocks of type %q are not known. Did you mean %q?", blk.Type, s)
		}
		return nil, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Unsupported block type", Detail: detail, Subject: blk.TypeRange.Ptr()}}
	}
	diags := labelDiags(blk, 1)
	if diags.HasErrors() {
		return nil, diags
	}
	b := &BlockConfig{Type: blk.Type, Name: blk.Labels[0], BlockType: bt, DeclRange: blk.DefRange(), TypeRange: blk.TypeRange}
	schema := metaSchema
	if bt.Kind == KindConnection {
		schema = &hcl.BodySchema{} // connections have no side effects: no retry, timeout or ordering
	}
	content, rest, moreDiags := blk.Body.PartialContent(schema)
	diags = append(diags, moreDiags...)
	b.Body = rest
	if a, ok := content.Attributes["depends_on"]; ok {
		exprs, moreDiags := hcl.ExprList(a.Expr)
		diags = append(diags, moreDiags...)
		for _, e := range exprs {
			tr, moreDiags := hcl.AbsTraversalForExpr(e)
			diags = append(diags, moreDiags...)
			if !moreDiags.HasErrors() {
				b.DependsOn = append(b.DependsOn, tr)
			}
		}
	}
	if a, ok := content.Attributes["timeout"]; ok {
		b.Timeout = a.Expr
	}
	for i, rb := range content.Blocks {
		if i > 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate retry block", Detail: fmt.Sprintf("Only one retry block is allowed. Another was defined at %s.", content.Blocks[0].DefRange), Subject: rb.DefRange.Ptr()})
			continue
		}
		rc, moreDiags := rb.Body.Content(retrySchema)
		diags = append(diags, moreDiags...)
		if moreDiags.HasErrors() {
			continue
		}
		b.Retry = &RetryConfig{Attempts: rc.Attributes["attempts"].Expr, DeclRange: rb.DefRange}
		if a, ok := rc.Attributes["backoff"]; ok {
			b.Retry.Backoff = a.Expr
		}
	}
	return b, diags
}

// checkDependsOn resolves every depends_on entry to a block.
func (c *Config) checkDependsOn() hcl.Diagnostics {
	var diags hcl.Diagnostics
	for _, b := range c.Blocks {
		for _, tr := range b.DependsOn {
			if _, d := c.refAddr(tr); d != nil {
				diags = append(diags, d)
			}
		}
	}
	return diags
}

// refAddr turns a traversal such as exec.setup(.x) into the address of the
// block it names.
func (c *Config) refAddr(tr hcl.Traversal) (string, *hcl.Diagnostic) {
	root := tr.RootName()
	if len(tr) < 2 {
		return "", &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid reference", Detail: fmt.Sprintf("A reference to a block is written TYPE.NAME, for example exec.setup; %q alone names no block.", root), Subject: tr.SourceRange().Ptr()}
	}
	attr, ok := tr[1].(hcl.TraverseAttr)
	if !ok {
		return "", &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid reference", Detail: "A reference to a block is written TYPE.NAME.", Subject: tr.SourceRange().Ptr()}
	}
	addr := root + "." + attr.Name
	if c.byAddr[addr] == nil {
		return "", undefinedRefDiag(c, root, attr.Name, tr.SourceRange())
	}
	return addr, nil
}

func undefinedRefDiag(c *Config, typ, name string, rng hcl.Range) *hcl.Diagnostic {
	var same []string
	for _, b := range c.Blocks {
		if b.Type == typ {
			same = append(same, b.Name)
		}
	}
	detail := fmt.Sprintf("No %s block named %q is declared in this runbook.", typ, name)
	if s := nameSuggestion(name, same); s != "" {
		detail += fmt.Sprintf(" Did you mean %s.%s?", typ, s)
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Reference to undeclared block", Detail: detail, Subject: rng.Ptr()}
}

func nameSuggestion(given string, options []string) string {
	best, bestDist := "", 3
	for _, o := range options {
		if d := levenshtein.Distance(given, o, nil); d < bestDist {
			best, bestDist = o, d
		}
	}
	return best
}

package engine

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// sensitiveMark marks values that must never be shown.
const sensitiveMark = "sensitive"

// VarInputs are the variable values a user supplied, in increasing precedence:
// the environment (RUNBOOK_VAR_name), -var-file files, then -var flags.
type VarInputs struct {
	Vars     []string // name=value
	VarFiles []string
	Environ  []string // os.Environ() form; nil means none
	// Recorded are values a saved plan recorded (JSON, by declared type);
	// they count least.
	Recorded map[string]json.RawMessage
}

// EnvPrefix names variables in the environment.
const EnvPrefix = "RUNBOOK_VAR_"

type rawVar struct {
	val    cty.Value      // from a saved plan
	expr   hcl.Expression // from a file
	text   string         // from a flag or the environment
	source string
}

// ResolveVariables returns every variable's value, sensitive ones marked. With
// requireAll false (validate), variables without a value are unknown rather
// than an error.
func (c *Config) ResolveVariables(in VarInputs, requireAll bool) (map[string]cty.Value, hcl.Diagnostics) {
	declared := map[string]*Variable{}
	for _, v := range c.Variables {
		declared[v.Name] = v
	}
	raw, diags := c.givenVars(in, declared)
	vals, moreDiags := c.varValues(raw, declared, requireAll)
	return vals, append(diags, moreDiags...)
}

// givenVars gathers the value given for each declared variable, a later
// source winning over an earlier one: a saved plan's record, the
// environment, the variables files, the -var options.
func (c *Config) givenVars(in VarInputs, declared map[string]*Variable) (map[string]rawVar, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	raw := map[string]rawVar{}
	for name, js := range in.Recorded {
		if v := declared[name]; v != nil {
			val, err := ctyjson.Unmarshal(js, v.Type)
			if err != nil {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid recorded variable", Detail: fmt.Sprintf("The plan's value of %q does not fit the variable's type: %s.", name, err)})
				continue
			}
			raw[name] = rawVar{val: val, source: "the saved plan"}
		}
	}
	for _, kv := range in.Environ {
		name, val, ok := strings.Cut(kv, "=")
		// An empty value counts as unset: that is how CI configs and scripts
		// usually clear a variable.
		if !ok || !strings.HasPrefix(name, EnvPrefix) || val == "" {
			continue
		}
		name = strings.TrimPrefix(name, EnvPrefix)
		if declared[name] != nil { // unknown names in the environment are not the runbook's business
			raw[name] = rawVar{text: val, source: "environment variable " + EnvPrefix + name}
		}
	}
	for _, path := range in.VarFiles {
		diags = append(diags, c.readVarFile(path, declared, raw)...)
	}
	for _, kv := range in.Vars {
		name, val, ok := strings.Cut(kv, "=")
		if !ok || name == "" {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid -var option", Detail: fmt.Sprintf("The option -var %q is not of the form NAME=VALUE.", kv)})
			continue
		}
		if declared[name] == nil {
			diags = append(diags, undeclaredVarDiag(c, name, nil, "-var"))
			continue
		}
		raw[name] = rawVar{text: val, source: "-var " + name}
	}
	return raw, diags
}

// readVarFile adds the values of a variables file to raw.
func (c *Config) readVarFile(path string, declared map[string]*Variable, raw map[string]rawVar) hcl.Diagnostics {
	src, err := os.ReadFile(path)
	if err != nil {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Cannot read variables file", Detail: fmt.Sprintf("Reading %s failed: %s.", path, err)}}
	}
	if abs, err := filepath.Abs(path); err == nil {
		c.varFiles[abs] = sha256Hex(src)
	}
	if diags := checkNesting(src, path); diags.HasErrors() {
		return diags
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return diags
	}
	// Not kept in Files: a diagnostic in a variables file shows no source
	// line, since the file may hold secrets that a line that did not parse
	// would show unredacted.
	attrs, moreDiags := f.Body.JustAttributes()
	diags = append(diags, moreDiags...)
	for _, name := range sortedAttrNames(attrs) {
		a := attrs[name]
		if declared[name] == nil {
			diags = append(diags, undeclaredVarDiag(c, name, a.NameRange.Ptr(), "the variables file"))
			continue
		}
		raw[name] = rawVar{expr: a.Expr, source: path}
	}
	return diags
}

// varValues evaluates each variable: its given value, else its default,
// else unknown (an error when requireAll), validated and, if sensitive,
// marked.
func (c *Config) varValues(raw map[string]rawVar, declared map[string]*Variable, requireAll bool) (map[string]cty.Value, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	vals := map[string]cty.Value{}
	var missing []string
	for _, v := range c.Variables {
		val := cty.NilVal
		if r, ok := raw[v.Name]; ok {
			var moreDiags hcl.Diagnostics
			val, moreDiags = r.value(v)
			diags = append(diags, moreDiags...)
			if moreDiags.HasErrors() {
				vals[v.Name] = cty.UnknownVal(v.Type)
				continue
			}
		} else if v.Default != cty.NilVal {
			val = v.Default
		}
		if val != cty.NilVal && valueSize(val) > maxValueBytes {
			diags = append(diags, tooLarge("the value of variable \""+v.Name+"\"", v.DeclRange.Ptr()))
			vals[v.Name] = cty.UnknownVal(v.Type)
			continue
		}
		if val == cty.NilVal {
			if requireAll {
				missing = append(missing, v.Name)
			}
			val = cty.UnknownVal(v.Type)
		}
		if v.Sensitive {
			// Marked before validation, so that an error_message that
			// interpolates the value is not shown.
			val = val.Mark(sensitiveMark)
		}
		if val.IsKnown() {
			diags = append(diags, v.validate(val)...)
		}
		vals[v.Name] = val
	}
	for _, name := range missing {
		v := declared[name]
		diags = append(diags, &hcl.Diagnostic{
			Severity: hcl.DiagError,
			Summary:  "No value for required variable",
			Detail:   fmt.Sprintf("The variable %q has no default. Set it with -var %s=VALUE, in a -var-file, or in the environment as %s%s.", name, name, EnvPrefix, name),
			Subject:  v.DeclRange.Ptr(),
		})
	}
	return vals, diags
}

func undeclaredVarDiag(c *Config, name string, subject *hcl.Range, where string) *hcl.Diagnostic {
	names := make([]string, 0, len(c.Variables))
	for _, v := range c.Variables {
		names = append(names, v.Name)
	}
	sort.Strings(names)
	detail := fmt.Sprintf("A value for %q was given in %s, but the runbook declares no variable of that name.", name, where)
	if s := nameSuggestion(name, names); s != "" {
		detail += fmt.Sprintf(" Did you mean %q?", s)
	}
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Value for undeclared variable", Detail: detail, Subject: subject}
}

func (r rawVar) value(v *Variable) (cty.Value, hcl.Diagnostics) {
	var val cty.Value
	if r.val != cty.NilVal {
		val = r.val
	} else if r.expr != nil {
		var diags hcl.Diagnostics
		val, diags = r.expr.Value(nil)
		if diags.HasErrors() {
			return cty.NilVal, diags
		}
	} else if v.Type == cty.String || v.Type == cty.DynamicPseudoType {
		val = cty.StringVal(r.text) // strings are taken literally, as Terraform does
	} else {
		if diags := checkNesting([]byte(r.text), r.source); diags.HasErrors() {
			return cty.NilVal, diags
		}
		expr, diags := hclsyntax.ParseExpression([]byte(r.text), r.source, hcl.InitialPos)
		if diags.HasErrors() {
			return cty.NilVal, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid value for variable", Detail: fmt.Sprintf("The value of %q from %s is not a valid %s.", v.Name, r.source, v.Type.FriendlyName())}}
		}
		val, diags = expr.Value(nil)
		if diags.HasErrors() {
			return cty.NilVal, diags
		}
	}
	conv, err := convert.Convert(val, v.Type)
	if err != nil {
		return cty.NilVal, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid value for variable", Detail: fmt.Sprintf("The value of %q from %s does not fit its type %s: %s.", v.Name, r.source, v.Type.FriendlyName(), err), Subject: v.DeclRange.Ptr()}}
	}
	return conv, nil
}

func (v *Variable) validate(val cty.Value) hcl.Diagnostics {
	var diags hcl.Diagnostics
	ctx := &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(map[string]cty.Value{v.Name: val})}, Functions: functions(".", nil)}
	for _, vd := range v.Validations {
		res, moreDiags := vd.Condition.Value(ctx)
		if moreDiags.HasErrors() {
			diags = append(diags, moreDiags...)
			continue
		}
		res, _ = res.Unmark()
		if res.IsNull() || !res.IsKnown() || res.Type() != cty.Bool {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid validation condition", Detail: "A validation condition must be true or false.", Subject: vd.Condition.Range().Ptr()})
			continue
		}
		if res.True() {
			continue
		}
		msg := "The value is not valid."
		if m, moreDiags := vd.ErrorMessage.Value(ctx); !moreDiags.HasErrors() {
			if m, marks := m.Unmark(); len(marks) == 0 && m.Type() == cty.String && m.IsKnown() && !m.IsNull() {
				msg = m.AsString()
			}
		}
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid value for variable", Detail: fmt.Sprintf("%s (variable %q, checked by the validation at %s)", msg, v.Name, vd.DeclRange), Subject: v.DeclRange.Ptr()})
	}
	return diags
}

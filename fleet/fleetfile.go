// Package fleet is a fleet file as written (the runbook it rolls out, the
// deployments, the rollout, the Temporal server), the waves it makes, and
// the fleet plan that binds every deployment's plan and the rollout under
// one fingerprint. The Temporal workflows that carry a rollout out are in
// fleet/rollout; this package knows nothing of Temporal.
package fleet

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
)

// DefaultHost is the host a deployment is pinned to when the fleet file
// names none, and the host a worker serves when started without --host: on
// one machine, every deployment and every worker meet there.
const DefaultHost = "local"

// Fleet is a fleet file, decoded and checked. Paths are absolute.
type Fleet struct {
	File        string // the fleet file
	Dir         string // its folder: relative paths resolve from here
	Src         []byte
	Name        string
	Runbook     string // the single-deployment runbook file
	Journals    string // where a worker keeps each deployment's journal (JOURNALS/NAME)
	Deployments []*Deployment
	Rollout     Rollout
	Temporal    Temporal
	Files       map[string]*hcl.File // for diagnostic snippets
}

// Deployment is one object store the runbook is rolled over.
type Deployment struct {
	Name     string
	VarFiles []string // absolute
	Labels   map[string]string
	Host     string   // the worker host (task queue) that holds its journal
	Targets  []string // runbook -target for this deployment; empty: every step
	Range    hcl.Range
}

// Rollout is how the deployments are rolled: SSM Automation's rate control
// (a concurrency limit and an error budget) with a canary first and waves.
type Rollout struct {
	Canary         []string
	WaveSize       int
	MaxConcurrency int
	// MaxErrors is the error budget: the failure that exceeds it stops new
	// starts, and deployments already running finish (SSM's MaxErrors).
	MaxErrors int
	Approval  *Approval // nil: no wave needs approval
}

// Approval is which waves need approval before they start, and how many
// distinct approvers (signed when AllowedSigners is set).
type Approval struct {
	Waves          []int // 0 is the canary wave
	Approvers      int
	AllowedSigners string // absolute; empty: approvals are names
}

// Temporal is where the rollout's workflows run.
type Temporal struct {
	Address   string // empty: an embedded server on a SQLite file in the fleet's folder
	Namespace string
}

// StateDir is the fleet's folder for what the fleet commands keep: the
// embedded server's database, the default plan and journals.
func (f *Fleet) StateDir() string {
	return filepath.Join(f.Dir, ".runbook-fleet", f.Name)
}

// Deployment returns the deployment named name, or nil.
func (f *Fleet) Deployment(name string) *Deployment {
	for _, d := range f.Deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

var fileSchema = &hcl.BodySchema{Blocks: []hcl.BlockHeaderSchema{
	{Type: "fleet"},
	{Type: "deployment", LabelNames: []string{"name"}},
	{Type: "deployments", LabelNames: []string{"name"}},
	{Type: "rollout"},
	{Type: "temporal"},
}}

var fleetSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "name", Required: true}, {Name: "runbook", Required: true}, {Name: "journals"},
}}

var deploymentSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "var_files"}, {Name: "labels"}, {Name: "host"}, {Name: "targets"},
}}

var deploymentsSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "dir", Required: true}, {Name: "labels"}, {Name: "host"}, {Name: "targets"},
}}

var rolloutSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "canary"}, {Name: "wave_size", Required: true}, {Name: "max_concurrency", Required: true}, {Name: "max_errors"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "approval"}},
}

var approvalSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "waves", Required: true}, {Name: "approvers"}, {Name: "allowed_signers"},
}}

var temporalSchema = &hcl.BodySchema{Attributes: []hcl.AttributeSchema{
	{Name: "address"}, {Name: "namespace"},
}}

// namePattern is what a fleet, a deployment or a host may be called: they
// become parts of Temporal workflow IDs, task queues and journal paths.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// Load reads and checks a fleet file. It reports every problem at once, each
// with its source range. On an error the fleet is partial: use Files only.
func Load(path string) (*Fleet, hcl.Diagnostics) {
	f := &Fleet{Temporal: Temporal{Namespace: "default"}}
	abs, err := filepath.Abs(path)
	if err == nil {
		f.Src, err = os.ReadFile(abs)
	}
	if err != nil {
		return f, hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Cannot read the fleet file", Detail: err.Error()}}
	}
	f.File, f.Dir = abs, filepath.Dir(abs)
	p := hclparse.NewParser()
	file, diags := p.ParseHCL(f.Src, path)
	f.Files = p.Files()
	if diags.HasErrors() {
		return f, diags
	}
	content, moreDiags := file.Body.Content(fileSchema)
	diags = append(diags, moreDiags...)
	once := map[string]*hcl.Block{} // fleet, rollout, temporal: one each
	var deployments []*hcl.Block
	for _, b := range content.Blocks {
		if b.Type == "deployment" || b.Type == "deployments" {
			deployments = append(deployments, b)
			continue
		}
		if prev := once[b.Type]; prev != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: fmt.Sprintf("Duplicate %s block", b.Type),
				Detail: fmt.Sprintf("Only one %s block is allowed. Another was defined at %s.", b.Type, prev.DefRange), Subject: b.DefRange.Ptr()})
			continue
		}
		once[b.Type] = b
	}
	if b := once["temporal"]; b != nil {
		diags = append(diags, f.decodeTemporal(b)...)
	}
	fleetBlock, rolloutBlock := once["fleet"], once["rollout"]
	if fleetBlock == nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing fleet block",
			Detail: `A fleet file needs fleet { name = "…", runbook = "FILE.hcl" }: the fleet's name and the runbook it rolls out.`, Subject: file.Body.MissingItemRange().Ptr()})
	} else {
		diags = append(diags, f.decodeFleet(fleetBlock)...)
	}
	diags = append(diags, f.decodeDeployments(deployments)...)
	if len(deployments) == 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No deployments",
			Detail: `A fleet needs deployments: deployment "NAME" { var_files = [...] } blocks, or deployments "NAME" { dir = "FOLDER" } for one per *.hcl file of a folder.`, Subject: file.Body.MissingItemRange().Ptr()})
	}
	if rolloutBlock == nil {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Missing rollout block",
			Detail: "A fleet file needs rollout { wave_size = N, max_concurrency = N }: how many deployments a wave holds and how many run at once.", Subject: file.Body.MissingItemRange().Ptr()})
	} else {
		diags = append(diags, f.decodeRollout(rolloutBlock)...)
	}
	return f, diags
}

// decode decodes an attribute's expression into target (no variables or
// functions: a fleet file is literal).
func decode(attr *hcl.Attribute, target any) hcl.Diagnostics {
	if attr == nil {
		return nil
	}
	return gohcl.DecodeExpression(attr.Expr, nil, target)
}

func errAt(attr *hcl.Attribute, summary, detail string, args ...any) *hcl.Diagnostic {
	return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: fmt.Sprintf(detail, args...), Subject: attr.Expr.Range().Ptr()}
}

func (f *Fleet) decodeFleet(b *hcl.Block) hcl.Diagnostics {
	c, diags := b.Body.Content(fleetSchema)
	if diags.HasErrors() {
		return diags
	}
	var runbook string
	diags = append(diags, decode(c.Attributes["name"], &f.Name)...)
	diags = append(diags, decode(c.Attributes["runbook"], &runbook)...)
	if diags.HasErrors() {
		return diags
	}
	if !namePattern.MatchString(f.Name) {
		diags = append(diags, errAt(c.Attributes["name"], "Invalid fleet name",
			"The fleet's name %q names its workflow in Temporal and its folder: use letters, digits, '.', '_' and '-', starting with a letter or digit.", f.Name))
	}
	f.Runbook = f.abs(runbook)
	if _, err := os.Stat(f.Runbook); err != nil {
		diags = append(diags, errAt(c.Attributes["runbook"], "Runbook not found",
			"The runbook %s cannot be read (%v): runbook is the single-deployment runbook file, relative to the fleet file.", runbook, unwrapPath(err)))
	}
	f.Journals = filepath.Join(f.StateDir(), "journals")
	if a := c.Attributes["journals"]; a != nil {
		var j string
		diags = append(diags, decode(a, &j)...)
		f.Journals = f.abs(j)
	}
	return diags
}

// deploymentAttrs are the arguments a deployment and a deployments folder share.
type deploymentAttrs struct {
	labels  map[string]string
	host    string
	targets []string
}

func (f *Fleet) decodeShared(c *hcl.BodyContent) (deploymentAttrs, hcl.Diagnostics) {
	var d deploymentAttrs
	diags := decode(c.Attributes["labels"], &d.labels)
	diags = append(diags, decode(c.Attributes["host"], &d.host)...)
	diags = append(diags, decode(c.Attributes["targets"], &d.targets)...)
	if d.host == "" {
		d.host = DefaultHost
	} else if !namePattern.MatchString(d.host) {
		diags = append(diags, errAt(c.Attributes["host"], "Invalid host",
			"The host %q names the task queue of the workers that hold these deployments' journals: use letters, digits, '.', '_' and '-'.", d.host))
	}
	return d, diags
}

func (f *Fleet) decodeDeployments(blocks []*hcl.Block) hcl.Diagnostics {
	var diags hcl.Diagnostics
	seen := map[string]hcl.Range{}
	add := func(d *Deployment) {
		if !namePattern.MatchString(d.Name) {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid deployment name",
				Detail: fmt.Sprintf("The deployment name %q becomes part of a Temporal workflow ID and of its journal's path: use letters, digits, '.', '_' and '-', starting with a letter or digit.", d.Name), Subject: d.Range.Ptr()})
			return
		}
		if prev, ok := seen[d.Name]; ok {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate deployment",
				Detail: fmt.Sprintf("Only one deployment may be called %q. Another was defined at %s.", d.Name, prev), Subject: d.Range.Ptr()})
			return
		}
		seen[d.Name] = d.Range
		f.Deployments = append(f.Deployments, d)
	}
	for _, b := range blocks {
		schema := deploymentSchema
		if b.Type == "deployments" {
			schema = deploymentsSchema
		}
		c, moreDiags := b.Body.Content(schema)
		diags = append(diags, moreDiags...)
		if moreDiags.HasErrors() {
			continue
		}
		shared, moreDiags := f.decodeShared(c)
		diags = append(diags, moreDiags...)
		if b.Type == "deployment" {
			var varFiles []string
			diags = append(diags, decode(c.Attributes["var_files"], &varFiles)...)
			d := &Deployment{Name: b.Labels[0], Labels: shared.labels, Host: shared.host, Targets: shared.targets, Range: b.LabelRanges[0]}
			for _, vf := range varFiles {
				abs := f.abs(vf)
				if _, err := os.Stat(abs); err != nil {
					diags = append(diags, errAt(c.Attributes["var_files"], "Variable file not found",
						"Deployment %q names the variable file %s, which cannot be read (%v).", d.Name, vf, unwrapPath(err)))
				}
				d.VarFiles = append(d.VarFiles, abs)
			}
			add(d)
			continue
		}
		var dir string
		diags = append(diags, decode(c.Attributes["dir"], &dir)...)
		matches, err := filepath.Glob(filepath.Join(f.abs(dir), "*.hcl"))
		if err == nil && len(matches) == 0 {
			err = fmt.Errorf("no *.hcl file in %s", f.abs(dir))
		}
		if err != nil {
			diags = append(diags, errAt(c.Attributes["dir"], "No deployments in folder",
				"deployments %q takes one deployment per *.hcl variable file of %s: %v.", b.Labels[0], dir, err))
			continue
		}
		sort.Strings(matches)
		for _, m := range matches {
			name := strings.TrimSuffix(filepath.Base(m), ".hcl")
			add(&Deployment{Name: name, VarFiles: []string{m}, Labels: shared.labels, Host: shared.host, Targets: shared.targets, Range: c.Attributes["dir"].Expr.Range()})
		}
	}
	return diags
}

func (f *Fleet) decodeRollout(b *hcl.Block) hcl.Diagnostics {
	c, diags := b.Body.Content(rolloutSchema)
	if diags.HasErrors() {
		return diags
	}
	r := &f.Rollout
	diags = append(diags, decode(c.Attributes["canary"], &r.Canary)...)
	diags = append(diags, decode(c.Attributes["wave_size"], &r.WaveSize)...)
	diags = append(diags, decode(c.Attributes["max_concurrency"], &r.MaxConcurrency)...)
	diags = append(diags, decode(c.Attributes["max_errors"], &r.MaxErrors)...)
	if diags.HasErrors() {
		return diags
	}
	if r.WaveSize < 1 {
		diags = append(diags, errAt(c.Attributes["wave_size"], "Invalid wave_size",
			"wave_size is how many deployments a wave holds: at least 1, not %d.", r.WaveSize))
	}
	if r.MaxConcurrency < 1 {
		diags = append(diags, errAt(c.Attributes["max_concurrency"], "Invalid max_concurrency",
			"max_concurrency is how many deployments run at once: at least 1, not %d.", r.MaxConcurrency))
	}
	if r.MaxErrors < 0 {
		diags = append(diags, errAt(c.Attributes["max_errors"], "Invalid max_errors",
			"max_errors is how many failed deployments the rollout tolerates (the next failure stops new starts): 0 or more, not %d.", r.MaxErrors))
	}
	seen := map[string]bool{}
	for _, name := range r.Canary {
		switch {
		case f.Deployment(name) == nil:
			diags = append(diags, errAt(c.Attributes["canary"], "Unknown canary", "The canary %q is not a deployment of this fleet.", name))
		case seen[name]:
			diags = append(diags, errAt(c.Attributes["canary"], "Duplicate canary", "The canary %q is named twice.", name))
		}
		seen[name] = true
	}
	for _, ab := range c.Blocks {
		if r.Approval != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate approval block",
				Detail: "Only one approval block is allowed in a rollout: list every gated wave in its waves.", Subject: ab.DefRange.Ptr()})
			continue
		}
		diags = append(diags, f.decodeApproval(ab)...)
	}
	return diags
}

func (f *Fleet) decodeApproval(b *hcl.Block) hcl.Diagnostics {
	c, diags := b.Body.Content(approvalSchema)
	if diags.HasErrors() {
		return diags
	}
	a := &Approval{Approvers: 1}
	var signers string
	diags = append(diags, decode(c.Attributes["waves"], &a.Waves)...)
	diags = append(diags, decode(c.Attributes["approvers"], &a.Approvers)...)
	diags = append(diags, decode(c.Attributes["allowed_signers"], &signers)...)
	if diags.HasErrors() {
		return diags
	}
	f.Rollout.Approval = a
	if a.Approvers < 1 {
		diags = append(diags, errAt(c.Attributes["approvers"], "Invalid approvers",
			"approvers is how many distinct approvers a gated wave needs: at least 1, not %d.", a.Approvers))
	}
	if signers != "" {
		a.AllowedSigners = f.abs(signers)
		if _, err := os.Stat(a.AllowedSigners); err != nil {
			diags = append(diags, errAt(c.Attributes["allowed_signers"], "Allowed signers not found",
				"allowed_signers names %s, which cannot be read (%v): an OpenSSH allowed-signers file, relative to the fleet file.", signers, unwrapPath(err)))
		}
	}
	if f.Rollout.WaveSize < 1 {
		return diags // the waves cannot be counted
	}
	waves := f.Waves()
	for _, w := range a.Waves {
		if w < 0 || w >= len(waves) || len(waves[w]) == 0 {
			diags = append(diags, errAt(c.Attributes["waves"], "No such wave",
				"approval names wave %d; this fleet has %s.", w, waveRange(waves)))
		}
	}
	return diags
}

func waveRange(waves [][]string) string {
	if len(waves[0]) > 0 {
		return fmt.Sprintf("wave 0 (the canary) to wave %d", len(waves)-1)
	}
	return fmt.Sprintf("waves 1 to %d (no canary, so no wave 0)", len(waves)-1)
}

func (f *Fleet) decodeTemporal(b *hcl.Block) hcl.Diagnostics {
	c, diags := b.Body.Content(temporalSchema)
	if diags.HasErrors() {
		return diags
	}
	diags = append(diags, decode(c.Attributes["address"], &f.Temporal.Address)...)
	diags = append(diags, decode(c.Attributes["namespace"], &f.Temporal.Namespace)...)
	if f.Temporal.Namespace == "" {
		f.Temporal.Namespace = "default"
	}
	return diags
}

func (f *Fleet) abs(p string) string {
	if filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(f.Dir, p)
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

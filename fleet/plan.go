package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/runbook-dev/runbook/engine"
)

// PlanFormatVersion is the version of fleet.json's schema.
const PlanFormatVersion = 1

// Files of a fleet plan directory. Each deployment's own plan (runbook plan
// -out) is deployments/NAME/, its plan's output logs/NAME.log.
const (
	PlanFile    = "fleet.json"
	SummaryFile = "FLEET.md"
	AuthorSig   = "fleet.sig"
)

// PlanDoc is fleet.json: every deployment's plan fingerprint and the rollout,
// bound by one fingerprint. Paths inside are relative to the plan directory,
// except journals, which are where workers keep them.
type PlanDoc struct {
	FormatVersion   int              `json:"format_version"`
	Fleet           string           `json:"fleet"`
	FleetFileSHA256 string           `json:"fleet_file_sha256"`
	Runbook         PlanRunbook      `json:"runbook"`
	MadeBy          string           `json:"made_by,omitempty"`
	Rollout         PlanRollout      `json:"rollout"`
	Deployments     []PlanDeployment `json:"deployments"`
	Waves           [][]string       `json:"waves"`
	Temporal        Temporal         `json:"temporal"`
	Fingerprint     string           `json:"fingerprint"`
}

// PlanRunbook is the runbook rolled out.
type PlanRunbook struct {
	Name         string `json:"name"`
	File         string `json:"file"`
	SourceSHA256 string `json:"source_sha256"`
}

// PlanRollout is the rollout as planned.
type PlanRollout struct {
	Canary         []string `json:"canary,omitempty"`
	WaveSize       int      `json:"wave_size"`
	MaxConcurrency int      `json:"max_concurrency"`
	MaxErrors      int      `json:"max_errors"`
	ApprovalWaves  []int    `json:"approval_waves,omitempty"`
	Approvers      int      `json:"approvers,omitempty"`
	// AllowedSigners is the allowed-signers file's content (public keys),
	// so that what approvals are checked against is bound too.
	AllowedSigners string `json:"allowed_signers,omitempty"`
}

// PlanDeployment is one deployment's plan.
type PlanDeployment struct {
	Name        string            `json:"name"`
	Host        string            `json:"host"`
	Labels      map[string]string `json:"labels,omitempty"`
	Targets     []string          `json:"targets,omitempty"`
	VarFiles    []string          `json:"var_files,omitempty"` // absolute: read on the worker's host
	VarSHA256   []string          `json:"var_files_sha256,omitempty"`
	PlanDir     string            `json:"plan_dir"`
	Journal     string            `json:"journal"` // absolute, on its host
	Fingerprint string            `json:"fingerprint"`
	Steps       []string          `json:"steps"`
	Risks       []string          `json:"risks,omitempty"`

	runbookName string
	changes     []engine.Resource // the systems its plan changes (bound by its fingerprint)
}

func (d *PlanDoc) computeFingerprint() string {
	c := *d
	c.Fingerprint = ""
	raw, _ := json.Marshal(&c)
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// PlanOptions are how a fleet plan is made.
type PlanOptions struct {
	Runbook     string // the runbook executable
	Out         string // the fleet plan directory
	Parallelism int    // deployments planned at once
	By, Key     string // the author, and the SSH key that signs fleet.json's fingerprint
	// Progress, when set, is told as each deployment's plan ends.
	Progress func(name string, err error)
}

// DeploymentPlanError is a deployment whose plan failed.
type DeploymentPlanError struct {
	Name string
	Code int // the runbook's exit code
	Msg  string
	Log  string
}

func (e *DeploymentPlanError) Error() string {
	return fmt.Sprintf("%s: %s (%s)", e.Name, e.Msg, e.Log)
}

// Plan makes a plan per deployment (runbook plan -out, at most Parallelism
// at once, each with the journal its host will run it with, so that the hash
// key binding its sensitive values is that journal's), then fleet.json and
// FLEET.md binding them and the rollout, and fleet.sig when Key is given.
// Every deployment is planned even when one fails; then no fleet.json is
// written and the errors are returned, each a *DeploymentPlanError.
func Plan(ctx context.Context, f *Fleet, opts PlanOptions) (*PlanDoc, error) {
	for _, sub := range []string{"deployments", "logs"} {
		if err := engine.MkdirDurable(filepath.Join(opts.Out, sub), 0o755); err != nil {
			return nil, fmt.Errorf("create fleet plan dir: %w", err)
		}
	}
	// A plan that cannot be written whole leaves no fleet.json of an older
	// plan beside the new deployment plans.
	if err := os.Remove(filepath.Join(opts.Out, PlanFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove the earlier fleet plan: %w", err)
	}
	src, err := os.ReadFile(f.Runbook)
	if err != nil {
		return nil, fmt.Errorf("read runbook: %w", err)
	}
	doc := &PlanDoc{FormatVersion: PlanFormatVersion, Fleet: f.Name, FleetFileSHA256: sha(f.Src), MadeBy: opts.By, Waves: f.Waves(), Temporal: f.Temporal,
		Runbook: PlanRunbook{File: rel(opts.Out, f.Runbook), SourceSHA256: sha(src)}}
	r := f.Rollout
	doc.Rollout = PlanRollout{Canary: r.Canary, WaveSize: r.WaveSize, MaxConcurrency: r.MaxConcurrency, MaxErrors: r.MaxErrors}
	if a := r.Approval; a != nil {
		doc.Rollout.ApprovalWaves, doc.Rollout.Approvers = a.Waves, a.Approvers
		if a.AllowedSigners != "" {
			raw, err := os.ReadFile(a.AllowedSigners)
			if err != nil {
				return nil, fmt.Errorf("read allowed signers: %w", err)
			}
			doc.Rollout.AllowedSigners = string(raw)
		}
	}
	doc.Deployments = make([]PlanDeployment, len(f.Deployments))
	errs := make([]error, len(f.Deployments))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(opts.Parallelism, 1))
	for i, d := range f.Deployments {
		g.Go(func() error {
			pd, err := planDeployment(gctx, f, d, opts)
			doc.Deployments[i], errs[i] = pd, err
			if opts.Progress != nil {
				opts.Progress(d.Name, err)
			}
			return nil
		})
	}
	g.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, pd := range doc.Deployments {
		doc.Runbook.Name = pd.runbookName
		names[pd.runbookName] = true
	}
	if len(names) != 1 {
		return nil, fmt.Errorf("the deployments' plans name %d runbooks: the runbook changed while they were made; plan again", len(names))
	}
	if err := refuseSharedSystems(doc.Deployments); err != nil {
		return nil, err
	}
	doc.Fingerprint = doc.computeFingerprint()
	var sig string
	if opts.Key != "" {
		if sig, err = engine.Sign(opts.Key, engine.AuthorNamespace, doc.Fingerprint); err != nil {
			return nil, err
		}
	}
	if err := writePlan(opts.Out, doc, sig); err != nil {
		return nil, err
	}
	return doc, nil
}

func planDeployment(ctx context.Context, f *Fleet, d *Deployment, opts PlanOptions) (PlanDeployment, error) {
	pd := PlanDeployment{Name: d.Name, Host: d.Host, Labels: d.Labels, Targets: d.Targets, VarFiles: d.VarFiles,
		PlanDir: filepath.Join("deployments", d.Name), Journal: filepath.Join(f.Journals, d.Name)}
	for _, vf := range d.VarFiles {
		raw, err := os.ReadFile(vf)
		if err != nil {
			return pd, fmt.Errorf("read %s: %w", vf, err)
		}
		pd.VarSHA256 = append(pd.VarSHA256, sha(raw))
	}
	dir := filepath.Join(opts.Out, pd.PlanDir)
	args := []string{"plan", f.Runbook, "-out", dir, "-journal", pd.Journal}
	for _, vf := range d.VarFiles {
		args = append(args, "-var-file", vf)
	}
	for _, t := range d.Targets {
		args = append(args, "-target", t)
	}
	if opts.By != "" {
		args = append(args, "--by", opts.By)
	}
	logFile := filepath.Join(opts.Out, "logs", d.Name+".log")
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, opts.Runbook, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	if err := engine.WriteFileAtomic(logFile, out.Bytes(), 0o644); err != nil {
		return pd, err
	}
	if runErr != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(runErr, &ee) {
			code = ee.ExitCode()
		}
		return pd, &DeploymentPlanError{Name: d.Name, Code: code, Msg: lastError(out.String(), runErr), Log: rel(opts.Out, logFile)}
	}
	pdoc, err := engine.ReadPlanDir(dir)
	if err != nil {
		return pd, fmt.Errorf("%s: %w", d.Name, err)
	}
	pd.Fingerprint, pd.Risks, pd.runbookName = pdoc.Fingerprint, pdoc.Risks, pdoc.Runbook.Name
	for _, st := range pdoc.Steps {
		pd.Steps = append(pd.Steps, st.Address)
		pd.Risks = append(pd.Risks, st.Risks...)
		pd.changes = append(pd.changes, st.Changes...)
	}
	return pd, nil
}

// refuseSharedSystems refuses a fleet in which two deployments would change
// one system, by the identity the system reports (engine.Resource): one
// object store reached through two var files' URLs, or a var file copied
// and not edited. Each deployment's plan alone is sound, and the engine's
// lock fences one journal, not the system: run in one wave, both would
// edit and restart the same servers at once; in two, the second would cut
// over a store the first already had.
func refuseSharedSystems(ds []PlanDeployment) error {
	type owner struct {
		name string
		r    engine.Resource
	}
	first := map[[2]string]owner{}
	var problems []string
	for _, d := range ds {
		for _, r := range d.changes {
			k := [2]string{r.Kind, r.ID}
			o, ok := first[k]
			switch {
			case !ok:
				first[k] = owner{d.Name, r}
			case o.name != d.Name:
				problems = append(problems, fmt.Sprintf("%s and %s both change %s %s (reached as %s and as %s)", o.name, d.Name, r.Kind, r.ID, o.r.Via, r.Via))
			}
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return &SharedSystemsError{Problems: problems}
}

// SharedSystemsError is a fleet refused because two of its deployments would
// change one system (refuseSharedSystems). It is a refusal (engine.ErrRefused)
// with a hint (engine.Hints).
type SharedSystemsError struct {
	Problems []string // "A and B both change KIND ID (reached as …)"
}

func (e *SharedSystemsError) Error() string {
	return fmt.Sprintf("two deployments of this fleet would change the same system: %s. Run at once, both would change it together; one after the other, the second would change what the first already had. No fleet plan was written and nothing was changed", strings.Join(e.Problems, "; "))
}

func (e *SharedSystemsError) Unwrap() error {
	return engine.WithHint(engine.ErrRefused, "give each deployment the var file of its own object store, or remove the duplicate deployment from the fleet file; then plan again (a store restored from another's disk images keeps its deployment ID: see docs/fleet.md, Limits)")
}

func lastError(out string, err error) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if s, ok := strings.CutPrefix(lines[i], "runbook: error: "); ok {
			return s
		}
	}
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], ": error: ") {
			return strings.TrimSpace(lines[i])
		}
	}
	return err.Error()
}

func writePlan(dir string, doc *PlanDoc, sig string) error {
	var raw bytes.Buffer
	enc := json.NewEncoder(&raw)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("encode fleet plan: %w", err)
	}
	if sig != "" {
		if err := engine.WriteFileAtomic(filepath.Join(dir, AuthorSig), []byte(sig), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", AuthorSig, err)
		}
	} else if err := os.Remove(filepath.Join(dir, AuthorSig)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the earlier plan's %s: %w", AuthorSig, err)
	}
	if err := engine.WriteFileAtomic(filepath.Join(dir, SummaryFile), summary(doc), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", SummaryFile, err)
	}
	// fleet.json last: its presence says the plan is whole.
	if err := engine.WriteFileAtomic(filepath.Join(dir, PlanFile), raw.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", PlanFile, err)
	}
	return nil
}

// ReadPlan reads fleet.json and checks it is intact and that every
// deployment's plan is still the one it binds.
func ReadPlan(dir string) (*PlanDoc, error) {
	raw, err := os.ReadFile(filepath.Join(dir, PlanFile))
	if err != nil {
		return nil, fmt.Errorf("read fleet plan: %w", err)
	}
	var doc PlanDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("read fleet plan %s: %w", filepath.Join(dir, PlanFile), err)
	}
	if doc.FormatVersion != PlanFormatVersion {
		return nil, fmt.Errorf("read fleet plan: format version %d is not supported (this runbook-fleet writes %d)", doc.FormatVersion, PlanFormatVersion)
	}
	if doc.computeFingerprint() != doc.Fingerprint {
		return nil, engine.Refusef("%s was edited after it was written: its content does not match its fingerprint; make a new fleet plan", filepath.Join(dir, PlanFile))
	}
	for _, d := range doc.Deployments {
		pdoc, err := engine.ReadPlanDir(filepath.Join(dir, d.PlanDir))
		if err != nil {
			return nil, fmt.Errorf("deployment %s: %w", d.Name, err)
		}
		if pdoc.Fingerprint != d.Fingerprint {
			return nil, engine.Refusef("deployment %s's plan in %s is not the one the fleet plan binds (%s, not %s): make a new fleet plan", d.Name, d.PlanDir, pdoc.Fingerprint, d.Fingerprint)
		}
	}
	return &doc, nil
}

// summary is FLEET.md: the fleet plan for a reviewer.
func summary(doc *PlanDoc) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "# Fleet plan: %s\n\n", doc.Fleet)
	fmt.Fprintf(&b, "Rolls the runbook `%s` (%s, sha256 %s) over %d deployment(s).\n\n", doc.Runbook.Name, doc.Runbook.File, doc.Runbook.SourceSHA256, len(doc.Deployments))
	if doc.MadeBy != "" {
		fmt.Fprintf(&b, "Made by %s, who cannot approve it.\n\n", doc.MadeBy)
	}
	r := doc.Rollout
	fmt.Fprintf(&b, "## Rollout\n\n")
	fmt.Fprintf(&b, "- at most %d deployment(s) run at once; a wave starts when the one before it has finished\n", r.MaxConcurrency)
	fmt.Fprintf(&b, "- error budget: %d failure(s); the next failure stops new starts while running deployments finish; a failed canary stops them too\n", r.MaxErrors)
	gated := map[int]bool{}
	for _, w := range r.ApprovalWaves {
		gated[w] = true
	}
	if len(r.ApprovalWaves) > 0 {
		how := "names"
		if r.AllowedSigners != "" {
			how = "SSH-signed approvals, checked against the allowed signers bound in fleet.json"
		}
		fmt.Fprintf(&b, "- gated waves need %d approval(s) from distinct approvers (%s), never the author's: runbook fleet approve --wave N\n", r.Approvers, how)
	}
	fmt.Fprintf(&b, "\n| wave | deployments | approval |\n|---|---|---|\n")
	for w, names := range doc.Waves {
		if len(names) == 0 {
			continue
		}
		label := fmt.Sprint(w)
		if w == 0 {
			label = "0 (canary)"
		}
		need := "—"
		if gated[w] {
			need = fmt.Sprintf("%d required", r.Approvers)
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", label, strings.Join(names, ", "), need)
	}
	fmt.Fprintf(&b, "\n## Deployments\n\n| deployment | host | steps | plan | fingerprint |\n|---|---|---|---|---|\n")
	for _, d := range doc.Deployments {
		fmt.Fprintf(&b, "| %s | %s | %s | [%s](%s/CHANGE.md) | `%s` |\n", d.Name, d.Host, strings.Join(d.Steps, ", "), d.PlanDir, d.PlanDir, d.Fingerprint)
	}
	var risks []string
	for _, d := range doc.Deployments {
		for _, r := range d.Risks {
			risks = append(risks, d.Name+": "+r)
		}
	}
	if len(risks) > 0 {
		sort.Strings(risks)
		fmt.Fprintf(&b, "\n## Risks\n\n")
		for _, r := range risks {
			fmt.Fprintf(&b, "- %s\n", r)
		}
	}
	fmt.Fprintf(&b, "\nFingerprint: `%s` (binds every deployment's plan fingerprint, the rollout and the allowed signers)\n", doc.Fingerprint)
	return []byte(b.String())
}

func sha(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func rel(base, target string) string {
	if r, err := filepath.Rel(base, target); err == nil {
		return filepath.ToSlash(r)
	}
	return target
}

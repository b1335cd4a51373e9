package engine

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// PlanFormatVersion is the version of plan.json's schema (docs/plan-format.md).
const PlanFormatVersion = 3

// Files of a plan directory.
const (
	PlanFile      = "plan.json"
	ChangeFile    = "CHANGE.md"
	RunbookCopy   = "runbook.hcl"
	ApprovalsFile = "approvals.jsonl"
	AuthorSigFile = "plan.sig"
	itemsDir      = "items"
)

// PlanDoc is plan.json: everything a reviewer signs off, bound by its
// fingerprint. It holds no timestamp and no map order, so the same inputs
// give the same bytes.
type PlanDoc struct {
	FormatVersion int         `json:"format_version"`
	ToolVersion   string      `json:"tool_version"`
	Runbook       PlanRunbook `json:"runbook"`
	Targets       []string    `json:"targets,omitempty"`
	// MadeBy is who made the plan (plan --by); that principal may not
	// approve it. With allowed signers, plan.sig proves it.
	MadeBy    string            `json:"made_by,omitempty"`
	Variables []PlanVariable    `json:"variables"`
	Steps     []PlanStepDoc     `json:"steps"`
	Inputs    map[string]string `json:"inputs"`
	Risks     []string          `json:"risks,omitempty"`
	// HashKey names (HashKey.ID) the journal key that hashed the sensitive
	// variables; empty when there are none.
	HashKey     string `json:"hash_key,omitempty"`
	Fingerprint string `json:"fingerprint"`
}

// PlanRunbook identifies the runbook a plan was made from.
type PlanRunbook struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// File is the runbook's path relative to the plan directory.
	File         string `json:"file"`
	SourceSHA256 string `json:"source_sha256"`
	Approvals    int    `json:"approvals_required"`
	// AllowedSigners is runbook { allowed_signers }, relative to the plan
	// directory: the OpenSSH allowed-signers file that approvals are checked
	// against. Its digest is among the inputs.
	AllowedSigners string `json:"allowed_signers,omitempty"`
}

// PlanVariable is a variable's value, or for a sensitive one a keyed hash of
// it (HMAC-SHA256 under the journal's key, HashKey) so the value can be
// checked, never read or guessed from the plan alone.
type PlanVariable struct {
	Name      string          `json:"name"`
	Sensitive bool            `json:"sensitive,omitempty"`
	Value     json.RawMessage `json:"value,omitempty"`
	Hash      string          `json:"hash,omitempty"`
}

// PlanStepDoc is one step of plan.json.
type PlanStepDoc struct {
	Address         string          `json:"address"`
	Type            string          `json:"type"`
	DependsOn       []string        `json:"depends_on,omitempty"`
	Observed        []string        `json:"observed,omitempty"`
	Actions         []string        `json:"actions,omitempty"`
	Verification    []string        `json:"verification,omitempty"`
	ItemsLabel      string          `json:"items_label,omitempty"`
	Items           int             `json:"items"`
	ItemsFile       string          `json:"items_file,omitempty"`
	ItemsSHA256     string          `json:"items_sha256,omitempty"`
	Rollback        string          `json:"rollback,omitempty"`
	Risks           []string        `json:"risks,omitempty"`
	Changes         []Resource      `json:"changes,omitempty"`
	Sections        []PlanSection   `json:"sections,omitempty"`
	EstimateSeconds float64         `json:"estimate_seconds,omitempty"`
	State           json.RawMessage `json:"state,omitempty"`
}

// PlanArtifacts is a plan directory's content before it is written.
type PlanArtifacts struct {
	Doc    *PlanDoc
	Items  map[string][]string // file name under items/ → lines
	Change []byte
	Source []byte
}

// PlanMeta is what a plan document records beyond what planning observed.
type PlanMeta struct {
	Targets []string
	// Key is the journal's hash key (EnsureHashKey), which binds sensitive values.
	Key *HashKey
	// MadeBy is who made the plan (plan --by), or empty.
	MadeBy string
}

// BuildPlan turns a plan result into the artifacts of a plan directory.
// planDir is where they will be written (paths inside are relative to it).
func (s *Session) BuildPlan(res *PlanResult, planDir string, meta PlanMeta) (*PlanArtifacts, error) {
	rel, err := relPath(planDir, s.Config.Path)
	if err != nil {
		return nil, err
	}
	doc := &PlanDoc{
		FormatVersion: PlanFormatVersion, ToolVersion: Version,
		Runbook: PlanRunbook{Name: s.Config.Name, Description: s.Config.Description, File: rel, SourceSHA256: sha256Hex(s.Config.Src), Approvals: s.Config.Approvals},
		Targets: meta.Targets, MadeBy: meta.MadeBy, Inputs: map[string]string{},
	}
	if err := s.bindInputs(doc, res, planDir, meta.Key); err != nil {
		return nil, err
	}
	if doc.Variables, err = s.planVariables(meta.Key); err != nil {
		return nil, err
	}
	art := &PlanArtifacts{Doc: doc, Items: map[string][]string{}, Source: s.Config.Src}
	riskSeen := map[string]bool{}
	for _, ps := range res.Steps {
		sd, err := s.stepDoc(ps, art.Items)
		if err != nil {
			return nil, err
		}
		for _, r := range sd.Risks {
			if !riskSeen[r] {
				riskSeen[r] = true
				doc.Risks = append(doc.Risks, ps.Addr+": "+r)
			}
		}
		doc.Steps = append(doc.Steps, sd)
	}
	doc.Fingerprint = doc.computeFingerprint()
	art.Change = renderChange(doc, art.Items)
	return art, nil
}

// bindInputs records in doc what the plan binds besides the runbook text:
// the allowed-signers file, every input the steps and functions read, the
// journal key the plan was made with, and each variables file by a keyed
// digest.
func (s *Session) bindInputs(doc *PlanDoc, res *PlanResult, planDir string, key *HashKey) error {
	rd := s.Redactor
	if p := s.Config.AllowedSignersPath(); p != "" {
		var err error
		if doc.Runbook.AllowedSigners, err = relPath(planDir, p); err != nil {
			return err
		}
	}
	for k, v := range res.Inputs {
		doc.Inputs[rd.String(s.relInput(planDir, k))] = v
	}
	if key != nil {
		// Every plan names the journal key it was made with: it applies with
		// that journal only, which records that it was applied.
		doc.HashKey = key.ID()
	}
	for path, sum := range s.Config.varFiles {
		if key == nil {
			return errors.New("bind variables files: no hash key")
		}
		// Keyed: a variables file may hold secrets, and a plain digest of
		// a file whose layout is known would allow guessing them.
		doc.Inputs["var-file "+rd.String(s.relFile(planDir, path))] = key.Sum("var-file", cty.StringVal(sum))
	}
	return nil
}

// planVariables is each variable's value, redacted, or for a sensitive
// one its keyed hash.
func (s *Session) planVariables(key *HashKey) ([]PlanVariable, error) {
	var out []PlanVariable
	for _, v := range s.Config.Variables {
		val := s.Scope.vars[v.Name]
		pv := PlanVariable{Name: v.Name, Sensitive: v.Sensitive}
		if v.Sensitive {
			if key == nil {
				return nil, errors.New("bind sensitive variables: no hash key")
			}
			pv.Hash = key.Sum("var."+v.Name, val)
		} else {
			raw, err := ctyjson.Marshal(val, v.Type)
			if err != nil {
				return nil, fmt.Errorf("encode variable %s: %w", v.Name, err)
			}
			pv.Value = json.RawMessage(s.Redactor.String(string(raw)))
		}
		out = append(out, pv)
	}
	return out, nil
}

// stepDoc is one planned step as plan.json records it, every rendered
// string redacted; its items go to items (by file name), verbatim.
func (s *Session) stepDoc(ps PlannedStep, items map[string][]string) (PlanStepDoc, error) {
	rd := s.Redactor
	sd := PlanStepDoc{Address: ps.Addr, Type: ps.Type, DependsOn: ps.DependsOn}
	p := ps.Plan
	if p == nil {
		return sd, nil
	}
	sd.Observed, sd.Actions, sd.Verification = redactAll(rd, p.Observed), redactAll(rd, p.Actions), redactAll(rd, p.Verification)
	sd.Rollback, sd.Risks, sd.ItemsLabel = rd.String(p.Rollback), redactAll(rd, p.Risks), p.ItemsLabel
	sd.EstimateSeconds = p.EstimateSeconds
	for _, c := range p.Changes {
		c.Via = rd.String(c.Via)
		sd.Changes = append(sd.Changes, c)
	}
	for _, sec := range p.Sections {
		sd.Sections = append(sd.Sections, PlanSection{Title: rd.String(sec.Title), Body: rd.String(sec.Body)})
	}
	sd.Items = len(p.Items)
	if len(p.Items) > 0 {
		name := ps.Addr + ".txt"
		items[name] = p.Items // identifiers, verbatim: Plan refused any that holds a secret
		sd.ItemsFile = filepath.ToSlash(filepath.Join(itemsDir, name))
		sd.ItemsSHA256 = sha256Hex([]byte(strings.Join(p.Items, "\n") + "\n"))
	}
	if p.State != nil {
		raw, err := json.Marshal(p.State)
		if err != nil {
			return sd, fmt.Errorf("encode observed state of %s: %w", ps.Addr, err)
		}
		sd.State = json.RawMessage(rd.String(string(raw)))
	}
	return sd, nil
}

func redactAll(rd *Redactor, in []string) []string {
	if len(in) == 0 {
		return nil
	}
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = rd.String(s)
	}
	return out
}

func relPath(base, target string) (string, error) {
	ab, err := filepath.Abs(base)
	if err != nil {
		return "", fmt.Errorf("resolve plan dir: %w", err)
	}
	at, err := filepath.Abs(target)
	if err != nil {
		return "", fmt.Errorf("resolve runbook path: %w", err)
	}
	rel, err := filepath.Rel(ab, at)
	if err != nil {
		return at, nil
	}
	return filepath.ToSlash(rel), nil
}

// relInput shows a file input relative to the plan dir when it lies in the
// runbook's folder or the plan dir, so plans made from the same place are
// identical wherever the checkout lives; other files (a program in
// /usr/bin) keep their absolute path.
func (s *Session) relInput(planDir, input string) string {
	if p, ok := strings.CutPrefix(input, "file "); ok {
		return "file " + s.relFile(planDir, p)
	}
	return input
}

func (s *Session) relFile(planDir, path string) string {
	for _, base := range []string{s.Config.Dir, planDir} {
		if ab, err := filepath.Abs(base); err == nil {
			if r, err := filepath.Rel(ab, path); err == nil && r != ".." && !strings.HasPrefix(r, "../") {
				if rel, err := relPath(planDir, path); err == nil {
					return rel
				}
			}
		}
	}
	return path
}

// computeFingerprint hashes everything in the document but the fingerprint.
func (d *PlanDoc) computeFingerprint() string {
	c := *d
	c.Fingerprint = ""
	raw, _ := json.Marshal(&c)
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// WritePlanDir writes the artifacts: plan.json, CHANGE.md, a copy of the
// runbook text, the item lists and, when authorSig is not empty, plan.sig
// (the author's SSH signature over the fingerprint), each atomically.
// Approvals of an earlier plan in the same directory stay; they name the
// fingerprint they approved.
func WritePlanDir(dir string, art *PlanArtifacts, authorSig string) error {
	if err := atomicfile.MkdirAll(filepath.Join(dir, itemsDir), 0o755); err != nil {
		return fmt.Errorf("create plan dir: %w", err)
	}
	var raw bytes.Buffer
	enc := json.NewEncoder(&raw)
	enc.SetEscapeHTML(false) // a reviewer reads "a > b", not "a \u003e b"
	enc.SetIndent("", "  ")
	if err := enc.Encode(art.Doc); err != nil {
		return fmt.Errorf("encode plan: %w", err)
	}
	writes := map[string][]byte{PlanFile: raw.Bytes(), ChangeFile: art.Change, RunbookCopy: art.Source}
	if authorSig != "" {
		writes[AuthorSigFile] = []byte(authorSig)
	} else if err := os.Remove(filepath.Join(dir, AuthorSigFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove the earlier plan's %s: %w", AuthorSigFile, err)
	}
	for name, lines := range art.Items {
		writes[filepath.Join(itemsDir, name)] = []byte(strings.Join(lines, "\n") + "\n")
	}
	// An earlier plan's item lists in the same directory are not part of
	// this one: removed, so that the directory holds exactly this plan.
	entries, err := os.ReadDir(filepath.Join(dir, itemsDir))
	if err != nil {
		return fmt.Errorf("read plan items: %w", err)
	}
	for _, e := range entries {
		if _, ok := art.Items[e.Name()]; !ok {
			if err := os.RemoveAll(filepath.Join(dir, itemsDir, e.Name())); err != nil {
				return fmt.Errorf("remove the earlier plan's %s: %w", filepath.Join(itemsDir, e.Name()), err)
			}
		}
	}
	for _, name := range sortedKeys(writes) {
		if err := atomicfile.WriteFile(filepath.Join(dir, name), writes[name], 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	return nil
}

// PlanDir is a plan directory as read back and checked: everything in it
// that show displays or apply uses, each part bound by the fingerprint.
type PlanDir struct {
	Dir   string
	Doc   *PlanDoc
	Items map[string][]string // file name under items/ → lines
	// Change is CHANGE.md as rendered from Doc and Items, which is what the
	// file holds (OpenPlanDir refuses it otherwise).
	Change []byte
}

// ReadPlanDir reads a plan directory and checks that it is whole (OpenPlanDir).
func ReadPlanDir(dir string) (*PlanDoc, error) {
	pd, err := OpenPlanDir(dir)
	if err != nil {
		return nil, err
	}
	return pd.Doc, nil
}

// OpenPlanDir reads a plan directory and checks that every part of it is the
// one the fingerprint binds: plan.json against its fingerprint, the runbook
// copy against runbook.source_sha256, each items/ file against its step's
// items_sha256 (and no other file in items/), and CHANGE.md against the text
// rendered from plan.json and the items. A part that differs is refused
// (ErrRefused) with its file named; nothing a reviewer reads comes from a
// file that the fingerprint does not bind. approvals.jsonl and plan.sig are
// judged by CheckApprovals.
func OpenPlanDir(dir string) (*PlanDir, error) {
	raw, err := os.ReadFile(filepath.Join(dir, PlanFile))
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	var doc PlanDoc
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("read plan %s: %w", filepath.Join(dir, PlanFile), err)
	}
	if doc.FormatVersion != PlanFormatVersion {
		return nil, fmt.Errorf("read plan: format version %d is not supported by this runbook (version %d); make the plan again", doc.FormatVersion, PlanFormatVersion)
	}
	if got := doc.computeFingerprint(); got != doc.Fingerprint {
		return nil, Refusef("%s was edited after it was written: its content does not match its fingerprint; make a new plan", filepath.Join(dir, PlanFile))
	}
	pd := &PlanDir{Dir: dir, Doc: &doc, Items: map[string][]string{}}
	changed := func(name, why string) error {
		return Refusef("%s is not the one the plan's fingerprint binds (%s): the plan directory was changed after the plan was written. Make a new plan (runbook plan FILE -out DIR) and have it reviewed", filepath.Join(dir, filepath.FromSlash(name)), why)
	}
	src, err := os.ReadFile(filepath.Join(dir, RunbookCopy))
	if err != nil {
		return nil, changed(RunbookCopy, "it cannot be read: "+errors.Unwrap(err).Error())
	}
	if sha256Hex(src) != doc.Runbook.SourceSHA256 {
		return nil, changed(RunbookCopy, "its text differs from the runbook text planned")
	}
	listed := map[string]bool{}
	for _, st := range doc.Steps {
		if st.ItemsFile == "" {
			continue
		}
		name, ok := strings.CutPrefix(st.ItemsFile, itemsDir+"/")
		if !ok || name == "" || strings.ContainsAny(name, `/\`) || name != st.Address+".txt" {
			return nil, Refusef("%s names items file %q for %s, which is not where a plan keeps it; make a new plan", filepath.Join(dir, PlanFile), st.ItemsFile, st.Address)
		}
		b, err := os.ReadFile(filepath.Join(dir, itemsDir, name))
		if err != nil {
			return nil, changed(st.ItemsFile, "it cannot be read: "+errors.Unwrap(err).Error())
		}
		if sha256Hex(b) != st.ItemsSHA256 {
			return nil, changed(st.ItemsFile, "its list differs from the "+fmt.Sprint(st.Items)+" item(s) planned")
		}
		pd.Items[name] = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
		listed[name] = true
	}
	entries, err := os.ReadDir(filepath.Join(dir, itemsDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read plan items: %w", err)
	}
	for _, e := range entries {
		if !listed[e.Name()] {
			return nil, changed(itemsDir+"/"+e.Name(), "the plan lists no such file")
		}
	}
	pd.Change = renderChange(&doc, pd.Items)
	change, err := os.ReadFile(filepath.Join(dir, ChangeFile))
	if err != nil {
		return nil, changed(ChangeFile, "it cannot be read: "+errors.Unwrap(err).Error())
	}
	if !bytes.Equal(change, pd.Change) {
		return nil, changed(ChangeFile, "its text differs from the change request rendered from "+PlanFile+", line "+fmt.Sprint(firstDifferentLine(change, pd.Change)))
	}
	return pd, nil
}

// firstDifferentLine is the 1-based number of the first line where a and b differ.
func firstDifferentLine(a, b []byte) int {
	la, lb := bytes.Split(a, []byte("\n")), bytes.Split(b, []byte("\n"))
	for i := range min(len(la), len(lb)) {
		if !bytes.Equal(la[i], lb[i]) {
			return i + 1
		}
	}
	return min(len(la), len(lb)) + 1
}

// DiffPlans names each thing that differs between a reviewed plan and the
// same plan made now.
func DiffPlans(old, cur *PlanDoc) []string {
	var out []string
	if old.ToolVersion != cur.ToolVersion {
		out = append(out, fmt.Sprintf("the tool's version changed (%s → %s)", old.ToolVersion, cur.ToolVersion))
	}
	if old.Runbook.SourceSHA256 != cur.Runbook.SourceSHA256 {
		out = append(out, "the runbook text changed")
	}
	if strings.Join(old.Targets, ",") != strings.Join(cur.Targets, ",") {
		out = append(out, "the targets changed")
	}
	ov := map[string]PlanVariable{}
	for _, v := range old.Variables {
		ov[v.Name] = v
	}
	for _, v := range cur.Variables {
		o, ok := ov[v.Name]
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("variable %q is new", v.Name))
		case o.Hash != v.Hash || !sameJSON(o.Value, v.Value):
			out = append(out, fmt.Sprintf("variable %q changed", v.Name))
		}
	}
	for _, k := range sortedKeys(unionKeys(old.Inputs, cur.Inputs)) {
		o, n := old.Inputs[k], cur.Inputs[k]
		switch {
		case o == "":
			out = append(out, fmt.Sprintf("%s is read now but was not at plan time", k))
		case n == "":
			out = append(out, fmt.Sprintf("%s was read at plan time but not now", k))
		case o != n:
			out = append(out, fmt.Sprintf("%s changed", k))
		}
	}
	os := map[string]PlanStepDoc{}
	for _, s := range old.Steps {
		os[s.Address] = s
	}
	for _, s := range cur.Steps {
		o, ok := os[s.Address]
		if !ok {
			out = append(out, fmt.Sprintf("step %s is new", s.Address))
			continue
		}
		if !sameJSON(o.State, s.State) {
			out = append(out, fmt.Sprintf("what %s observed changed%s", s.Address, stateDiff(o.State, s.State)))
		} else if o.ItemsSHA256 != s.ItemsSHA256 || o.Items != s.Items {
			out = append(out, fmt.Sprintf("the items of %s changed (%d → %d)", s.Address, o.Items, s.Items))
		}
	}
	if len(out) == 0 && old.Fingerprint != cur.Fingerprint {
		out = append(out, "the plan's content changed")
	}
	return out
}

// sameJSON compares two JSON documents whatever their indentation (plan.json
// is indented; a fresh plan is not).
func sameJSON(a, b json.RawMessage) bool {
	var ca, cb bytes.Buffer
	if json.Compact(&ca, a) != nil || json.Compact(&cb, b) != nil {
		return bytes.Equal(a, b)
	}
	return bytes.Equal(ca.Bytes(), cb.Bytes())
}

func unionKeys(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// stateDiff describes the difference between two observed states: for list
// fields, the names added and removed.
func stateDiff(a, b json.RawMessage) string {
	var oa, ob map[string]any
	if json.Unmarshal(a, &oa) != nil || json.Unmarshal(b, &ob) != nil {
		return ""
	}
	var parts []string
	for _, k := range sortedKeys(ob) {
		la, okA := oa[k].([]any)
		lb, okB := ob[k].([]any)
		if okA && okB {
			added, removed := listDiff(la, lb)
			if len(added) > 0 {
				parts = append(parts, fmt.Sprintf("%s added: %s", k, shortList(added)))
			}
			if len(removed) > 0 {
				parts = append(parts, fmt.Sprintf("%s removed: %s", k, shortList(removed)))
			}
			continue
		}
		ma, okA := oa[k].(map[string]any)
		mb, okB := ob[k].(map[string]any)
		if okA && okB {
			for _, sub := range sortedKeys(mb) {
				if fmt.Sprint(ma[sub]) != fmt.Sprint(mb[sub]) {
					parts = append(parts, fmt.Sprintf("%s %s changed", k, sub))
				}
			}
			for _, sub := range sortedKeys(ma) {
				if _, ok := mb[sub]; !ok {
					parts = append(parts, fmt.Sprintf("%s %s is gone", k, sub))
				}
			}
			continue
		}
		if fmt.Sprint(oa[k]) != fmt.Sprint(ob[k]) {
			parts = append(parts, fmt.Sprintf("%s was %v, now %v", k, oa[k], ob[k]))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, "; ")
}

func listDiff(a, b []any) (added, removed []string) {
	in := func(l []any) map[string]bool {
		m := map[string]bool{}
		for _, x := range l {
			m[fmt.Sprint(x)] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	for k := range mb {
		if !ma[k] {
			added = append(added, k)
		}
	}
	for k := range ma {
		if !mb[k] {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

func shortList(l []string) string {
	if len(l) > 10 {
		return strings.Join(l[:10], ", ") + fmt.Sprintf(" and %d more", len(l)-10)
	}
	return strings.Join(l, ", ")
}

package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:        "cutover",
		Kind:        engine.KindStep,
		New:         func() engine.Block { return &cutoverStep{} },
		Outputs:     map[string]cty.Type{"restarted_at": cty.String, "kms": cty.String},
		Credentials: []string{"api_key"},
		Doc:         "switches AIStor from KES to the Key Manager: edits every node's env file, restarts, validates; rollback restores KES",
	})
}

var (
	_ engine.Step       = (*cutoverStep)(nil)
	_ engine.Planner    = (*cutoverStep)(nil)
	_ engine.Rollbacker = (*cutoverStep)(nil)
	_ engine.Validator  = (*cutoverStep)(nil)
)

const (
	defaultSamplePerBucket = 3
	defaultWaitTimeout     = 5 * time.Minute
	systemdUnit            = "minio"
	kmsNameKeyManager      = "MinIO KMS"
	kmsNameKES             = "MinIO KES"
	logTailLines           = 20
)

type cutoverConfig struct {
	AIStor          cty.Value `hcl:"aistor"`
	Enclave         cty.Value `hcl:"enclave"`
	APIKey          string    `hcl:"api_key"`
	SSEKey          string    `hcl:"sse_key,optional"`
	ValidateObjects []string  `hcl:"validate_objects,optional"`
	SamplePerBucket *int      `hcl:"sample_per_bucket,optional"`
	ValidateAll     bool      `hcl:"validate_all,optional"`
	OnFailure       string    `hcl:"on_failure,optional"`
	WaitTimeout     string    `hcl:"wait_timeout,optional"`
}

// cutoverStep moves a running AIStor deployment from KES to the Key Manager
// (SPEC.md, the cutover row; DOMAIN.md part D).
//
// Apply is idempotent: every node's file is backed up and the hash of its
// intended new content checkpointed ("backup/NODE") before it is written, so
// a resume recognises an edited file and never edits it twice ("edited/NODE"
// after); the restart time is checkpointed before the restart ("restart"), so
// that rollback knows since when the Key Manager may have sealed data. When an
// attempt was rolled back automatically ("rolled-back/N"), a resume starts a
// new attempt whose items carry the prefix "gN/".
type cutoverStep struct {
	cfg cutoverConfig
}

func (c *cutoverStep) Config() any { return &c.cfg }

func (c *cutoverStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if c.cfg.OnFailure != "" {
		diags = append(diags, oneOf(d, "on_failure", c.cfg.OnFailure, "rollback", "stop")...)
	}
	if c.cfg.WaitTimeout != "" && !d.Unknown("wait_timeout") {
		if t, err := time.ParseDuration(c.cfg.WaitTimeout); err != nil || t <= 0 {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid wait_timeout", Detail: fmt.Sprintf("%q is not a positive duration: write it like \"90s\" or \"5m\".", c.cfg.WaitTimeout), Subject: d.AttrRange("wait_timeout")})
		}
	}
	if c.cfg.SamplePerBucket != nil && *c.cfg.SamplePerBucket < 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid sample_per_bucket", Detail: "sample_per_bucket is how many objects of every bucket are read back after the restart; it cannot be negative.", Subject: d.AttrRange("sample_per_bucket")})
	}
	if !d.Unknown("validate_objects") {
		for _, o := range c.cfg.ValidateObjects {
			if b, obj, ok := strings.Cut(o, "/"); !ok || b == "" || obj == "" {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid object name", Detail: fmt.Sprintf("%q: name each object to validate as \"bucket/object\".", o), Subject: d.AttrRange("validate_objects")})
			}
		}
	}
	if !d.Unknown("aistor") {
		a, _, err := engine.ConnectionFrom[*aistorConnection](c.cfg.AIStor, "aistor")
		if err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid aistor reference", Detail: err.Error() + ".", Subject: d.AttrRange("aistor")})
		} else {
			diags = append(diags, c.validateConnection(d, a)...)
		}
	}
	if !d.Unknown("enclave") {
		if _, err := enclaveFrom(c.cfg.Enclave); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid enclave reference", Detail: err.Error() + ".", Subject: d.AttrRange("enclave")})
		}
	}
	return diags
}

func (c *cutoverStep) validateConnection(d *engine.Decoded, a *aistorConnection) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if a.Platform() == "kubernetes" {
		return nil
	}
	if len(a.EnvFiles()) == 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No env files to cut over", Detail: "The cutover edits every node's environment file: list them in env_files on the aistor block (local paths or ssh://user@host[:port]/path), or set platform = \"kubernetes\".", Subject: d.AttrRange("aistor")})
	}
	seen := map[string]bool{}
	for _, f := range a.EnvFiles() {
		if _, err := parseEnvNode(f); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid env file", Detail: err.Error() + ".", Subject: d.AttrRange("aistor")})
		}
		if seen[f] {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Duplicate env file", Detail: fmt.Sprintf("%s is listed twice in env_files; list every node's file once.", f), Subject: d.AttrRange("aistor")})
		}
		seen[f] = true
	}
	if a.RestartMode() == "" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No restart mode", Detail: "The cutover must fully stop and start every node: set restart = \"systemd\" or restart = \"command\" (with restart_command) on the aistor block.", Subject: d.AttrRange("aistor")})
	}
	return diags
}

// cutoverEnv is what the step works with, resolved from its configuration.
type cutoverEnv struct {
	a        *aistorConnection
	enc      enclaveRef
	nodes    []*envNode
	pool     *sshPool
	onFail   string
	wait     time.Duration
	sample   int
	sseKeyIn string
}

func (c *cutoverStep) resolve(r *engine.Run) (*cutoverEnv, error) {
	a, _, err := engine.ConnectionFrom[*aistorConnection](c.cfg.AIStor, "aistor")
	if err != nil {
		return nil, err
	}
	enc, err := enclaveFrom(c.cfg.Enclave)
	if err != nil {
		return nil, err
	}
	if c.cfg.APIKey != "" {
		r.AddSecret(c.cfg.APIKey)
	}
	e := &cutoverEnv{a: a, enc: enc, onFail: c.cfg.OnFailure, wait: defaultWaitTimeout, sample: defaultSamplePerBucket, sseKeyIn: c.cfg.SSEKey}
	if e.onFail == "" {
		e.onFail = "rollback"
	}
	if c.cfg.WaitTimeout != "" {
		if e.wait, err = time.ParseDuration(c.cfg.WaitTimeout); err != nil {
			return nil, fmt.Errorf("parse wait_timeout: %w", err)
		}
	}
	if c.cfg.SamplePerBucket != nil {
		e.sample = *c.cfg.SamplePerBucket
	}
	e.pool = newSSHPool(a.SSHKnownHosts(), a.SSHIdentity())
	for _, f := range a.EnvFiles() {
		n, err := parseEnvNode(f)
		if err != nil {
			return nil, err
		}
		n.pool = e.pool
		e.nodes = append(e.nodes, n)
	}
	return e, nil
}

// refuseAdmin explains why the documented restart cannot be used.
func refuseAdmin() error {
	return engine.Refusef("restart = \"admin\" cannot carry out this cutover: the admin (mc admin service) restart re-executes MinIO with its old environment, which still holds the MINIO_KMS_KES_* variables, and re-reads the env file only additively, so MinIO stops with \"kms: configuration for MinIO KMS and MinIO KES is present\" (FATAL) and the object store is down (DOMAIN.md D2). Use restart = \"systemd\" (systemctl restart minio on every node) or restart = \"command\" with a restart_command that fully stops and starts the MinIO process")
}

// desired is the Key Manager configuration the files get.
func (c *cutoverStep) desired(e *cutoverEnv, original []byte, apiKey string) (map[string]string, error) {
	sse := e.sseKeyIn
	if sse == "" {
		env, err := envEffective(original)
		if err != nil {
			return nil, err
		}
		sse = env["MINIO_KMS_KES_KEY_NAME"]
		if sse == "" {
			return nil, errors.New("the env file sets no MINIO_KMS_KES_KEY_NAME to take the default key from: set sse_key on the cutover block")
		}
	}
	return map[string]string{
		"MINIO_KMS_SERVER":  strings.Join(e.enc.KM.Endpoints(), ","),
		"MINIO_KMS_ENCLAVE": e.enc.Name,
		"MINIO_KMS_API_KEY": apiKey,
		"MINIO_KMS_SSE_KEY": sse,
	}, nil
}

// nodeFile is one node's file as read.
type nodeFile struct {
	node *envNode
	data []byte
	meta fileMeta
	sum  string
}

func (c *cutoverStep) readAll(ctx context.Context, r *engine.Run, e *cutoverEnv) ([]nodeFile, error) {
	files := make([]nodeFile, len(e.nodes))
	errs := make([]error, len(e.nodes))
	var wg sync.WaitGroup
	for i, n := range e.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data, meta, err := n.read(ctx, r)
			files[i], errs[i] = nodeFile{node: n, data: data, meta: meta, sum: envSHA256(data)}, err
		}()
	}
	wg.Wait()
	return files, errors.Join(errs...)
}

// sameFiles names the nodes whose file differs from the majority's.
func sameFiles(files []nodeFile) error {
	count := map[string]int{}
	for _, f := range files {
		count[f.sum]++
	}
	if len(count) <= 1 {
		return nil
	}
	best := ""
	for _, f := range files { // the most common content; ties go to the first node's
		if best == "" || count[f.sum] > count[best] {
			best = f.sum
		}
	}
	var odd []string
	for _, f := range files {
		if f.sum != best {
			odd = append(odd, fmt.Sprintf("%s (sha256 %s)", f.node.Name, f.sum))
		}
	}
	return fmt.Errorf("the nodes' env files are not identical: %s differs from the other nodes' (sha256 %s); MinIO requires the same MINIO_* environment on every node: make the files identical (shasum -a 256 on each node) and run again", strings.Join(odd, ", "), best)
}

func (c *cutoverStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	e, err := c.resolve(r)
	if err != nil {
		return nil, err
	}
	defer e.pool.close()
	p := &engine.StepPlan{ItemsLabel: "env files to edit"}
	if e.a.Platform() == "kubernetes" {
		return c.planKubernetes(ctx, r, e, p)
	}
	switch e.a.RestartMode() {
	case "admin":
		return nil, refuseAdmin()
	case "":
		return nil, errors.New("the aistor block sets no restart mode: set restart = \"systemd\" or \"command\"")
	}
	files, err := c.readAll(ctx, r, e)
	if err != nil {
		return nil, err
	}
	if err := sameFiles(files); err != nil {
		return nil, engine.Refusef("%v", err)
	}
	apiKey := c.cfg.APIKey
	if apiKey == "" || r.Decoded.Unknown("api_key") {
		apiKey = "(known after apply)"
	}
	set, err := c.desired(e, files[0].data, apiKey)
	if err != nil {
		return nil, fmt.Errorf("plan env file %s: %w", files[0].node.Name, err)
	}
	state := map[string]string{}
	for _, f := range files {
		state[f.node.Name] = f.sum
		newData, err := editEnv(f.data, set)
		if err != nil {
			return nil, fmt.Errorf("plan edit of %s: %w", f.node.Name, err)
		}
		p.Observed = append(p.Observed, fmt.Sprintf("%s: sha256 %s", f.node.Name, f.sum))
		p.Items = append(p.Items, f.node.Name)
		diff := envDiff(f.data, newData)
		p.Actions = append(p.Actions, fmt.Sprintf("back up %s into the journal dir (0600) and change it:", f.node.Name))
		for _, l := range diff {
			p.Actions = append(p.Actions, "    "+r.Redact(l))
		}
		p.Sections = append(p.Sections, engine.PlanSection{Title: "Environment diff: " + f.node.Name, Body: r.Redact(strings.Join(diff, "\n"))})
	}
	p.Observed = append(p.Observed, fmt.Sprintf("the %d env files are identical (sha256 %s)", len(files), files[0].sum))
	if admin, _, err := e.a.Clients(r); err == nil {
		if st, err := admin.KMSStatus(ctx); err == nil {
			p.Observed = append(p.Observed, fmt.Sprintf("AIStor reports KMS %q, default key %q, endpoints %s", st.Name, st.DefaultKeyID, formatKMSEndpoints(st.Endpoints)))
			if st.Name == kmsNameKeyManager {
				p.Risks = append(p.Risks, "AIStor already reports the Key Manager: the files will be edited and the nodes restarted all the same")
			}
		} else {
			p.Risks = append(p.Risks, fmt.Sprintf("could not read AIStor's KMS status: %v", err))
		}
	}
	p.Actions = append(p.Actions, fmt.Sprintf("confirm the %d edited files are identical (sha256) before any restart", len(files)))
	p.Actions = append(p.Actions, c.restartAction(e))
	p.Actions = append(p.Actions, fmt.Sprintf("wait up to %s until every node is online, AIStor's KMS status names the Key Manager (%s) with its endpoints online, and the default key %q passes a key status check", e.wait, kmsNameKeyManager, set["MINIO_KMS_SSE_KEY"]))
	p.Actions = append(p.Actions, c.validateAction(e))
	if e.onFail == "rollback" {
		p.Actions = append(p.Actions, "on failure: restore the original files, restart and confirm objects read through KES again (on_failure = \"rollback\")")
	} else {
		p.Actions = append(p.Actions, "on failure: stop and leave the nodes as they are (on_failure = \"stop\"); runbook rollback restores them")
	}
	p.Verification = []string{
		fmt.Sprintf("every node online and AIStor's KMS status names %q with every endpoint online", kmsNameKeyManager),
		fmt.Sprintf("the default key %q passes AIStor's key status check (generate + decrypt)", set["MINIO_KMS_SSE_KEY"]),
		c.validateAction(e),
	}
	p.Rollback = "restore every node's backed-up env file, restart the nodes the same way, and confirm AIStor reports KES and objects read again; refused once any object was written or changed after the cutover's restart (KES cannot read what the Key Manager sealed) unless forced"
	if e.a.RestartMode() == "systemd" {
		p.Risks = append(p.Risks, "restart = \"systemd\": a full stop and start of the minio unit on every node; variables set elsewhere in the unit (Environment=) are not seen by this plan")
	}
	p.Risks = append(p.Risks, "the nodes restart together (MinIO requires the same environment on every node): the object store is unavailable until they are back")
	sort.Strings(p.Items)
	p.State = map[string]any{"env_files": state}
	return p, nil
}

func (c *cutoverStep) restartAction(e *cutoverEnv) string {
	switch e.a.RestartMode() {
	case "systemd":
		return fmt.Sprintf("restart every node at once: systemctl restart %s on each node's host", systemdUnit)
	default:
		return fmt.Sprintf("restart every node at once: run %s once per node (RUNBOOK_NODE = the node's env file)", quoteArgvList(e.a.RestartCommand()))
	}
}

func (c *cutoverStep) validateAction(e *cutoverEnv) string {
	what := fmt.Sprintf("%d object(s) of every bucket", e.sample)
	if c.cfg.ValidateAll {
		what = "every object of every bucket"
	}
	if len(c.cfg.ValidateObjects) > 0 {
		what = strings.Join(c.cfg.ValidateObjects, ", ") + " and " + what
	}
	return "read back (every byte: a HEAD proves nothing for SSE) " + what + ", and check every bucket's encryption configuration still resolves at the KMS"
}

func quoteArgvList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, " ") + "]"
}

func formatKMSEndpoints(m map[string]madmin.ItemState) string {
	if len(m) == 0 {
		return "(none)"
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, k+" "+string(v))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// Checkpoint data. None holds a secret: hashes, modes, times, names.
type cutoverBackup struct {
	Backup   string      `json:"backup"` // file name in the step's backups/
	Original string      `json:"original_sha256"`
	New      string      `json:"new_sha256"`
	Mode     os.FileMode `json:"mode"`
	UID      int         `json:"uid"`
	GID      int         `json:"gid"`
}

type cutoverRestart struct {
	At   time.Time `json:"at"`
	Mode string    `json:"mode"`
}

// cutoverGen is the number of earlier attempts of this step that were rolled
// back automatically.
func cutoverGen(r *engine.Run) int {
	n := 0
	for _, it := range r.CheckpointOrder() {
		if strings.HasPrefix(it, "rolled-back/") {
			n++
		}
	}
	return n
}

func cutoverItem(g int, name string) string {
	if g == 0 {
		return name
	}
	return fmt.Sprintf("g%d/%s", g, name)
}

func cutoverCheckpoint[T any](r *engine.Run, name string) (T, bool) {
	var v T
	raw, ok := r.Checkpoints()[name]
	if !ok {
		return v, false
	}
	return v, json.Unmarshal(raw, &v) == nil
}

// backupName is node N's backup file (N in env_files order, which the
// journal's copy of the runbook fixes).
func backupName(i int, _ *envNode) string {
	return fmt.Sprintf("node%d.env", i+1)
}

func (c *cutoverStep) Apply(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.pool.close()
	if e.a.Platform() == "kubernetes" {
		return c.applyKubernetes(ctx, r, e)
	}
	switch e.a.RestartMode() {
	case "admin":
		return refuseAdmin()
	case "":
		return errors.New("the aistor block sets no restart mode: set restart = \"systemd\" or \"command\"")
	}
	g := cutoverGen(r)
	if g > 0 {
		r.Logf("attempt %d: the previous attempt was rolled back; starting over", g+1)
	}
	files, err := c.readAll(ctx, r, e)
	if err != nil {
		return err
	}
	started := false
	for _, f := range files {
		if r.HasCheckpoint(cutoverItem(g, "backup/"+f.node.Name)) {
			started = true
		}
	}
	if !started {
		// Before touching anything: the nodes must agree.
		if err := sameFiles(files); err != nil {
			return fmt.Errorf("check env files before the cutover: %w (nothing was changed, no node restarted)", err)
		}
	}
	var set map[string]string
	for i, f := range files {
		bitem, eitem := cutoverItem(g, "backup/"+f.node.Name), cutoverItem(g, "edited/"+f.node.Name)
		b, hasBackup := cutoverCheckpoint[cutoverBackup](r, bitem)
		if !hasBackup {
			if set == nil {
				if set, err = c.desired(e, f.data, c.cfg.APIKey); err != nil {
					return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
				}
			}
			newData, err := editEnv(f.data, set)
			if err != nil {
				return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
			}
			name := backupName(i, f.node)
			if g > 0 {
				name = fmt.Sprintf("%s.g%d", name, g)
			}
			bp, err := r.BackupPath(name)
			if err != nil {
				return err
			}
			if err := engine.WriteFileAtomic(bp, f.data, 0o600); err != nil {
				return fmt.Errorf("back up env file %s: %w", f.node.Name, err)
			}
			b = cutoverBackup{Backup: name, Original: f.sum, New: envSHA256(newData), Mode: f.meta.Mode, UID: f.meta.UID, GID: f.meta.GID}
			// The intent, before the edit: a resume recognises the edited file by this hash.
			if err := r.Checkpoint(bitem, b); err != nil {
				return err
			}
			r.Logf("backed up %s (sha256 %s)", f.node.Name, f.sum)
		}
		switch f.sum {
		case b.New:
			if !r.HasCheckpoint(eitem) {
				r.Logf("%s is already edited (sha256 %s)", f.node.Name, b.New)
			}
		case b.Original:
			orig, err := c.readBackup(r, b)
			if err != nil {
				return err
			}
			if set == nil {
				if set, err = c.desired(e, orig, c.cfg.APIKey); err != nil {
					return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
				}
			}
			newData, err := editEnv(orig, set)
			if err != nil {
				return fmt.Errorf("edit env file %s: %w", f.node.Name, err)
			}
			if envSHA256(newData) != b.New {
				return fmt.Errorf("edit env file %s: the new content differs from the one recorded before the interruption (was the API key, the enclave or the Key Manager changed?); roll back and plan again", f.node.Name)
			}
			if err := f.node.write(ctx, r, newData, fileMeta{Mode: b.Mode, UID: b.UID, GID: b.GID}); err != nil {
				return err
			}
			r.Logf("edited %s (sha256 %s → %s)", f.node.Name, b.Original, b.New)
		default:
			return fmt.Errorf("env file %s changed since the cutover backed it up (sha256 %s, expected the original %s or the edited %s): someone else is editing it; compare it with the backup in %s and roll back or fix it by hand", f.node.Name, f.sum, b.Original, b.New, r.JournalDir())
		}
		if !r.HasCheckpoint(eitem) {
			if err := r.Checkpoint(eitem, map[string]string{"sha256": b.New}); err != nil {
				return err
			}
		}
	}

	// Every node's new file, identical, before any restart.
	files, err = c.readAll(ctx, r, e)
	if err != nil {
		return err
	}
	for _, f := range files {
		b, _ := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+f.node.Name))
		if f.sum != b.New {
			return fmt.Errorf("env file %s is not the edited one after writing it (sha256 %s, expected %s); no node was restarted", f.node.Name, f.sum, b.New)
		}
	}
	if err := sameFiles(files); err != nil {
		return fmt.Errorf("check edited env files: %w; no node was restarted", err)
	}
	r.Logf("the %d edited env files are identical (sha256 %s)", len(files), files[0].sum)

	rs, restarted := cutoverCheckpoint[cutoverRestart](r, cutoverItem(g, "restart"))
	if !restarted {
		rs = cutoverRestart{At: time.Now().UTC(), Mode: e.a.RestartMode()}
		if err := r.Checkpoint(cutoverItem(g, "restart"), rs); err != nil {
			return err
		}
	} else if !r.HasCheckpoint(cutoverItem(g, "restarted")) {
		r.Logf("the restart begun at %s was interrupted: restarting the nodes again", rs.At.Format(time.RFC3339))
	}
	r.SetOutput("restarted_at", cty.StringVal(rs.At.Format(time.RFC3339Nano)))
	failure := func(err error) error {
		if e.onFail != "rollback" {
			return fmt.Errorf("%w; on_failure = \"stop\": the nodes are left as they are; runbook rollback restores the original files", err)
		}
		r.Warnf("cutover failed: %v; rolling back (on_failure = \"rollback\")", err)
		if rbErr := c.rollback(ctx, r, e, g); rbErr != nil {
			return fmt.Errorf("%w; the automatic rollback failed too: %v", err, rbErr)
		}
		if err := r.Checkpoint(fmt.Sprintf("rolled-back/%d", g+1), map[string]string{"at": time.Now().UTC().Format(time.RFC3339)}); err != nil {
			return err
		}
		return fmt.Errorf("%w; rolled back automatically: every node has its original env file again and AIStor reads objects through KES", err)
	}
	if !r.HasCheckpoint(cutoverItem(g, "restarted")) {
		if err := c.restartAll(ctx, r, e); err != nil {
			if ctx.Err() != nil {
				return err
			}
			return failure(err)
		}
		if err := r.Checkpoint(cutoverItem(g, "restarted"), map[string]int{"nodes": len(e.nodes)}); err != nil {
			return err
		}
	}
	if err := c.waitHealthy(ctx, r, e, kmsNameKeyManager); err != nil {
		if ctx.Err() != nil {
			return err
		}
		return failure(err)
	}
	if err := r.Checkpoint(cutoverItem(g, "healthy"), map[string]string{"kms": kmsNameKeyManager}); err != nil {
		return err
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		return failure(err)
	}
	if err := r.Checkpoint(cutoverItem(g, "validated"), map[string]int{"objects": n}); err != nil {
		return err
	}
	r.SetOutput("kms", cty.StringVal(kmsNameKeyManager))
	r.Logf("AIStor reports %s; %d object(s) read back", kmsNameKeyManager, n)
	return nil
}

func (c *cutoverStep) readBackup(r *engine.Run, b cutoverBackup) ([]byte, error) {
	bp, err := r.BackupPath(b.Backup)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(bp)
	if err != nil {
		return nil, fmt.Errorf("read backup %s: %w", bp, err)
	}
	if envSHA256(data) != b.Original {
		return nil, fmt.Errorf("backup %s is damaged (sha256 %s, recorded %s)", bp, envSHA256(data), b.Original)
	}
	return data, nil
}

// restartAll restarts every node at once: MinIO requires the same MINIO_*
// environment on every node of a deployment, so a rolling restart cannot
// pass its start-up check.
func (c *cutoverStep) restartAll(ctx context.Context, r *engine.Run, e *cutoverEnv) error {
	// A restart that hangs (systemctl waits for MinIO's start-up) counts
	// against the same bound as the wait for health.
	ctx, cancel := context.WithTimeout(ctx, e.wait)
	defer cancel()
	errs := make([]error, len(e.nodes))
	var wg sync.WaitGroup
	r.Logf("%s", c.restartAction(e))
	for i, n := range e.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.restartNode(ctx, r, e, i, n)
			if err != nil {
				errs[i] = fmt.Errorf("restart %s: %w; last lines of its output:\n%s", n.Name, err, lastLines(out, logTailLines))
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *cutoverStep) restartNode(ctx context.Context, r *engine.Run, e *cutoverEnv, i int, n *envNode) (string, error) {
	var (
		out []byte
		err error
	)
	switch e.a.RestartMode() {
	case "systemd":
		out, err = n.exec(ctx, r, []string{"systemctl", "restart", systemdUnit}, nil)
	case "command":
		out, err = (&envNode{Name: n.Name}).exec(ctx, r, e.a.RestartCommand(), cutoverNodeEnv(i, n))
	default:
		return "", fmt.Errorf("restart mode %q", e.a.RestartMode())
	}
	text := r.Redact(string(out))
	if lp, lerr := r.LogPath(fmt.Sprintf("restart.node%d", i+1)); lerr == nil {
		_ = os.WriteFile(lp, []byte(text), 0o600)
	}
	for _, l := range splitLines(strings.TrimRight(text, "\n")) {
		r.Logf("%s: %s", n.Name, l)
	}
	return text, err
}

func cutoverNodeEnv(i int, n *envNode) map[string]string {
	env := map[string]string{"RUNBOOK_NODE": n.Name, "RUNBOOK_NODE_INDEX": fmt.Sprint(i + 1), "RUNBOOK_ENV_FILE": n.Path}
	if n.Remote() {
		env["RUNBOOK_NODE_HOST"] = n.Host
		env["RUNBOOK_NODE_USER"] = n.User
	}
	return env
}

func lastLines(s string, n int) string {
	lines := splitLines(strings.TrimRight(s, "\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	if len(lines) == 0 {
		return "\t(no output)"
	}
	return "\t" + strings.Join(lines, "\n\t")
}

// nodeLogs collects every node's recent log for an error message: the
// aistor block's log_command, or journalctl for systemd, or the restart
// command's output kept in logs/.
func (c *cutoverStep) nodeLogs(ctx context.Context, r *engine.Run, e *cutoverEnv) string {
	var b strings.Builder
	for i, n := range e.nodes {
		var (
			out []byte
			err error
		)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		switch {
		case len(e.a.LogCommand()) > 0 && n.Remote():
			out, err = n.exec(lctx, r, e.a.LogCommand(), cutoverNodeEnv(i, n))
		case len(e.a.LogCommand()) > 0:
			out, err = (&envNode{Name: n.Name}).exec(lctx, r, e.a.LogCommand(), cutoverNodeEnv(i, n))
		case e.a.RestartMode() == "systemd":
			out, err = n.exec(lctx, r, []string{"journalctl", "-u", systemdUnit, "-n", fmt.Sprint(logTailLines), "--no-pager"}, nil)
		default:
			lp, _ := r.LogPath(fmt.Sprintf("restart.node%d", i+1))
			out, _ = os.ReadFile(lp)
		}
		cancel()
		text := string(out)
		if err != nil {
			text += fmt.Sprintf("\n(reading the log failed: %v)", err)
		}
		fmt.Fprintf(&b, "\n  %s, last lines of its log:\n%s", n.Name, lastLines(r.Redact(text), logTailLines))
	}
	return b.String()
}

// waitHealthy waits until every node is online, AIStor's KMS status names
// want with every endpoint online, and the default key passes a status
// check.
func (c *cutoverStep) waitHealthy(ctx context.Context, r *engine.Run, e *cutoverEnv, want string) error {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, e.wait)
	defer cancel()
	start := time.Now()
	healthy := 0
	for {
		last := c.healthCheck(wctx, r, e.a, admin, len(e.nodes), want)
		if last == "" {
			healthy++
			last = fmt.Sprintf("healthy for %d check(s) in a row, not yet %d", healthy, stableHealthChecks)
		} else {
			healthy = 0
		}
		// Nodes restarted together can report healthy and lose write quorum
		// again a moment later while they reconnect to each other's drives:
		// only a health that holds for several checks in a row counts.
		if healthy >= stableHealthChecks {
			r.Logf("AIStor is healthy on %s after %s", want, time.Since(start).Round(time.Second))
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-wctx.Done():
			return fmt.Errorf("AIStor did not become healthy on %s within %s: %s; the nodes' logs:%s", want, e.wait, last, c.nodeLogs(ctx, r, e))
		case <-time.After(time.Second):
		}
	}
}

// stableHealthChecks is how many health checks, a second apart, must pass in
// a row before the object store counts as healthy.
const stableHealthChecks = 3

// healthCheck returns "" when healthy, else what is wrong.
func (c *cutoverStep) healthCheck(ctx context.Context, r *engine.Run, a *aistorConnection, admin *madmin.AdminClient, nodes int, want string) string {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := admin.ServerInfo(cctx)
	if err != nil {
		return fmt.Sprintf("server info: %v", err)
	}
	var offline []string
	for _, s := range info.Servers {
		if s.State != string(madmin.ItemOnline) {
			offline = append(offline, s.Endpoint+" "+s.State)
			continue
		}
		for _, d := range s.Disks {
			if d.State != madmin.DriveStateOk {
				offline = append(offline, fmt.Sprintf("%s drive %s %s", s.Endpoint, d.DrivePath, d.State))
			}
		}
	}
	if len(offline) > 0 {
		sort.Strings(offline)
		return "node(s) not online: " + strings.Join(offline, ", ")
	}
	if len(info.Servers) < nodes {
		return fmt.Sprintf("%d of %d nodes report", len(info.Servers), nodes)
	}
	if why := c.clusterWritable(cctx, r, a); why != "" {
		return why
	}
	st, err := admin.KMSStatus(cctx)
	if err != nil {
		return fmt.Sprintf("KMS status: %v", err)
	}
	if st.Name != want {
		return fmt.Sprintf("KMS status names %q, not %q", st.Name, want)
	}
	for ep, state := range st.Endpoints {
		if state != madmin.ItemOnline {
			return fmt.Sprintf("KMS endpoint %s is %s", ep, state)
		}
	}
	ks, err := admin.GetKeyStatus(cctx, st.DefaultKeyID)
	if err != nil {
		return fmt.Sprintf("status of default key %q: %v", st.DefaultKeyID, err)
	}
	if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
		return fmt.Sprintf("default key %q fails its round trip: %s %s", st.DefaultKeyID, ks.EncryptionErr, ks.DecryptionErr)
	}
	return ""
}

// clusterWritable asks MinIO's cluster health check (/minio/health/cluster:
// 200 once the erasure sets have write quorum). Nodes restarted together
// find each other's drives only at their next reconnect, so "online" alone
// does not mean writable.
func (c *cutoverStep) clusterWritable(ctx context.Context, r *engine.Run, a *aistorConnection) string {
	tlsCfg, err := tlsConfig(r, a.cfg.CAFile, a.cfg.Insecure)
	if err != nil {
		return err.Error()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsCfg
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(a.Endpoint(), "/")+"/minio/health/cluster", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Sprintf("cluster health: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("the cluster has no write quorum yet (/minio/health/cluster: %s)", resp.Status)
	}
	return ""
}

// validate reads back the named objects, a sample of every bucket (or all
// objects) and checks every bucket's encryption configuration.
func (c *cutoverStep) validate(ctx context.Context, r *engine.Run, e *cutoverEnv) (int, error) {
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return 0, err
	}
	var objects [][2]string
	for _, o := range c.cfg.ValidateObjects {
		b, k, _ := strings.Cut(o, "/")
		objects = append(objects, [2]string{b, k})
	}
	buckets, err := s3.ListBuckets(ctx)
	if err != nil {
		return 0, fmt.Errorf("list buckets: %w", err)
	}
	for _, b := range buckets {
		n := 0
		lctx, cancel := context.WithCancel(ctx)
		for obj := range s3.ListObjects(lctx, b.Name, minio.ListObjectsOptions{Recursive: true}) {
			if obj.Err != nil {
				cancel()
				return 0, fmt.Errorf("list objects of %s: %w", b.Name, obj.Err)
			}
			if !c.cfg.ValidateAll && n >= e.sample {
				break
			}
			objects = append(objects, [2]string{b.Name, obj.Key})
			n++
		}
		cancel()
		cfg, err := s3.GetBucketEncryption(ctx, b.Name)
		if err != nil {
			if minio.ToErrorResponse(err).Code == "ServerSideEncryptionConfigurationNotFoundError" {
				continue
			}
			return 0, fmt.Errorf("read encryption configuration of bucket %s: %w", b.Name, err)
		}
		for _, rule := range cfg.Rules {
			if id := strings.TrimPrefix(rule.Apply.KmsMasterKeyID, "arn:aws:kms:"); id != "" {
				ks, err := admin.GetKeyStatus(ctx, id)
				if err != nil {
					return 0, fmt.Errorf("bucket %s's encryption key %q: %w", b.Name, id, err)
				}
				if ks.EncryptionErr != "" || ks.DecryptionErr != "" {
					return 0, fmt.Errorf("bucket %s's encryption key %q fails its round trip: %s %s", b.Name, id, ks.EncryptionErr, ks.DecryptionErr)
				}
			}
		}
	}
	seen := map[[2]string]bool{}
	var failed []string
	total := int64(len(objects))
	for i, o := range objects {
		if seen[o] {
			continue
		}
		seen[o] = true
		if err := readObjectFully(ctx, s3, o[0], o[1]); err != nil {
			failed = append(failed, fmt.Sprintf("%s/%s: %v", o[0], o[1], err))
		}
		r.Progress(int64(i+1), total)
	}
	if len(failed) > 0 {
		if len(failed) > 10 {
			failed = append(failed[:10], fmt.Sprintf("and %d more", len(failed)-10))
		}
		return 0, fmt.Errorf("%d object(s) do not read back: %s", len(failed), strings.Join(failed, "; "))
	}
	return len(seen), nil
}

func readObjectFully(ctx context.Context, s3 *minio.Client, bucket, key string) error {
	obj, err := s3.GetObject(ctx, bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return err
	}
	defer obj.Close()
	_, err = io.Copy(io.Discard, obj)
	return err
}

func (c *cutoverStep) Rollback(ctx context.Context, r *engine.Run) error {
	e, err := c.resolve(r)
	if err != nil {
		return err
	}
	defer e.pool.close()
	if e.a.Platform() == "kubernetes" {
		return c.rollbackKubernetes(ctx, r, e)
	}
	g := cutoverGen(r)
	if g > 0 && len(e.nodes) > 0 && !r.HasCheckpoint(cutoverItem(g, "backup/"+e.nodes[0].Name)) {
		// The last attempt was rolled back automatically and none was begun since.
		g--
		if files, err := c.readAll(ctx, r, e); err == nil {
			all := true
			for _, f := range files {
				if b, ok := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+f.node.Name)); ok && f.sum != b.Original {
					all = false
				}
			}
			if all {
				r.Logf("already rolled back when the cutover failed: every node has its original env file")
				return nil
			}
		}
	}
	return c.rollback(ctx, r, e, g)
}

// rollback restores attempt g's backups, restarts if the nodes were
// restarted, and confirms AIStor reads through KES again. It refuses when
// objects were written after the restart, unless forced.
func (c *cutoverStep) rollback(ctx context.Context, r *engine.Run, e *cutoverEnv, g int) error {
	var backups []cutoverBackup
	var nodes []*envNode
	for _, n := range e.nodes {
		if b, ok := cutoverCheckpoint[cutoverBackup](r, cutoverItem(g, "backup/"+n.Name)); ok {
			backups = append(backups, b)
			nodes = append(nodes, n)
		}
	}
	if len(backups) == 0 {
		r.Logf("nothing to undo: no env file was backed up or changed")
		return nil
	}
	rs, restarted := cutoverCheckpoint[cutoverRestart](r, cutoverItem(g, "restart"))
	if restarted {
		if err := c.checkNoNewWrites(ctx, r, e, g, rs.At); err != nil {
			return err
		}
	}
	// Every file must be the original or the edited one before any is touched.
	type todo struct {
		n    *envNode
		b    cutoverBackup
		data []byte
	}
	var work []todo
	for i, n := range nodes {
		b := backups[i]
		data, _, err := n.read(ctx, r)
		if err != nil {
			return err
		}
		switch envSHA256(data) {
		case b.Original:
			r.Logf("%s already has its original content", n.Name)
		case b.New:
			orig, err := c.readBackup(r, b)
			if err != nil {
				return err
			}
			work = append(work, todo{n, b, orig})
		default:
			return engine.Refusef("env file %s changed after the cutover edited it (sha256 %s; the cutover wrote %s): restoring the backup would discard that change; compare it with the backup %s in the journal dir's backups/ and restore it by hand", n.Name, envSHA256(data), b.New, b.Backup)
		}
	}
	for _, w := range work {
		if err := w.n.write(ctx, r, w.data, fileMeta{Mode: w.b.Mode, UID: w.b.UID, GID: w.b.GID}); err != nil {
			return err
		}
		r.Logf("restored %s (sha256 %s)", w.n.Name, w.b.Original)
	}
	if !restarted {
		r.Logf("the nodes were not restarted by the cutover: restoring the files is all")
		return nil
	}
	if err := c.restartAll(ctx, r, e); err != nil {
		return fmt.Errorf("restart after restoring the env files: %w", err)
	}
	if err := c.waitHealthy(ctx, r, e, kmsNameKES); err != nil {
		return fmt.Errorf("after restoring the env files: %w", err)
	}
	n, err := c.validate(ctx, r, e)
	if err != nil {
		return fmt.Errorf("after restoring the env files: %w", err)
	}
	r.Logf("AIStor reports %s again; %d object(s) read back", kmsNameKES, n)
	return nil
}

// checkNoNewWrites refuses a rollback once the object store may hold data
// sealed by the Key Manager: any bucket created or object version written
// since the restart began. With rollback --force it lists them and goes on.
func (c *cutoverStep) checkNoNewWrites(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, since time.Time) error {
	_, s3, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	var found []string
	buckets, err := s3.ListBuckets(ctx)
	if err == nil {
	outer:
		for _, b := range buckets {
			if b.CreationDate.After(since) {
				found = append(found, b.Name+"/ (bucket created)")
			}
			lctx, cancel := context.WithCancel(ctx)
			for obj := range s3.ListObjects(lctx, b.Name, minio.ListObjectsOptions{Recursive: true, WithVersions: true}) {
				if obj.Err != nil {
					err = fmt.Errorf("list objects of %s: %w", b.Name, obj.Err)
					cancel()
					break outer
				}
				if obj.LastModified.After(since) {
					found = append(found, b.Name+"/"+obj.Key)
				}
			}
			cancel()
		}
	}
	if err != nil {
		if r.HasCheckpoint(cutoverItem(g, "healthy")) && !r.Forced() {
			return engine.Refusef("cannot list the object store to check for objects written after the cutover's restart at %s (%v): KES may not read what the Key Manager sealed, so the rollback stops; bring the object store up and run rollback again, or force it with runbook rollback --force", since.Format(time.RFC3339), err)
		}
		r.Warnf("cannot list the object store (%v); it never became healthy on the Key Manager after the restart at %s, so nothing can have been sealed by it: rolling back", err, since.Format(time.RFC3339))
		return nil
	}
	if len(found) == 0 {
		r.Logf("no object was written and no bucket created since the restart at %s", since.Format(time.RFC3339))
		return nil
	}
	sort.Strings(found)
	found = dedupeSorted(found)
	shown := found
	if len(shown) > 50 {
		shown = append(append([]string(nil), found[:50]...), fmt.Sprintf("and %d more", len(found)-50))
	}
	msg := fmt.Sprintf("the object store was written after the cutover's restart at %s, so the Key Manager may have sealed data that KES cannot read: %s", since.Format(time.RFC3339), strings.Join(shown, ", "))
	if r.Forced() {
		r.Warnf("rolling back although %s (forced)", msg)
		return nil
	}
	return engine.Refusef("%s. Rolling back would make those objects unreadable: copy them off (and write them again after the rollback) first, or force it with runbook rollback --force", msg)
}

func dedupeSorted(sorted []string) []string {
	out := sorted[:0]
	for i, s := range sorted {
		if i == 0 || s != sorted[i-1] {
			out = append(out, s)
		}
	}
	return out
}

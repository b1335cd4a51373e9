package steps

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"aead.dev/mtls"
	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:        "cutover",
		Kind:        engine.KindStep,
		New:         func() engine.Block { return &cutoverStep{} },
		Outputs:     map[string]cty.Type{"restarted_at": cty.String, "kms": cty.String, "unavailable_seconds": cty.Number},
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
	// ExcludeObjects leaves objects that already do not read (a fault that
	// predates the cutover) out of the sample; the plan records them.
	ExcludeObjects  []string `hcl:"exclude_objects,optional"`
	SamplePerBucket *int     `hcl:"sample_per_bucket,optional"`
	ValidateAll     bool     `hcl:"validate_all,optional"`
	OnFailure       string   `hcl:"on_failure,optional"`
	// InstallCA installs the Key Manager's CA (its key_manager block's
	// ca_file) into the certs/CAs of every node that does not trust the
	// Key Manager yet; rollback removes it again.
	InstallCA   bool   `hcl:"install_ca,optional"`
	WaitTimeout string `hcl:"wait_timeout,optional"`
}

// cutoverStep moves a running AIStor deployment from KES to the Key Manager
// (README.md, "The cutover"; docs/domain.md, "MinIO"). Its files, by concern:
// cutover_plan.go observes and plans (the KMS facts, the refusals before
// any change), cutover_keys.go the keys the enclave must hold and the proof
// of the API key the nodes will use, cutover_sample.go chooses, proves and
// re-reads the object sample, cutover_apply.go runs an attempt,
// cutover_health.go restarts and confirms (one routine for both
// directions), cutover_rollback.go undoes, cutover_items.go names the
// checkpoints. Where the nodes' environment
// lives and how they restart is the platform's (cutover_platform.go): env
// files on hosts (cutover_linux.go, cutover_systemd.go) or Kubernetes
// (cutover_kubernetes.go).
//
// Apply is idempotent: the Key Manager settings are checkpointed before
// an attempt's first change, and the platform checkpoints every node's
// backup and intent before it writes, so a resume recognises an edited
// node and never edits it twice; the restart is checkpointed before it
// begins and each later phase once done, so that a resume or a rollback
// restarts nothing already restarted and confirmed, and a rollback knows
// since when the Key Manager may have sealed data. When an attempt was
// rolled back automatically, a resume starts a new attempt whose items
// carry the prefix "gN/"; when that automatic rollback stopped part-way, a
// resume finishes it first.
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
	diags = append(diags, requireNonEmpty(d, "api_key", c.cfg.APIKey, "api_key is the Key Manager API key the nodes will use (MINIO_KMS_API_KEY), k1:…, usually identity.NAME.api_key.")...)
	if c.cfg.APIKey != "" {
		if _, err := mtls.ParsePrivateKey(c.cfg.APIKey); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid Key Manager API key", Detail: "api_key must be a Key Manager API key, k1:… (as an identity block's api_key output or minkms add-identity gives it): MinIO parses MINIO_KMS_API_KEY at start-up and exits on any other value (MinIO internal/kms config.go).", Subject: d.AttrRange("api_key")})
		}
	}
	if c.cfg.SamplePerBucket != nil && *c.cfg.SamplePerBucket < 0 {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid sample_per_bucket", Detail: "sample_per_bucket is how many objects of every bucket are read back after the restart; it cannot be negative.", Subject: d.AttrRange("sample_per_bucket")})
	}
	for attr, list := range map[string][]string{"validate_objects": c.cfg.ValidateObjects, "exclude_objects": c.cfg.ExcludeObjects} {
		if d.Unknown(attr) {
			continue
		}
		for _, o := range list {
			if b, obj, ok := strings.Cut(o, "/"); !ok || b == "" || obj == "" {
				diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid object name", Detail: fmt.Sprintf("%q: name each object of %s as \"bucket/object\".", o, attr), Subject: d.AttrRange(attr)})
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
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "No env files to cut over", Detail: "The cutover edits every node's environment file: list them on the aistor block, ssh://user@host[:port]/path files in env_files (matched to the servers by host), local files in nodes = { \"HOST:PORT\" = { env_file = \"PATH\" } } (a single-server store may list its one local file in env_files), or set platform = \"kubernetes\".", Subject: d.AttrRange("aistor")})
	}
	for _, f := range a.EnvFiles() {
		if _, err := parseEnvNode(f); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid env file", Detail: err.Error() + ".", Subject: d.AttrRange("aistor")})
		}
	}
	if c.cfg.InstallCA && a.Platform() != "kubernetes" {
		if k, err := enclaveFrom(c.cfg.Enclave); err == nil && k.KM.cfg.CAFile == "" && !d.Unknown("enclave") {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "install_ca without a CA", Detail: fmt.Sprintf("install_ca installs the Key Manager's CA certificate (the ca_file of %s) into each node's certs/CAs, and that block names no ca_file: set it to the CA that signed the Key Manager's certificate.", k.Addr), Subject: d.AttrRange("install_ca")})
		}
	}
	if a.RestartMode() == "rolling" {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Rolling restart cannot cut over", Detail: rollingReason(hostsOf(a.EnvFiles())) + " Set restart = \"systemd\" or restart = \"command\" on the aistor block: every node restarts at once and S3 clients retry.", Subject: d.AttrRange("aistor")})
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
	plat     cutoverPlatform
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
	target := kmTarget{Endpoints: enc.KM.Endpoints(), CAFile: enc.KM.cfg.CAFile, InstallCA: c.cfg.InstallCA}
	if e.plat, err = newCutoverPlatform(a, target, e.wait); err != nil {
		return nil, err
	}
	return e, nil
}

// refuseAdmin explains why the documented restart cannot be used.
func refuseAdmin() error {
	return engine.Refusef("restart = \"admin\" cannot carry out this cutover: the admin (mc admin service) restart re-executes MinIO with its old environment, which still holds the MINIO_KMS_KES_* variables, and re-reads the env file only additively, so MinIO stops with \"kms: configuration for MinIO KMS and MinIO KES is present\" (FATAL) and the object store is down (MinIO cmd/service.go restartProcess). Use restart = \"systemd\" (systemctl restart minio on every node) or restart = \"command\" with a restart_command that fully stops and starts the MinIO process")
}

// rollingReason explains why no rolling restart can carry the cutover
// (docs/domain.md, "Restarting a cluster"), for a deployment on h distinct hosts.
func rollingReason(h int) string {
	wave := (h + 1) / 2
	return fmt.Sprintf("At start-up each MinIO node waits until at least ⌊(H−1)/2⌋ other hosts report an identical MINIO_* environment, and the KES-era and Key Manager-era variables can never be set together: a node restarted into the Key Manager era waits for peers that are still on KES. So no node-by-node restart can pass; the smallest first wave is ⌈H/2⌉ hosts (%d of these %d), which already stops writes on any evenly spread erasure set.", wave, h)
}

// hostsOf counts the hosts of env_files (H of docs/domain.md, "Restarting a cluster"): each ssh
// host, and this host for local files.
func hostsOf(files []string) int {
	hosts := map[string]bool{}
	for _, f := range files {
		if n, err := parseEnvNode(f); err == nil && n.Remote() {
			hosts[n.Host] = true
		} else {
			hosts[""] = true
		}
	}
	return len(hosts)
}

// refuseRestartMode refuses the restart modes that cannot carry out a
// cutover.
func refuseRestartMode(a *aistorConnection) error {
	switch a.RestartMode() {
	case "admin":
		return refuseAdmin()
	case "rolling":
		return engine.Refusef("restart = \"rolling\" cannot carry out this cutover: %s Use restart = \"systemd\" or \"command\"", rollingReason(hostsOf(a.EnvFiles())))
	case "":
		return errors.New("the aistor block sets no restart mode: set restart = \"systemd\" or \"command\"")
	}
	return nil
}

// kmsSettings is the Key Manager configuration every node gets, less the
// API key: what the cutover checkpoints before an attempt's first change
// (settingsItem), so that a resume writes exactly the same environment.
type kmsSettings struct {
	Server  string `json:"server"`
	Enclave string `json:"enclave"`
	SSEKey  string `json:"sse_key"`
}

// env is the nodes' new MINIO_KMS_* variables, with apiKey.
func (k kmsSettings) env(apiKey string) map[string]string {
	return map[string]string{
		"MINIO_KMS_SERVER":  k.Server,
		"MINIO_KMS_ENCLAVE": k.Enclave,
		"MINIO_KMS_API_KEY": apiKey,
		"MINIO_KMS_SSE_KEY": k.SSEKey,
	}
}

func (e *cutoverEnv) settings(sseKey string) kmsSettings {
	return kmsSettings{Server: strings.Join(e.enc.KM.Endpoints(), ","), Enclave: e.enc.Name, SSEKey: sseKey}
}

func quoteArgvList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, " ") + "]"
}

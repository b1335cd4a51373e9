package steps

import (
	"context"
	"fmt"
	"sort"
	"strings"

	kes "github.com/minio/kes-go"
	"github.com/minio/madmin-go/v3"

	"github.com/runbook-dev/runbook/engine"
)

func (c *cutoverStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	e, err := c.resolve(r)
	if err != nil {
		return nil, err
	}
	defer e.plat.Close()
	p := &engine.StepPlan{ItemsLabel: "env files to edit"}
	if err := c.refuseOnKeyManager(ctx, r, e, nil); err != nil {
		return nil, err
	}
	v, err := e.plat.Observe(ctx, r)
	if err != nil {
		return nil, err
	}
	p.Observed = append(p.Observed, v.Observed...)
	p.Risks = append(p.Risks, v.Risks...)
	store, err := c.objectStore(ctx, r, e)
	if err != nil {
		return nil, err
	}
	p.Changes = append(p.Changes, store...)
	if len(store) == 0 {
		p.Risks = append(p.Risks, "the object store reports no deployment ID (admin info): a fleet cannot tell whether another of its deployments reaches this same store by another URL")
	}
	f, err := c.observeKMS(ctx, r, e, v)
	if err != nil {
		return nil, err
	}
	apiKey := c.cfg.APIKey
	if apiKey == "" || r.Decoded.Unknown("api_key") {
		apiKey = "(known after apply)"
	}
	set := e.settings(f.sseKey).env(apiKey)
	state, err := e.plat.PlanChange(r, set, p)
	if err != nil {
		return nil, err
	}
	if f.statusNote != "" {
		p.Observed = append(p.Observed, f.statusNote)
		p.Risks = append(p.Risks, fmt.Sprintf("the object store does not report its KMS status (see above): the default key is taken from the env files (%q), and after the restart the cutover cannot confirm that the object store reports the Key Manager until its identity may read the status", f.envKey))
	} else {
		p.Observed = append(p.Observed, fmt.Sprintf("AIStor reports KMS %q, default key %q, endpoints %s", f.name, f.defaultKey, formatKMSEndpoints(f.endpoints)))
	}
	p.Observed = append(p.Observed, fmt.Sprintf("MINIO_KMS_SSE_KEY will be %q, the default key the object store runs with today; the enclave must hold it before any file is changed", f.sseKey))
	risk, err := c.checkCutoverAccess(ctx, r, e, f.sseKey)
	if err != nil {
		return nil, err
	}
	if risk != "" {
		p.Risks = append(p.Risks, risk)
	}
	sample, err := c.chooseSample(ctx, r, e)
	if err != nil {
		return nil, err
	}
	if err := c.proveSample(ctx, r, e, sample, f.sseKey); err != nil {
		return nil, err
	}
	p.Observed = append(p.Observed, sample.lines()...)
	keys, risk, err := c.planKeys(ctx, r, e, append([]neededKey{defaultKeyNeed(f.sseKey)}, sampleKeyNeeds(sample, f.sseKey)...))
	if err != nil {
		return nil, err
	}
	p.Observed = append(p.Observed, keys...)
	if risk != "" {
		p.Risks = append(p.Risks, risk)
	}
	if risk := rootAccessRisk(v.Env); risk != "" {
		p.Risks = append(p.Risks, risk)
	}
	if risk := c.iamPlanRisk(ctx, r, e); risk != "" {
		p.Risks = append(p.Risks, risk)
	}
	c.planAfterRestart(p, e, f.sseKey)
	state["sample"], state["sse_key"] = sample, f.sseKey
	p.State = state
	return p, nil
}

// planAfterRestart adds what the cutover waits for after the restart, what
// it does on failure and what it verifies, with sseKey the default key.
func (c *cutoverStep) planAfterRestart(p *engine.StepPlan, e *cutoverEnv, sseKey string) {
	p.Actions = append(p.Actions, fmt.Sprintf("wait up to %s until every node is online, AIStor's KMS status names the Key Manager (%s) with its endpoints online, and the default key %q passes a key status check", e.wait, kmsNameKeyManager, sseKey))
	p.Actions = append(p.Actions, c.validateAction(e))
	if e.onFail == "rollback" {
		p.Actions = append(p.Actions, "on failure: restore the original environment, restart and confirm objects read through KES again (on_failure = \"rollback\")")
	} else {
		p.Actions = append(p.Actions, "on failure: stop and leave the nodes as they are (on_failure = \"stop\"); runbook rollback restores them")
	}
	p.Verification = []string{
		fmt.Sprintf("every node online and AIStor's KMS status names %q with every endpoint online", kmsNameKeyManager),
		fmt.Sprintf("the default key %q passes AIStor's key status check (generate + decrypt)", sseKey),
		c.validateAction(e),
	}
}

// objectStore is the object store the cutover changes, named by the
// deployment ID its servers report (madmin ServerInfo: MinIO keeps it in
// the drives' format.json, the same on every server and across restarts),
// so that a fleet can tell two deployments that reach one object store by
// different URLs. None when the server reports no ID.
func (c *cutoverStep) objectStore(ctx context.Context, r *engine.Run, e *cutoverEnv) ([]engine.Resource, error) {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	info, err := admin.ServerInfo(cctx)
	if err != nil {
		return nil, fmt.Errorf("read the object store's deployment ID (admin server info): %w", err)
	}
	if info.DeploymentID == "" {
		return nil, nil
	}
	return []engine.Resource{{Kind: "MinIO deployment", ID: info.DeploymentID, Via: e.a.cfg.Endpoint}}, nil
}

func (c *cutoverStep) validateAction(e *cutoverEnv) string {
	what := fmt.Sprintf("%d SSE-S3 or SSE-KMS object(s) of every bucket that has any", e.sample)
	if c.cfg.ValidateAll {
		what = "every SSE-S3 and SSE-KMS object of every bucket"
	}
	if len(c.cfg.ValidateObjects) > 0 {
		what = strings.Join(c.cfg.ValidateObjects, ", ") + " and " + what
	}
	return "read back the object sample recorded before the change, byte for byte against its SHA-256 (a HEAD proves nothing for SSE): " + what + ", and check every bucket's encryption configuration still resolves at the KMS"
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

// kmsFacts is what the object store and the env files say of the KMS the
// object store runs with today.
type kmsFacts struct {
	name       string // MinIO's KMS status: "MinIO KES", …; "" when it cannot report it
	defaultKey string // the default key the running object store reports
	envKey     string // MINIO_KMS_KES_KEY_NAME of the env files
	sseKey     string // MINIO_KMS_SSE_KEY the files will get
	statusNote string // why the KMS status is missing, when it is
	endpoints  map[string]madmin.ItemState
}

// observeKMS reads MinIO's KMS status and the env files' default key and
// refuses, before anything changes, when MINIO_KMS_SSE_KEY would differ
// from the default key the object store runs with (docs/domain.md, "What MinIO asks of the Key Manager": MinIO
// creates a missing default key at start-up and seals new data with it),
// or when that key cannot be known at all.
func (c *cutoverStep) observeKMS(ctx context.Context, r *engine.Run, e *cutoverEnv, v *platformView) (*kmsFacts, error) {
	env := v.Env
	f := &kmsFacts{envKey: env["MINIO_KMS_KES_KEY_NAME"]}
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	st, serr := admin.KMSStatus(cctx)
	cancel()
	if serr == nil {
		f.name, f.defaultKey, f.endpoints = st.Name, st.DefaultKeyID, st.Endpoints
	} else {
		f.statusNote = kmsStatusRefusal(r, serr, env)
		if f.envKey == "" {
			return nil, engine.Refusef("%s; and the env files set no MINIO_KMS_KES_KEY_NAME, so the default key the object store runs with cannot be known: add /v1/status to that identity's policy at KES and plan again", f.statusNote)
		}
	}
	if err := c.refuseOnKeyManager(ctx, r, e, env); err != nil {
		return nil, err
	}
	if f.defaultKey != "" && f.envKey != "" && f.envKey != f.defaultKey {
		if where, files := v.envSource("MINIO_KMS_KES_KEY_NAME"); !files {
			// Kubernetes: the resource was edited and its pods not restarted
			// on it (updateStrategy OnDelete, or an operator that rewrites
			// the config file without a restart).
			return nil, engine.Refusef("%s sets MINIO_KMS_KES_KEY_NAME=%q, but the running object store reports the default key %q: it was changed since the pods started, and they were not restarted on it; after the restart they would seal new data under %q. Make it name the key MinIO runs with (%q), or restart the pods on it first, and plan again (nothing was changed, no pod restarted)", where, f.envKey, f.defaultKey, f.envKey, f.defaultKey)
		}
		return nil, engine.Refusef("the env files set MINIO_KMS_KES_KEY_NAME=%q, but the running object store reports the default key %q: the files were changed since MinIO started, or it reads its environment elsewhere; after the restart it would seal new data under %q. Make the files name the key MinIO runs with (%q), or restart MinIO on the files first, and plan again", f.envKey, f.defaultKey, f.envKey, f.defaultKey)
	}
	running := f.defaultKey
	if running == "" {
		running = f.envKey
	}
	f.sseKey = c.cfg.SSEKey
	if f.sseKey == "" {
		f.sseKey = running
	}
	if f.sseKey == "" {
		return nil, engine.Refusef("the object store reports no default key and the env files set no MINIO_KMS_KES_KEY_NAME: set sse_key on the cutover block to the key MinIO's SSE-S3 data is sealed with")
	}
	if f.sseKey != running {
		src := "the default key the running object store reports"
		if f.defaultKey == "" {
			src = "the default key the env files name (MINIO_KMS_KES_KEY_NAME)"
		}
		return nil, engine.Refusef("sse_key %q differs from %s, %q: MINIO_KMS_SSE_KEY must name the key the object store runs with today, or MinIO creates %q in the enclave at start-up and seals new data under a key KES never had. Set sse_key = %q, or leave it out", f.sseKey, src, running, f.sseKey, running)
	}
	return f, nil
}

// refuseOnKeyManager refuses, before anything changes, an object store that
// runs on a Key Manager already, or whose environment already names one
// (the env files, when env is given; each server's own environment, which
// ServerInfo shows): it was cut over before, by hand or by another run, and
// importing keys into another enclave and editing the files again would
// only fail later (issue 16, input 8). It names the Key Manager and the
// enclave the nodes use.
func (c *cutoverStep) refuseOnKeyManager(ctx context.Context, r *engine.Run, e *cutoverEnv, env map[string]string) error {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	var found []string
	if env != nil {
		if srv := env["MINIO_KMS_SERVER"]; srv != "" {
			found = append(found, fmt.Sprintf("the env files set MINIO_KMS_SERVER=%s and MINIO_KMS_ENCLAVE=%s", srv, env["MINIO_KMS_ENCLAVE"]))
		}
	} else {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		if st, err := admin.KMSStatus(cctx); err == nil && st.Name == kmsNameKeyManager {
			found = append(found, fmt.Sprintf("its KMS status names %q (endpoints %s, default key %q)", st.Name, formatKMSEndpoints(st.Endpoints), st.DefaultKeyID))
		}
		if info, err := admin.ServerInfo(cctx); err == nil {
			for _, s := range info.Servers {
				if srv := s.MinioEnvVars["MINIO_KMS_SERVER"]; srv != "" {
					found = append(found, fmt.Sprintf("server %s runs with MINIO_KMS_SERVER=%s, MINIO_KMS_ENCLAVE=%s", s.Endpoint, srv, s.MinioEnvVars["MINIO_KMS_ENCLAVE"]))
				}
			}
		}
	}
	if len(found) == 0 {
		return nil
	}
	return engine.Refusef("the object store already runs on a Key Manager: %s. It was cut over before (by hand or by another run): there is nothing to cut over from KES, and this runbook would import every key into enclave %s for nothing. Nothing was changed; if that Key Manager and enclave are the ones meant, drop the migration and cutover from this runbook", strings.Join(found, "; "), e.enc.Name)
}

// kmsStatusRefused reports whether MinIO's KMS status call failed because
// KES refused the status path to MinIO's identity (madmin passes KES's
// "insufficient permissions" through).
func kmsStatusRefused(err error) bool {
	low := strings.ToLower(err.Error())
	return strings.Contains(low, "insufficient permissions") || strings.Contains(low, "not authorized") || strings.Contains(low, "forbidden")
}

// kmsStatusRefusal says precisely why MinIO could not report its KMS
// status. MinIO's status call asks KES /v1/status with MinIO's own KES
// identity, which may encrypt and decrypt and still lack that path
// (docs/domain.md, "KES identities and policies").
func kmsStatusRefusal(r *engine.Run, err error, env map[string]string) string {
	msg := r.Redact(err.Error())
	if !kmsStatusRefused(err) {
		return fmt.Sprintf("the object store cannot report its KMS status (%s)", msg)
	}
	who := "MinIO's KES identity"
	if k := env["MINIO_KMS_KES_API_KEY"]; k != "" {
		r.AddSecret(k)
		if key, perr := kes.ParseAPIKey(k); perr == nil {
			who = fmt.Sprintf("MinIO's KES identity %s (from MINIO_KMS_KES_API_KEY in the env files)", key.Identity())
		}
	} else if cf := env["MINIO_KMS_KES_CERT_FILE"]; cf != "" {
		who = fmt.Sprintf("MinIO's KES identity (the certificate %s, MINIO_KMS_KES_CERT_FILE)", cf)
	}
	next := "the env files name no default key (MINIO_KMS_KES_KEY_NAME)"
	if name := env["MINIO_KMS_KES_KEY_NAME"]; name != "" {
		next = fmt.Sprintf("or go on with the default key the env files name, MINIO_KMS_KES_KEY_NAME=%q", name)
	}
	return fmt.Sprintf("the object store cannot report its KMS status: KES refuses /v1/status to %s (%s), although that identity encrypts and decrypts; add /v1/status to the allow list of its policy in the KES config, %s", who, msg, next)
}

// rootAccessRisk is the plan's risk line when the env file turns root
// access off without root credentials: MinIO then derives its root
// credentials from a KMS HMAC (docs/domain.md, "MinIO restart"), which the Key Manager
// connection does not offer. "" when there is no such risk.
func rootAccessRisk(env map[string]string) string {
	if !strings.EqualFold(env["MINIO_API_ROOT_ACCESS"], "off") || env["MINIO_ROOT_USER"] != "" {
		return ""
	}
	return "MINIO_API_ROOT_ACCESS=off and no MINIO_ROOT_USER: MinIO derives its root credentials from a KMS HMAC, which the Key Manager connection does not offer, so after the cutover it falls back to the active or the default credentials. Set MINIO_ROOT_USER and MINIO_ROOT_PASSWORD in the env files before the cutover"
}

// kmsStatusRisk is the plan's risk line when the object store does not
// report its KMS status (prerequisites; the cutover's plan names the
// identity from the env files).
func kmsStatusRisk(r *engine.Run, err error) string {
	why := kmsStatusRefusal(r, err, nil)
	if strings.Contains(why, "refuses /v1/status") {
		return "the object store cannot report its KMS status: KES refuses /v1/status to MinIO's KES identity (the one whose API key is MINIO_KMS_KES_API_KEY in the nodes' env files; the cutover's plan names it), although it encrypts and decrypts; add /v1/status to the allow list of that identity's policy in the KES config, or the cutover goes on with the default key the env files name (MINIO_KMS_KES_KEY_NAME)"
	}
	return why + ": confirm it uses KES before the cutover"
}

// endpointTLSNote says how an endpoint's connection is protected: "TLS
// verified" only for https:// with verification on.
func endpointTLSNote(endpoint string, insecure bool) string {
	if !strings.HasPrefix(strings.ToLower(endpoint), "https://") {
		return "plain HTTP (no TLS: credentials and data cross the network unencrypted)"
	}
	return "TLS verified" + insecureNote(insecure)
}

package steps

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/minio/kms-go/kms"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/keystore"
)

func init() {
	engine.Register(engine.BlockType{
		Name:    "enclave",
		Kind:    engine.KindStep,
		New:     func() engine.Block { return &enclaveStep{} },
		Outputs: enclaveOutputs,
		Doc:     "a Key Manager enclave: created, or an existing empty one adopted",
	})
}

// The enclave step's durable state: every checkpoint it records.
var (
	// enclaveCreateIntent: about to create the enclave (durable before the
	// side effect, so that rollback finds what a crash left).
	enclaveCreateIntent = engine.NewItem[enclaveRecord]("create-intent")
	// enclaveCreated: this run created the enclave.
	enclaveCreated = engine.NewItem[enclaveRecord]("created")
	// enclaveAdopted: the enclave existed and was adopted; never deleted.
	enclaveAdopted = engine.NewItem[enclaveRecord]("adopted")
	// enclaveDeleted: rollback deleted the enclave this run created. Until
	// the rollback completes, enclaveCreated stays beside it.
	enclaveDeleted = engine.NewItem[enclaveRecord]("rollback/deleted")
)

var (
	_ engine.Step       = (*enclaveStep)(nil)
	_ engine.Planner    = (*enclaveStep)(nil)
	_ engine.Rollbacker = (*enclaveStep)(nil)
	_ engine.Validator  = (*enclaveStep)(nil)
)

// enclaveStep is the vendor's step 3 (`minkms add-enclave NAME`, "or reuse an
// existing empty one"), with the check the procedure leaves to the operator:
// an enclave that already holds keys is refused, because a migration into it
// would mix the source's keys with keys of unknown origin, and a key of the
// same name would be a conflict found only half-way. Rollback deletes only
// what this run created.
type enclaveStep struct {
	cfg enclaveConfig
}

type enclaveConfig struct {
	KeyManager cty.Value `hcl:"key_manager"`
	Name       string    `hcl:"name"`
	// AdoptNonempty accepts an existing enclave that already holds keys (for
	// example one filled by an earlier run). It is never deleted on rollback.
	AdoptNonempty bool `hcl:"adopt_nonempty,optional"`
}

// enclaveNameRE is what this tool accepts as an enclave name: the same
// characters KES and the Key Manager accept for names.
var enclaveNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,80}$`)

func (e *enclaveStep) Config() any { return &e.cfg }

func (e *enclaveStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	var diags hcl.Diagnostics
	if !d.Unknown("key_manager") {
		if _, _, err := engine.ConnectionFrom[*keyManagerConnection](e.cfg.KeyManager, "key_manager"); err != nil {
			diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid key_manager reference", Detail: "key_manager must refer to a key_manager block, for example key_manager = key_manager.target: " + err.Error() + ".", Subject: d.AttrRange("key_manager")})
		}
	}
	if !d.Unknown("name") && !enclaveNameRE.MatchString(e.cfg.Name) {
		diags = append(diags, &hcl.Diagnostic{Severity: hcl.DiagError, Summary: "Invalid enclave name", Detail: fmt.Sprintf("The enclave name %q must be 1 to 80 letters, digits, '-' or '_', for example \"aistor-primary\".", e.cfg.Name), Subject: d.AttrRange("name")})
	}
	return diags
}

// enclaveObservation is what plan and apply find at the Key Manager.
type enclaveObservation struct {
	Enclave string `json:"enclave"`
	Exists  bool   `json:"exists"`
	Keys    int    `json:"keys"`
	// KeySetSHA256 binds the names of the keys an adopted enclave holds.
	KeySetSHA256 string `json:"key_set_sha256,omitempty"`

	names []string
}

func (e *enclaveStep) observe(ctx context.Context, r *engine.Run) (*kms.Client, *enclaveObservation, error) {
	kmc, kmAddr, err := engine.ConnectionFrom[*keyManagerConnection](e.cfg.KeyManager, "key_manager")
	if err != nil {
		return nil, nil, err
	}
	c, err := kmc.Client(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kmAddr, err)
	}
	obs := &enclaveObservation{Enclave: e.cfg.Name}
	// A plan lists the enclave beside its status, in one round trip for
	// both, and keeps the listing for the migration's plan, which comes
	// next and lists the same enclave (planListTarget).
	var listed chan enclavePlanListing
	if r.Planning() {
		listed = make(chan enclavePlanListing, 1)
		go func() {
			names, exists, err := planListTarget(ctx, r, c, e.cfg.Name)
			listed <- enclavePlanListing{names, exists, err}
		}()
	}
	_, err = c.EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: e.cfg.Name})
	var planned enclavePlanListing
	if listed != nil {
		planned = <-listed
	}
	switch {
	case errors.Is(err, kms.ErrEnclaveNotFound):
		return c, obs, nil
	case errors.Is(err, kms.ErrPermission):
		return nil, nil, errKMPermission(kmAddr, kmc, "read enclave status")
	case err != nil:
		return nil, nil, reachError("Key Manager", kmAddr, strings.Join(kmc.Endpoints(), ", "), fmt.Errorf("read status of enclave %s: %w", e.cfg.Name, err))
	}
	obs.Exists = true
	var names []string
	if planned.err == nil && planned.exists {
		for n := range planned.names {
			names = append(names, n)
		}
	} else { // not listed beside the status, or the two disagree: ask again
		names, err = listEnclaveKeys(ctx, c, e.cfg.Name)
	}
	if errors.Is(err, kms.ErrPermission) {
		return nil, nil, errKMPermission(kmAddr, kmc, "list the keys of enclave "+e.cfg.Name)
	}
	if err != nil {
		return nil, nil, err
	}
	slices.Sort(names)
	obs.names, obs.Keys = names, len(names)
	if len(names) > 0 {
		obs.KeySetSHA256 = keySetDigest(names)
	}
	return c, obs, nil
}

// enclavePlanListing is planListTarget's answer.
type enclavePlanListing struct {
	names  map[string]bool
	exists bool
	err    error
}

// refuseNonempty is the error for an enclave that already holds keys.
func (e *enclaveStep) refuseNonempty(obs *enclaveObservation) error {
	return fmt.Errorf("enclave %s already holds %d key(s) (%s): migrate into a new or empty enclave (change name), or set adopt_nonempty = true to use it as it is (it is then never deleted on rollback, and keys of the same name as the source's are conflicts)", e.cfg.Name, obs.Keys, keystore.NameList(obs.names, 5))
}

func (e *enclaveStep) outputs() map[string]cty.Value {
	return map[string]cty.Value{"name": cty.StringVal(e.cfg.Name), "key_manager": e.cfg.KeyManager}
}

// setOutputs gives the run the step's outputs: how every apply ends.
func (e *enclaveStep) setOutputs(r *engine.Run) {
	for k, v := range e.outputs() {
		r.SetOutput(k, v)
	}
}

func (e *enclaveStep) Plan(ctx context.Context, r *engine.Run) (*engine.StepPlan, error) {
	_, obs, err := e.observe(ctx, r)
	if err != nil {
		return nil, err
	}
	p := &engine.StepPlan{State: obs, Outputs: e.outputs()}
	switch {
	case !obs.Exists:
		p.Observed = []string{fmt.Sprintf("enclave %s does not exist", e.cfg.Name)}
		p.Actions = []string{"create enclave " + e.cfg.Name}
		p.Rollback = fmt.Sprintf("delete enclave %s (this run created it), once it holds no keys; refused if it holds keys this run did not remove", e.cfg.Name)
	case obs.Keys == 0:
		p.Observed = []string{fmt.Sprintf("enclave %s exists and holds no keys", e.cfg.Name)}
		p.Actions = []string{"adopt existing empty enclave " + e.cfg.Name}
		p.Rollback = fmt.Sprintf("nothing: enclave %s existed before this run and stays", e.cfg.Name)
	case e.cfg.AdoptNonempty:
		p.Observed = []string{fmt.Sprintf("enclave %s exists and holds %d key(s) (key set SHA-256 %s): %s", e.cfg.Name, obs.Keys, obs.KeySetSHA256[:16], keystore.NameList(obs.names, 5))}
		p.Actions = []string{fmt.Sprintf("adopt existing enclave %s with its %d key(s) (adopt_nonempty = true)", e.cfg.Name, obs.Keys)}
		p.Rollback = fmt.Sprintf("nothing: enclave %s existed before this run and stays", e.cfg.Name)
		p.Risks = []string{fmt.Sprintf("enclave %s already holds %d key(s) that are not from this migration", e.cfg.Name, obs.Keys)}
	default:
		return nil, e.refuseNonempty(obs)
	}
	return p, nil
}

// enclaveRecord is the data of the enclave step's checkpoints.
type enclaveRecord struct {
	Enclave string `json:"enclave"`
	Keys    int    `json:"keys,omitempty"`
	Note    string `json:"note,omitempty"`
}

func (e *enclaveStep) Apply(ctx context.Context, r *engine.Run) error {
	if enclaveAdopted.Done(r) {
		e.setOutputs(r)
		return nil
	}
	c, obs, err := e.observe(ctx, r)
	if err != nil {
		return err
	}
	if enclaveCreated.Done(r) {
		// Judged by the Key Manager, not the journal alone: a rollback of
		// this run killed after deleting the enclave leaves enclaveCreated
		// in the journal, and a resume that trusted it would leave the
		// steps after it an enclave that is not there.
		if obs.Exists {
			e.setOutputs(r)
			return nil
		}
		r.Logf("enclave %s, created by this run, is no longer at the Key Manager (%s): creating it again", e.cfg.Name, goneWhy(enclaveDeleted.Done(r)))
	}
	switch {
	case !obs.Exists:
		// The intent is durable before the side effect, so a crash right
		// after CreateEnclave still lets rollback find what this run made.
		if err := enclaveCreateIntent.Put(r, enclaveRecord{Enclave: e.cfg.Name}); err != nil {
			return err
		}
		note := ""
		if err := c.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: e.cfg.Name}); err != nil {
			if !errors.Is(err, kms.ErrEnclaveExists) {
				return fmt.Errorf("create enclave %s: %w", e.cfg.Name, err)
			}
			// The answer to an earlier try was lost, or someone else made
			// it in between: ours only if it is still empty.
			if _, obs, err = e.observe(ctx, r); err != nil {
				return err
			}
			if obs.Keys > 0 {
				return engine.WithHint(fmt.Errorf("create enclave %s: it appeared meanwhile, holding %d key(s) (%s): another party is using this name", e.cfg.Name, obs.Keys, keystore.NameList(obs.names, 5)), "choose another name")
			}
			note = "existed, empty, at the retry: created by this run's earlier try"
		}
		if err := enclaveCreated.Put(r, enclaveRecord{Enclave: e.cfg.Name, Note: note}); err != nil {
			return err
		}
		r.Logf("created enclave %s", e.cfg.Name)
	case enclaveCreateIntent.Done(r) && obs.Keys == 0:
		// An earlier attempt meant to create it and stopped before recording
		// the result: it exists and is empty, so it is the one it made.
		if err := enclaveCreated.Put(r, enclaveRecord{Enclave: e.cfg.Name, Note: "found, empty, after an interrupted create: created by this run"}); err != nil {
			return err
		}
		r.Logf("enclave %s was created by the interrupted attempt", e.cfg.Name)
	case obs.Keys == 0 || e.cfg.AdoptNonempty:
		if err := enclaveAdopted.Put(r, enclaveRecord{Enclave: e.cfg.Name, Keys: obs.Keys}); err != nil {
			return err
		}
		r.Logf("adopted existing enclave %s (%d key(s)); it is never deleted by rollback", e.cfg.Name, obs.Keys)
	default:
		return e.refuseNonempty(obs)
	}
	e.setOutputs(r)
	return nil
}

// Rollback deletes the enclave only if this run created it and it holds no
// keys: keys this run imported are removed by the migration's rollback,
// which runs first; any key left was put there by someone else. Identities
// this run made are removed by the identity step's rollback; an identity
// left is someone else's, and refuses the delete too.
func (e *enclaveStep) Rollback(ctx context.Context, r *engine.Run) error {
	rec, ok, err := enclaveCreateIntent.Get(r)
	if err != nil {
		return err
	}
	if !ok {
		if adopted, ok, _ := enclaveAdopted.Get(r); ok {
			r.Logf("nothing to undo: enclave %s existed before this run and stays", adopted.Enclave)
			return nil
		}
		r.Logf("nothing to undo: no enclave was created")
		return nil
	}
	name := rec.Enclave
	kmc, kmAddr, err := engine.ConnectionFrom[*keyManagerConnection](e.cfg.KeyManager, "key_manager")
	if err != nil {
		return err
	}
	c, err := kmc.Client(r)
	if err != nil {
		return fmt.Errorf("%s: %w", kmAddr, err)
	}
	_, err = c.EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: name})
	if errors.Is(err, kms.ErrEnclaveNotFound) {
		r.Logf("enclave %s does not exist: nothing to delete", name)
		return nil
	}
	if errors.Is(err, kms.ErrPermission) {
		return errKMPermission(kmAddr, kmc, "read enclave status")
	}
	if err != nil {
		return fmt.Errorf("read status of enclave %s: %w", name, err)
	}
	keys, err := listEnclaveKeys(ctx, c, name)
	if err != nil {
		return err
	}
	if len(keys) > 0 {
		slices.Sort(keys)
		return engine.RefuseWithHint(fmt.Sprintf("move or delete them first, or roll back --to %s to keep the enclave", r.Addr),
			"enclave %s, created by this run, holds %d key(s) this rollback did not remove (%s): deleting it would destroy them", name, len(keys), keystore.NameList(keys, 5))
	}
	ids, err := listEnclaveIdentities(ctx, c, name)
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		return engine.RefuseWithHint(fmt.Sprintf("delete them first, or roll back --to %s to keep the enclave", r.Addr),
			"enclave %s, created by this run, holds %s this rollback did not remove (%s): deleting it would lock them out", name, plural(len(ids), "identity", "identities"), keystore.NameList(ids, 5))
	}
	if err := c.DeleteEnclave(ctx, &kms.DeleteEnclaveRequest{Name: name}); err != nil && !errors.Is(err, kms.ErrEnclaveNotFound) {
		return fmt.Errorf("delete enclave %s: %w", name, err)
	}
	r.Logf("deleted enclave %s (created by this run; it held no keys and no identities)", name)
	return enclaveDeleted.Put(r, rec)
}

// listEnclaveIdentities returns the identities of an enclave, following
// continuation across pages.
func listEnclaveIdentities(ctx context.Context, c *kms.Client, enclave string) ([]string, error) {
	var ids []string
	req := &kms.ListRequest{Enclave: enclave}
	for {
		page, err := c.ListIdentities(ctx, req)
		if err != nil {
			return nil, fmt.Errorf("list identities of enclave %s: %w", enclave, err)
		}
		for _, id := range page.Items {
			ids = append(ids, id.Identity.String())
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			slices.Sort(ids)
			return ids, nil
		}
		req = &kms.ListRequest{Enclave: enclave, ContinueAt: page.ContinueAt}
	}
}

package steps

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"

	"aead.dev/mtls"
	"github.com/hashicorp/hcl/v2"
	"github.com/minio/kms-go/kms"
	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/engine"
)

func init() {
	engine.Register(engine.BlockType{
		Name:      "identity",
		Kind:      engine.KindStep,
		New:       func() engine.Block { return &identityStep{} },
		Outputs:   map[string]cty.Type{"api_key": cty.String, "identity": cty.String},
		Sensitive: []string{"api_key"},
		Doc:       "an identity in a Key Manager enclave, with an API key generated locally",
	})
}

// The identity step's durable state: every checkpoint it records.
var (
	// identityRegisterIntent: about to register the identity (durable
	// before the call, so that rollback finds what a crash left).
	identityRegisterIntent = engine.NewItem[identityRecord]("register-intent")
	// identityRegistered: the identity is registered in the enclave.
	identityRegistered = engine.NewItem[identityRecord]("registered")
	// identityDeleted: rollback deleted the identity (or found it gone).
	// Until the rollback completes, identityRegistered stays beside it.
	identityDeleted = engine.NewItem[identityRecord]("rollback/deleted")
)

var (
	_ engine.Step       = (*identityStep)(nil)
	_ engine.Planner    = (*identityStep)(nil)
	_ engine.Rollbacker = (*identityStep)(nil)
	_ engine.Validator  = (*identityStep)(nil)
)

// identityStep is the vendor's step 4 (`minkms add-identity --admin
// --enclave NAME`): the API key AIStor will use. The key is generated here,
// never leaves the machine except as the public identity registered at the
// Key Manager, is kept 0600 in the journal dir's secrets/ before the identity
// is registered (so a crash in between leaves no identity whose key is lost),
// and is exposed only as a sensitive output.
type identityStep struct {
	cfg identityConfig
}

type identityConfig struct {
	Enclave cty.Value `hcl:"enclave"`
	// Admin registers the identity as enclave Admin (the default, what AIStor
	// needs: it creates keys); false registers a User.
	Admin *bool `hcl:"admin,optional"`
}

func (i *identityStep) Config() any { return &i.cfg }

func (i *identityStep) Validate(d *engine.Decoded) hcl.Diagnostics {
	if d.Unknown("enclave") {
		return nil
	}
	v := i.cfg.Enclave
	if v.IsNull() || !v.Type().IsObjectType() || !v.Type().HasAttribute("name") || !v.Type().HasAttribute("key_manager") {
		return hcl.Diagnostics{{Severity: hcl.DiagError, Summary: "Invalid enclave reference", Detail: "enclave must refer to an enclave block, for example enclave = enclave.primary.", Subject: d.AttrRange("enclave")}}
	}
	return nil
}

func (i *identityStep) privilege() kms.Privilege {
	if i.cfg.Admin == nil || *i.cfg.Admin {
		return kms.Admin
	}
	return kms.User
}

func (i *identityStep) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	where := "the enclave (known after apply)"
	if ref, err := enclaveFrom(i.cfg.Enclave); err == nil {
		where = "enclave " + ref.Name
	}
	p := &engine.StepPlan{
		Actions: []string{
			"generate a k1: API key locally, kept 0600 in the journal dir's secrets/ and shown only as (sensitive)",
			fmt.Sprintf("register its identity in %s with privilege %s", where, i.privilege()),
		},
		Rollback: "delete the identity from " + where,
	}
	if i.privilege() == kms.User {
		// kms-go internal/api/api.go: "Unprivileged by default".
		p.Risks = append(p.Risks, fmt.Sprintf("admin = false registers a User, which may do nothing in %s until an administrator assigns it a policy: MinIO cannot generate or decrypt a data key with its API key, and a cutover given that key refuses it (at plan, or before its first change) until then", where))
	}
	return p, nil
}

// identityRecord is the data of the identity step's checkpoints: public
// values only.
type identityRecord struct {
	Enclave   string `json:"enclave"`
	Identity  string `json:"identity"`
	Privilege string `json:"privilege"`
}

func (i *identityStep) Apply(ctx context.Context, r *engine.Run) error {
	ref, err := enclaveFrom(i.cfg.Enclave)
	if err != nil {
		return err
	}
	// Reuse the key an earlier attempt generated: its identity may already be
	// registered.
	var key mtls.PrivateKey
	switch raw, err := r.ReadSecret("api_key"); {
	case err == nil:
		if key, err = mtls.ParsePrivateKey(string(raw)); err != nil {
			return fmt.Errorf("read the API key an earlier attempt stored in the journal dir's secrets/: it does not parse; the file was changed")
		}
	case errors.Is(err, os.ErrNotExist):
		if err := refuseLostKey(r); err != nil {
			return err
		}
		k, err := mtls.GenerateKeyEdDSA(rand.Reader)
		if err != nil {
			return fmt.Errorf("generate API key: %w", err)
		}
		if err := r.WriteSecret("api_key", []byte(k.String())); err != nil {
			return err
		}
		key = k
	default:
		return fmt.Errorf("read stored API key: %w", err)
	}
	rec := identityRecord{Enclave: ref.Name, Identity: key.Identity().String(), Privilege: i.privilege().String()}
	registered := identityRegistered.Done(r)
	if registered {
		if registered, err = i.stillRegistered(ctx, r, ref, key.Identity()); err != nil {
			return err
		}
	}
	if !registered {
		if err := identityRegisterIntent.Put(r, rec); err != nil {
			return err
		}
		c, err := ref.KM.Client(r)
		if err != nil {
			return fmt.Errorf("%s: %w", ref.Addr, err)
		}
		// CreateIdentity overwrites an existing one: a repeat is harmless.
		if err := c.CreateIdentity(ctx, ref.Name, &kms.CreateIdentityRequest{Identity: key.Identity(), Privilege: i.privilege()}); err != nil {
			if errors.Is(err, kms.ErrPermission) {
				return errKMPermission(ref.Addr, ref.KM, "create identities in enclave "+ref.Name)
			}
			return fmt.Errorf("create identity %s in enclave %s: %w", rec.Identity, ref.Name, err)
		}
		if err := identityRegistered.Put(r, rec); err != nil {
			return err
		}
		r.Logf("registered identity %s in enclave %s as %s; its API key is in the journal dir's secrets/", rec.Identity, ref.Name, rec.Privilege)
	}
	r.SetOutput("api_key", cty.StringVal(key.String()))
	r.SetOutput("identity", cty.StringVal(rec.Identity))
	return nil
}

// stillRegistered asks the Key Manager whether the identity the journal
// says this step registered is still in the enclave: a rollback of this run
// that was killed after deleting it (its identityDeleted checkpoint, or no
// checkpoint at all when the kill came first) leaves identityRegistered in
// the journal, and a resume that trusted it would hand the cutover an API
// key no identity has: every node restarted onto a Key Manager that refuses
// it. false, logged, when the identity is gone: apply registers it again.
func (i *identityStep) stillRegistered(ctx context.Context, r *engine.Run, ref enclaveRef, id mtls.Identity) (bool, error) {
	c, err := ref.KM.Client(r)
	if err != nil {
		return false, fmt.Errorf("%s: %w", ref.Addr, err)
	}
	_, err = c.GetIdentity(ctx, ref.Name, &kms.IdentityRequest{Identity: id})
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, kms.ErrIdentityNotFound):
		r.Logf("identity %s is no longer in enclave %s (%s): registering it again", id, ref.Name, goneWhy(identityDeleted.Done(r)))
		return false, nil
	case errors.Is(err, kms.ErrPermission):
		return false, errKMPermission(ref.Addr, ref.KM, "read identities in enclave "+ref.Name)
	}
	return false, fmt.Errorf("check that identity %s is still in enclave %s: %w", id, ref.Name, err)
}

// refuseLostKey refuses when the journal says an earlier attempt registered
// an identity (or was registering one: the intent is recorded before the
// call) while its key file in secrets/ is gone, as a power loss before the
// secrets dir was durable, or a hand, can leave it. A new key would be handed
// to the cutover although no identity is registered for it. nil otherwise.
func refuseLostKey(r *engine.Run) error {
	what, item := "registered", identityRegistered
	if !item.Done(r) {
		what, item = "began to register", identityRegisterIntent
	}
	rec, ok, err := item.Get(r)
	if err != nil {
		return fmt.Errorf("read the identity's checkpoint: %w", err)
	}
	if !ok {
		return nil
	}
	return engine.RefuseWithHint(fmt.Sprintf("restore the file from a backup of the journal dir, or undo this step with runbook rollback (it deletes identity %s, which needs no key) and apply again", rec.Identity),
		"the journal records that an earlier attempt %s identity %s in enclave %s, but its API key file %s is missing: a new key would not be that identity's",
		what, rec.Identity, rec.Enclave, r.SecretPath("api_key"))
}

// Rollback deletes the identity this run registered (or may have: the intent
// is recorded before the call). An identity already gone counts as done.
// Refused while the object store runs on the enclave (refuseWhileInUse): it
// may authenticate with this very identity.
func (i *identityStep) Rollback(ctx context.Context, r *engine.Run) error {
	rec, ok, err := identityRegisterIntent.Get(r)
	if err != nil {
		return err
	}
	if !ok {
		r.Logf("nothing to undo: no identity was registered")
		return nil
	}
	id, err := mtls.ParseIdentity(rec.Identity)
	if err != nil {
		return fmt.Errorf("read register-intent checkpoint: %w", err)
	}
	ref, err := enclaveFrom(i.cfg.Enclave)
	if err != nil {
		return err
	}
	if err := refuseWhileInUse(ctx, r, ref, "identity "+rec.Identity); err != nil {
		return err
	}
	c, err := ref.KM.Client(r)
	if err != nil {
		return fmt.Errorf("%s: %w", ref.Addr, err)
	}
	err = c.DeleteIdentity(ctx, rec.Enclave, &kms.DeleteIdentityRequest{Identity: id})
	switch {
	case err == nil:
		r.Logf("deleted identity %s from enclave %s", rec.Identity, rec.Enclave)
	case errors.Is(err, kms.ErrIdentityNotFound), errors.Is(err, kms.ErrEnclaveNotFound):
		r.Logf("identity %s is not in enclave %s: nothing to delete", rec.Identity, rec.Enclave)
	default:
		return fmt.Errorf("delete identity %s from enclave %s: %w", rec.Identity, rec.Enclave, err)
	}
	return identityDeleted.Put(r, rec)
}

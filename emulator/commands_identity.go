package emulator

import (
	"path"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
)

// ---------------------------------------------------------------------------
// Policies.

func checkPolicyCreate(x *call) (run, error) {
	r := x.req.(*pb.CreatePolicyRequest)
	if !x.a.allowed(x.cmd, r.Name) {
		return nil, kms.ErrPermission
	}
	if !validName(r.Name) {
		return nil, badRequest("invalid policy name: empty")
	}
	rec := &record{Op: opPolicyPut, Enclave: x.e.Name, Name: r.Name, Allow: map[string][]string{}, Deny: map[string][]string{}, At: now(), By: x.caller.String()}
	for dst, src := range map[*map[string][]string]map[string]*pb.RuleSet{&rec.Allow: r.Allow, &rec.Deny: r.Deny} {
		for name, set := range src {
			cmd, err := cmds.Parse(name)
			if err != nil {
				return nil, badRequest("invalid policy: unknown command '" + name + "'")
			}
			var pats []string
			for p := range set.GetRules() {
				if p == "" {
					continue
				}
				if _, err := path.Match(p, ""); err != nil {
					return nil, badRequest("invalid policy: malformed pattern '" + p + "'")
				}
				pats = append(pats, p)
			}
			(*dst)[cmd.String()] = pats
		}
	}
	return x.write(rec)
}

func checkPolicyDelete(x *call) (run, error) {
	r := x.req.(*pb.DeletePolicyRequest)
	if !x.a.allowed(x.cmd, r.Name) {
		return nil, kms.ErrPermission
	}
	if _, ok := x.e.policies[r.Name]; !ok {
		return nil, kms.ErrPolicyNotFound
	}
	return x.write(&record{Op: opPolicyDelete, Enclave: x.e.Name, Name: r.Name, At: now(), By: x.caller.String()})
}

func checkPolicyAssign(x *call) (run, error) {
	r := x.req.(*pb.AssignPolicyRequest)
	if !x.a.allowed(x.cmd, r.Policy) {
		return nil, kms.ErrPermission
	}
	idt, err := mtls.ParseIdentity(r.Identity)
	if err != nil || idt.IsZero() {
		return nil, badRequest("invalid identity")
	}
	if _, ok := x.e.policies[r.Policy]; !ok {
		return nil, kms.ErrPolicyNotFound
	}
	id, ok := x.e.identities[idt]
	if !ok {
		return nil, kms.ErrIdentityNotFound
	}
	if id.Privilege != kms.User {
		return nil, badRequest("policies can only be assigned to identities with the User privilege")
	}
	updated := *id
	updated.Policy = r.Policy
	return x.write(identityRecord(x.e.Name, &updated))
}

func checkPolicyGet(x *call) (run, error) {
	r := x.req.(*pb.PolicyRequest)
	if !x.a.allowed(x.cmd, r.Name) {
		return nil, kms.ErrPermission
	}
	p, ok := x.e.policies[r.Name]
	if !ok {
		return nil, kms.ErrPolicyNotFound
	}
	if x.cmd == cmds.PolicyStatus {
		return answer(&pb.PolicyStatusResponse{Name: p.Name, CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()})
	}
	conv := func(m map[cmds.Command][]string) map[string]*pb.RuleSet {
		out := make(map[string]*pb.RuleSet, len(m))
		for cmd, pats := range m {
			rs := &pb.RuleSet{Rules: make(map[string]*pb.Rule, len(pats))}
			for _, p := range pats {
				rs.Rules[p] = &pb.Rule{}
			}
			out[cmd.String()] = rs
		}
		return out
	}
	return answer(&pb.PolicyResponse{Name: p.Name, Allow: conv(p.Allow), Deny: conv(p.Deny), CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()})
}

func checkPolicyList(x *call) (run, error) {
	r := x.req.(*pb.ListRequest)
	if !x.a.mayList(x.cmd) {
		return nil, kms.ErrPermission
	}
	names, next, err := paginate(sortedMapKeys(x.e.policies), r.Prefix, r.ContinueAt, pageSize(r.Limit), func(n string) bool { return x.a.allowed(x.cmd, n) })
	if err != nil {
		return nil, err
	}
	resp := &pb.ListPoliciesResponse{ContinueAt: next}
	for _, n := range names {
		p := x.e.policies[n]
		resp.Policies = append(resp.Policies, &pb.PolicyStatusResponse{Name: p.Name, CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()})
	}
	return answer(resp)
}

// ---------------------------------------------------------------------------
// Identities: inside the enclave x.e, or the global SysAdmins if x.e is nil.

// identities returns the identity table the command acts on and the
// enclave name its records carry.
func (x *call) identities() (map[mtls.Identity]*identity, string) {
	if x.e == nil {
		return x.st.sysadmins, ""
	}
	return x.e.identities, x.e.Name
}

func (x *call) lookupIdentity(id mtls.Identity) (*identity, bool) {
	if x.e == nil && id == x.st.root {
		return &identity{ID: x.st.root, Privilege: kms.SysAdmin}, true
	}
	ids, _ := x.identities()
	v, ok := ids[id]
	return v, ok
}

func parseIdentity(s string) (mtls.Identity, error) {
	id, err := mtls.ParseIdentity(s)
	if err != nil || id.IsZero() {
		return id, badRequest("invalid identity '" + s + "'")
	}
	return id, nil
}

func (x *call) identityResponse(v *identity) *pb.IdentityResponse {
	ids, _ := x.identities()
	r := &pb.IdentityResponse{
		Identity: v.ID.String(), Privilege: uint32(v.Privilege), Policy: v.Policy,
		CreatedAt: pb.Time(v.CreatedAt), CreatedBy: v.CreatedBy.String(),
		IsServiceAccount: v.ServiceAccount, Tags: v.Tags,
	}
	for _, o := range ids {
		if o.ServiceAccount && o.CreatedBy == v.ID {
			r.ServiceAccounts = append(r.ServiceAccounts, o.ID.String())
		}
	}
	return r
}

// checkIdentityCreate creates or overwrites an identity (kms-go client.go
// CreateIdentity: "creates a new or overwrites an exisiting identity").
// Nobody creates, overwrites or deletes an identity of higher privilege
// than their own, and a User creates service accounts only (kms-go
// internal/api/api.go: "user accounts can only create new service accounts
// while admins can also create new user accounts").
func checkIdentityCreate(x *call) (run, error) {
	r := x.req.(*pb.CreateIdentityRequest)
	if !x.a.allowed(x.cmd, r.Identity) {
		return nil, kms.ErrPermission
	}
	id, err := parseIdentity(r.Identity)
	if err != nil {
		return nil, err
	}
	mine := x.a.privilege()
	priv := kms.User
	if r.Privilege != "" {
		if priv, err = kms.ParsePrivilege(r.Privilege); err != nil {
			return nil, badRequest("invalid privilege '" + r.Privilege + "'")
		}
	}
	if r.IsServiceAccount {
		priv = mine // a service account acts with its parent's privilege
	}
	ids, encName := x.identities()
	switch {
	case id == x.st.root:
		return nil, badRequest("the root identity cannot be modified")
	case x.e == nil && priv != kms.SysAdmin:
		return nil, badRequest("identities without an enclave must have the SysAdmin privilege")
	case x.e != nil && priv == kms.SysAdmin && !r.IsServiceAccount:
		return nil, badRequest("SysAdmin identities cannot belong to an enclave")
	case outranks(priv, mine):
		return nil, kms.ErrPermission
	case mine == kms.User && !r.IsServiceAccount:
		return nil, kms.ErrPermission
	}
	old, exists := ids[id]
	if exists && outranks(x.st.privilegeOf(x.e, old), mine) {
		return nil, kms.ErrPermission // would overwrite a higher identity
	}
	v := &identity{ID: id, Privilege: priv, ServiceAccount: r.IsServiceAccount, Tags: r.Tags, CreatedAt: now(), CreatedBy: x.caller}
	if exists && old.Privilege == kms.User && priv == kms.User {
		v.Policy = old.Policy // overwriting keeps the assigned policy
	}
	return x.write(identityRecord(encName, v))
}

func checkIdentityDelete(x *call) (run, error) {
	r := x.req.(*pb.DeleteIdentityRequest)
	if !x.a.allowed(x.cmd, r.Identity) {
		return nil, kms.ErrPermission
	}
	id, err := parseIdentity(r.Identity)
	if err != nil {
		return nil, err
	}
	if id == x.st.root && x.e == nil {
		return nil, badRequest("the root identity cannot be deleted")
	}
	ids, encName := x.identities()
	old, ok := ids[id]
	if !ok {
		return nil, kms.ErrIdentityNotFound
	}
	if outranks(x.st.privilegeOf(x.e, old), x.a.privilege()) {
		return nil, kms.ErrPermission
	}
	return x.write(&record{Op: opIdentityDelete, Enclave: encName, ID: id.String(), At: now(), By: x.caller.String()})
}

func checkIdentityGet(x *call) (run, error) {
	r := x.req.(*pb.IdentityRequest)
	if !x.a.allowed(x.cmd, r.Identity) {
		return nil, kms.ErrPermission
	}
	id, err := parseIdentity(r.Identity)
	if err != nil {
		return nil, err
	}
	v, ok := x.lookupIdentity(id)
	if !ok {
		return nil, kms.ErrIdentityNotFound
	}
	return answer(x.identityResponse(v))
}

func checkIdentityList(x *call) (run, error) {
	r := x.req.(*pb.ListRequest)
	if !x.a.mayList(x.cmd) {
		return nil, kms.ErrPermission
	}
	ids, _ := x.identities()
	all := make(map[string]*identity, len(ids)+1)
	for id, v := range ids {
		all[id.String()] = v
	}
	if x.e == nil {
		all[x.st.root.String()] = &identity{ID: x.st.root, Privilege: kms.SysAdmin}
	}
	names, next, err := paginate(sortedMapKeys(all), r.Prefix, r.ContinueAt, pageSize(r.Limit), func(n string) bool { return x.a.allowed(x.cmd, n) })
	if err != nil {
		return nil, err
	}
	resp := &pb.ListIdentitiesResponse{ContinueAt: next}
	for _, n := range names {
		resp.Identities = append(resp.Identities, x.identityResponse(all[n]))
	}
	return answer(resp)
}

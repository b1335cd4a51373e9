package emulator

import (
	"crypto/rand"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"github.com/runbook-dev/runbook/internal/kescrypto"
	"google.golang.org/protobuf/proto"
)

const (
	defaultPageSize = 1000
	maxPageSize     = 10000
	maxDataKeyLen   = 1024
)

func badRequest(msg string) error { return kms.Error{Code: http.StatusBadRequest, Err: msg} }

// newRequest returns an empty request message for the command c, or nil
// if the command is unknown. supported reports whether the emulator
// implements it.
func newRequest(c cmds.Command) (msg proto.Message, supported bool) {
	switch c {
	case cmds.ClusterStatus:
		return &pb.ClusterStatusRequest{}, true
	case cmds.ClusterAddNode:
		return &pb.AddClusterNodeRequest{}, false
	case cmds.ClusterRemoveNode:
		return &pb.RemoveClusterNodeRequest{}, false
	case cmds.ClusterEdit:
		return &pb.EditClusterRequest{}, false
	case cmds.EnclaveCreate:
		return &pb.CreateEnclaveRequest{}, true
	case cmds.EnclaveDelete:
		return &pb.DeleteEnclaveRequest{}, true
	case cmds.EnclaveStatus:
		return &pb.EnclaveStatusRequest{}, true
	case cmds.EnclaveList, cmds.KeyList, cmds.PolicyList, cmds.IdentityList:
		return &pb.ListRequest{}, true
	case cmds.KeyCreate:
		return &pb.CreateKeyRequest{}, true
	case cmds.KeyDelete:
		return &pb.DeleteKeyRequest{}, true
	case cmds.KeyImport:
		return &pb.ImportKeyRequest{}, true
	case cmds.KeyStatus:
		return &pb.KeyStatusRequest{}, true
	case cmds.KeyEncrypt:
		return &pb.EncryptRequest{}, true
	case cmds.KeyDecrypt:
		return &pb.DecryptRequest{}, true
	case cmds.KeyGenerate:
		return &pb.GenerateKeyRequest{}, true
	case cmds.KeyListVersions:
		return &pb.KeyStatusRequest{}, false
	case cmds.PolicyCreate:
		return &pb.CreatePolicyRequest{}, true
	case cmds.PolicyDelete:
		return &pb.DeletePolicyRequest{}, true
	case cmds.PolicyAssign:
		return &pb.AssignPolicyRequest{}, true
	case cmds.PolicyGet, cmds.PolicyStatus:
		return &pb.PolicyRequest{}, true
	case cmds.IdentityCreate:
		return &pb.CreateIdentityRequest{}, true
	case cmds.IdentityDelete:
		return &pb.DeleteIdentityRequest{}, true
	case cmds.IdentityGet:
		return &pb.IdentityRequest{}, true
	}
	return nil, false
}

// validName reports whether s is acceptable as enclave, key or policy name.
func validName(s string) bool {
	if s == "" || len(s) > 1024 || !utf8.ValidString(s) || strings.ContainsAny(s, "/\\") {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// access describes what a caller may do within one enclave.
type access struct {
	sys   bool // SysAdmin: everything
	admin bool // Admin of the enclave: everything inside it
	user  *identity
	pol   *policy // policy of a User, nil if none
}

func (a access) any() bool { return a.sys || a.admin || a.pol != nil || a.user != nil }

// allowed reports whether the caller may run c with the argument arg
// (key, policy or identity name) inside the enclave. For a User, a
// command is allowed when an Allow pattern of c matches arg and no Deny
// pattern does (patterns use path.Match syntax, see kms-go rule.go).
func (a access) allowed(c cmds.Command, arg string) bool {
	if a.sys || a.admin {
		return true
	}
	if a.pol == nil {
		return false
	}
	for _, p := range a.pol.Deny[c] {
		if ok, _ := path.Match(p, arg); ok {
			return false
		}
	}
	for _, p := range a.pol.Allow[c] {
		if ok, _ := path.Match(p, arg); ok {
			return true
		}
	}
	return false
}

// mayList reports whether the caller may use the list command c at all.
func (a access) mayList(c cmds.Command) bool {
	return a.sys || a.admin || (a.pol != nil && len(a.pol.Allow[c]) > 0)
}

// accessLocked returns the caller's access to enclave e (nil if it does
// not exist). s.mu is held.
func (s *state) accessLocked(caller mtls.Identity, e *enclave) access {
	if caller == s.root {
		return access{sys: true}
	}
	if id, ok := s.sysadmins[caller]; ok {
		if !id.ServiceAccount || id.CreatedBy == s.root || s.sysadmins[id.CreatedBy] != nil {
			return access{sys: true}
		}
	}
	if e == nil {
		return access{}
	}
	id, ok := e.identities[caller]
	if !ok {
		return access{}
	}
	eff := id
	if id.ServiceAccount { // service accounts inherit their parent's permissions
		if id.CreatedBy == s.root || s.sysadmins[id.CreatedBy] != nil {
			return access{admin: true}
		}
		if eff, ok = e.identities[id.CreatedBy]; !ok {
			return access{}
		}
	}
	switch eff.Privilege {
	case kms.SysAdmin, kms.Admin:
		return access{admin: true}
	case kms.User:
		a := access{user: id}
		if eff.Policy != "" {
			a.pol = e.policies[eff.Policy]
		}
		return a
	}
	return access{}
}

func isEnclaveCmd(c cmds.Command) bool { return c < 200 }

// exec runs one command for caller against the enclave named in the URL
// path and returns the response message (nil for write commands).
func (s *Server) exec(caller mtls.Identity, encName string, c cmds.Command, req proto.Message) (proto.Message, error) {
	st := s.st
	if isEnclaveCmd(c) {
		st.mu.Lock()
		defer st.mu.Unlock()
		if !st.accessLocked(caller, nil).sys {
			return nil, kms.ErrPermission
		}
		return s.execEnclave(caller, c, req)
	}
	if c >= cmds.IdentityCreate && encName == "" {
		st.mu.Lock()
		defer st.mu.Unlock()
		if !st.accessLocked(caller, nil).sys {
			return nil, kms.ErrPermission
		}
		return s.execIdentity(caller, nil, access{sys: true}, c, req)
	}

	st.mu.Lock()
	e := st.enclaves[encName]
	a := st.accessLocked(caller, e)
	if !a.any() {
		st.mu.Unlock()
		return nil, kms.ErrPermission
	}
	if e == nil {
		st.mu.Unlock()
		return nil, kms.ErrEnclaveNotFound
	}
	switch {
	case c >= cmds.IdentityCreate:
		defer st.mu.Unlock()
		return s.execIdentity(caller, e, a, c, req)
	case c >= cmds.PolicyCreate:
		defer st.mu.Unlock()
		return s.execPolicy(caller, e, a, c, req)
	default:
		return s.execKey(caller, e, a, c, req) // unlocks st.mu
	}
}

func (s *Server) execEnclave(caller mtls.Identity, c cmds.Command, req proto.Message) (proto.Message, error) {
	st := s.st
	status := func(e *enclave) *pb.EnclaveStatusResponse {
		return &pb.EnclaveStatusResponse{Name: e.Name, CreatedAt: pb.Time(e.CreatedAt), CreatedBy: e.CreatedBy.String()}
	}
	switch c {
	case cmds.ClusterStatus:
		return &pb.ClusterStatusResponse{
			NodesUp: map[uint32]*pb.ServerStatusResponse{0: {
				Version: Version, APIVersion: "v1", Host: s.Addr(), UpTime: pb.Duration(time.Since(s.started)),
				Role: "Leader", Commit: uint64(st.records), Nodes: map[uint32]string{0: s.Addr()},
			}},
			NodesDown: map[uint32]string{},
		}, nil
	case cmds.EnclaveCreate:
		name := req.(*pb.CreateEnclaveRequest).Name
		if !validName(name) {
			return nil, badRequest("invalid enclave name")
		}
		if _, ok := st.enclaves[name]; ok {
			return nil, kms.ErrEnclaveExists
		}
		return nil, st.commit(&record{Op: opEnclaveCreate, Name: name, At: now(), By: caller.String()})
	case cmds.EnclaveDelete:
		name := req.(*pb.DeleteEnclaveRequest).Name
		if _, ok := st.enclaves[name]; !ok {
			return nil, kms.ErrEnclaveNotFound
		}
		return nil, st.commit(&record{Op: opEnclaveDelete, Name: name, At: now(), By: caller.String()})
	case cmds.EnclaveStatus:
		e, ok := st.enclaves[req.(*pb.EnclaveStatusRequest).Name]
		if !ok {
			return nil, kms.ErrEnclaveNotFound
		}
		return status(e), nil
	case cmds.EnclaveList:
		lr := req.(*pb.ListRequest)
		names, next := paginate(sortedMapKeys(st.enclaves), lr.Prefix, lr.ContinueAt, pageSize(lr.Limit), nil)
		resp := &pb.ListEnclavesResponse{ContinueAt: next}
		for _, n := range names {
			resp.Enclaves = append(resp.Enclaves, status(st.enclaves[n]))
		}
		return resp, nil
	}
	return nil, badRequest("unknown command")
}

func pageSize(limit uint32) int {
	if limit == 0 {
		return defaultPageSize
	}
	return int(min(limit, maxPageSize))
}

func now() time.Time { return time.Now().UTC() }

func keyStatus(name string, kv *keyVersion) *pb.KeyStatusResponse {
	return &pb.KeyStatusResponse{
		Name: name, Version: uint32(kv.Version), Type: kv.Key.Algorithm.String(),
		CreatedAt: pb.Time(kv.Key.CreatedAt), CreatedBy: kv.Key.CreatedBy,
	}
}

func parseKeyType(s string) (kescrypto.Algorithm, error) {
	switch s {
	case "", "AES256":
		return kescrypto.AES256, nil
	case "ChaCha20":
		return kescrypto.ChaCha20, nil
	}
	return 0, badRequest("invalid key type '" + s + "': want AES256 or ChaCha20")
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

// execKey runs a key command. It is called with st.mu held and releases it.
func (s *Server) execKey(caller mtls.Identity, e *enclave, a access, c cmds.Command, req proto.Message) (proto.Message, error) {
	st := s.st
	locked := true
	unlock := func() {
		if locked {
			locked = false
			st.mu.Unlock()
		}
	}
	defer unlock()

	// versionsFor returns the key versions to use for a crypto operation.
	versionsFor := func(name string, version uint32) ([]*keyVersion, error) {
		if !a.allowed(c, name) {
			return nil, kms.ErrPermission
		}
		r, ok := e.keys[name]
		if !ok {
			return nil, kms.ErrKeyNotFound
		}
		if version == 0 {
			return r.versions, nil // immutable: apply replaces slices instead of editing them
		}
		kv := r.version(int(version))
		if kv == nil {
			return nil, kms.ErrKeyNotFound
		}
		return []*keyVersion{kv}, nil
	}

	switch c {
	case cmds.KeyCreate, cmds.KeyImport:
		var (
			name, typ  string
			material   []byte
			addVersion bool
		)
		if r, ok := req.(*pb.CreateKeyRequest); ok {
			name, typ, addVersion = r.Name, r.Type, r.AddVersion
		} else {
			r := req.(*pb.ImportKeyRequest)
			name, typ, material = r.Name, r.Type, r.Key
		}
		if !a.allowed(c, name) {
			return nil, kms.ErrPermission
		}
		if !validName(name) {
			return nil, badRequest("invalid key name")
		}
		alg, err := parseKeyType(typ)
		if err != nil {
			return nil, err
		}
		rec := &record{Op: opKeyAdd, Enclave: e.Name, Name: name, Version: 1, Type: alg.String(), At: now(), By: caller.String()}
		if c == cmds.KeyImport {
			if len(material) != kescrypto.KeySize {
				return nil, badRequest("invalid key length " + strconv.Itoa(len(material)) + ": want 32 bytes")
			}
			rec.Key, rec.Import = material, true
		} else {
			rec.Key, rec.HMAC = randomBytes(kescrypto.KeySize), randomBytes(kescrypto.KeySize)
		}
		if r, ok := e.keys[name]; ok {
			if !addVersion {
				return nil, kms.ErrKeyExists
			}
			rec.Version = r.next
			if typ == "" { // a new version keeps the key's type unless one is given
				rec.Type = r.latest().Key.Algorithm.String()
			}
		}
		return nil, st.commit(rec)

	case cmds.KeyDelete:
		r := req.(*pb.DeleteKeyRequest)
		if !a.allowed(c, r.Name) {
			return nil, kms.ErrPermission
		}
		if r.AllVersions && r.Version > 0 {
			return nil, badRequest("invalid request: all_versions and a non-zero version are incompatible")
		}
		ring, ok := e.keys[r.Name]
		if !ok {
			return nil, kms.ErrKeyNotFound
		}
		rec := &record{Op: opKeyDelete, Enclave: e.Name, Name: r.Name, At: now(), By: caller.String()}
		if !r.AllVersions {
			kv := ring.version(int(r.Version))
			if kv == nil {
				return nil, kms.ErrKeyNotFound
			}
			rec.Version = kv.Version
		}
		return nil, st.commit(rec)

	case cmds.KeyStatus:
		r := req.(*pb.KeyStatusRequest)
		vs, err := versionsFor(r.Name, r.Version)
		if err != nil {
			return nil, err
		}
		return keyStatus(r.Name, vs[len(vs)-1]), nil

	case cmds.KeyList:
		r := req.(*pb.ListRequest)
		if !a.mayList(c) {
			return nil, kms.ErrPermission
		}
		keep := func(n string) bool { return a.allowed(c, n) }
		names, next := paginate(e.sortedKeys(), r.Prefix, r.ContinueAt, pageSize(r.Limit), keep)
		resp := &pb.ListKeysResponse{ContinueAt: next, Keys: make([]*pb.KeyStatusResponse, 0, len(names))}
		for _, n := range names {
			resp.Keys = append(resp.Keys, keyStatus(n, e.keys[n].latest()))
		}
		return resp, nil

	case cmds.KeyEncrypt:
		r := req.(*pb.EncryptRequest)
		vs, err := versionsFor(r.Name, r.Version)
		if err != nil {
			return nil, err
		}
		unlock()
		kv := vs[len(vs)-1]
		ct, err := kescrypto.Seal(kv.Key, r.Plaintext, r.AssociatedData)
		if err != nil {
			return nil, kms.Error{Code: 500, Err: "encryption failed"}
		}
		return &pb.EncryptResponse{Version: uint32(kv.Version), Ciphertext: ct}, nil

	case cmds.KeyGenerate:
		r := req.(*pb.GenerateKeyRequest)
		vs, err := versionsFor(r.Name, r.Version)
		if err != nil {
			return nil, err
		}
		unlock()
		n := int(r.Length)
		if n == 0 {
			n = 32
		}
		if n > maxDataKeyLen {
			return nil, badRequest("invalid data key length " + strconv.Itoa(n) + ": at most 1024 bytes")
		}
		kv := vs[len(vs)-1]
		plaintext := randomBytes(n)
		ct, err := kescrypto.Seal(kv.Key, plaintext, r.AssociatedData)
		if err != nil {
			return nil, kms.Error{Code: 500, Err: "encryption failed"}
		}
		return &pb.GenerateKeyResponse{Version: uint32(kv.Version), Plaintext: plaintext, Ciphertext: ct}, nil

	case cmds.KeyDecrypt:
		r := req.(*pb.DecryptRequest)
		vs, err := versionsFor(r.Name, r.Version)
		if err != nil {
			return nil, err
		}
		unlock()
		if refusesFormat(s.cfg.FaultRefuseFormats, r.Ciphertext) {
			return nil, kms.ErrDecrypt
		}
		for i := len(vs) - 1; i >= 0; i-- { // newest first
			if pt, err := kescrypto.Open(vs[i].Key, r.Ciphertext, r.AssociatedData); err == nil {
				if pt == nil {
					pt = []byte{}
				}
				return &pb.DecryptResponse{Plaintext: pt}, nil
			}
		}
		return nil, kms.ErrDecrypt
	}
	return nil, badRequest("unknown command")
}

func (s *Server) execPolicy(caller mtls.Identity, e *enclave, a access, c cmds.Command, req proto.Message) (proto.Message, error) {
	st := s.st
	switch c {
	case cmds.PolicyCreate:
		r := req.(*pb.CreatePolicyRequest)
		if !a.allowed(c, r.Name) {
			return nil, kms.ErrPermission
		}
		if !validName(r.Name) {
			return nil, badRequest("invalid policy name")
		}
		rec := &record{Op: opPolicyPut, Enclave: e.Name, Name: r.Name, Allow: map[string][]string{}, Deny: map[string][]string{}, At: now(), By: caller.String()}
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
		return nil, st.commit(rec)

	case cmds.PolicyDelete:
		r := req.(*pb.DeletePolicyRequest)
		if !a.allowed(c, r.Name) {
			return nil, kms.ErrPermission
		}
		if _, ok := e.policies[r.Name]; !ok {
			return nil, kms.ErrPolicyNotFound
		}
		return nil, st.commit(&record{Op: opPolicyDelete, Enclave: e.Name, Name: r.Name, At: now(), By: caller.String()})

	case cmds.PolicyAssign:
		r := req.(*pb.AssignPolicyRequest)
		if !a.allowed(c, r.Policy) {
			return nil, kms.ErrPermission
		}
		idt, err := mtls.ParseIdentity(r.Identity)
		if err != nil || idt.IsZero() {
			return nil, badRequest("invalid identity")
		}
		if _, ok := e.policies[r.Policy]; !ok {
			return nil, kms.ErrPolicyNotFound
		}
		id, ok := e.identities[idt]
		if !ok {
			return nil, kms.ErrIdentityNotFound
		}
		if id.Privilege != kms.User {
			return nil, badRequest("policies can only be assigned to identities with the User privilege")
		}
		updated := *id
		updated.Policy = r.Policy
		return nil, st.commit(identityRecord(e.Name, &updated))

	case cmds.PolicyGet, cmds.PolicyStatus:
		r := req.(*pb.PolicyRequest)
		if !a.allowed(c, r.Name) {
			return nil, kms.ErrPermission
		}
		p, ok := e.policies[r.Name]
		if !ok {
			return nil, kms.ErrPolicyNotFound
		}
		if c == cmds.PolicyStatus {
			return &pb.PolicyStatusResponse{Name: p.Name, CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()}, nil
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
		return &pb.PolicyResponse{Name: p.Name, Allow: conv(p.Allow), Deny: conv(p.Deny), CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()}, nil

	case cmds.PolicyList:
		r := req.(*pb.ListRequest)
		if !a.mayList(c) {
			return nil, kms.ErrPermission
		}
		names, next := paginate(sortedMapKeys(e.policies), r.Prefix, r.ContinueAt, pageSize(r.Limit), func(n string) bool { return a.allowed(c, n) })
		resp := &pb.ListPoliciesResponse{ContinueAt: next}
		for _, n := range names {
			p := e.policies[n]
			resp.Policies = append(resp.Policies, &pb.PolicyStatusResponse{Name: p.Name, CreatedAt: pb.Time(p.CreatedAt), CreatedBy: p.CreatedBy.String()})
		}
		return resp, nil
	}
	return nil, badRequest("unknown command")
}

// execIdentity runs an identity command inside enclave e, or on the
// global SysAdmin identities if e is nil.
func (s *Server) execIdentity(caller mtls.Identity, e *enclave, a access, c cmds.Command, req proto.Message) (proto.Message, error) {
	st := s.st
	ids, encName := st.sysadmins, ""
	if e != nil {
		ids, encName = e.identities, e.Name
	}
	lookup := func(id mtls.Identity) (*identity, bool) {
		if e == nil && id == st.root {
			return &identity{ID: st.root, Privilege: kms.SysAdmin}, true
		}
		v, ok := ids[id]
		return v, ok
	}
	response := func(v *identity) *pb.IdentityResponse {
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
	parse := func(s string) (mtls.Identity, error) {
		id, err := mtls.ParseIdentity(s)
		if err != nil || id.IsZero() {
			return id, badRequest("invalid identity '" + s + "'")
		}
		return id, nil
	}

	switch c {
	case cmds.IdentityCreate:
		r := req.(*pb.CreateIdentityRequest)
		if !a.allowed(c, r.Identity) {
			return nil, kms.ErrPermission
		}
		id, err := parse(r.Identity)
		if err != nil {
			return nil, err
		}
		priv := kms.User
		if r.Privilege != "" {
			if priv, err = kms.ParsePrivilege(r.Privilege); err != nil {
				return nil, badRequest("invalid privilege '" + r.Privilege + "'")
			}
		}
		if r.IsServiceAccount {
			priv = kms.User // permissions come from the parent identity
			if p, ok := lookup(caller); ok {
				priv = p.Privilege
			}
		}
		switch {
		case id == st.root:
			return nil, badRequest("the root identity cannot be modified")
		case e == nil && priv != kms.SysAdmin:
			return nil, badRequest("identities without an enclave must have the SysAdmin privilege")
		case e != nil && priv == kms.SysAdmin && !r.IsServiceAccount:
			return nil, badRequest("SysAdmin identities cannot belong to an enclave")
		case !a.sys && !a.admin && priv != kms.User:
			return nil, kms.ErrPermission // Users can only create Users
		}
		v := &identity{ID: id, Privilege: priv, ServiceAccount: r.IsServiceAccount, Tags: r.Tags, CreatedAt: now(), CreatedBy: caller}
		if old, ok := ids[id]; ok && old.Privilege == kms.User && priv == kms.User {
			v.Policy = old.Policy // overwriting keeps the assigned policy
		}
		return nil, st.commit(identityRecord(encName, v))

	case cmds.IdentityDelete:
		r := req.(*pb.DeleteIdentityRequest)
		if !a.allowed(c, r.Identity) {
			return nil, kms.ErrPermission
		}
		id, err := parse(r.Identity)
		if err != nil {
			return nil, err
		}
		if id == st.root && e == nil {
			return nil, badRequest("the root identity cannot be deleted")
		}
		if _, ok := ids[id]; !ok {
			return nil, kms.ErrIdentityNotFound
		}
		return nil, st.commit(&record{Op: opIdentityDelete, Enclave: encName, ID: id.String(), At: now(), By: caller.String()})

	case cmds.IdentityGet:
		r := req.(*pb.IdentityRequest)
		if !a.allowed(c, r.Identity) {
			return nil, kms.ErrPermission
		}
		id, err := parse(r.Identity)
		if err != nil {
			return nil, err
		}
		v, ok := lookup(id)
		if !ok {
			return nil, kms.ErrIdentityNotFound
		}
		return response(v), nil

	case cmds.IdentityList:
		r := req.(*pb.ListRequest)
		if !a.mayList(c) {
			return nil, kms.ErrPermission
		}
		all := make(map[string]*identity, len(ids)+1)
		for id, v := range ids {
			all[id.String()] = v
		}
		if e == nil {
			all[st.root.String()] = &identity{ID: st.root, Privilege: kms.SysAdmin}
		}
		names, next := paginate(sortedMapKeys(all), r.Prefix, r.ContinueAt, pageSize(r.Limit), func(n string) bool { return a.allowed(c, n) })
		resp := &pb.ListIdentitiesResponse{ContinueAt: next}
		for _, n := range names {
			resp.Identities = append(resp.Identities, response(all[n]))
		}
		return resp, nil
	}
	return nil, badRequest("unknown command")
}

package emulator

import (
	"crypto/rand"
	"net/http"
	"path"
	"time"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"google.golang.org/protobuf/proto"
)

const (
	defaultPageSize = 1000
	maxPageSize     = 10000
	maxDataKeyLen   = 1024
)

func badRequest(msg string) error { return kms.Error{Code: http.StatusBadRequest, Err: msg} }

// scope says who may send a command and what it acts on.
type scope int

const (
	// scopeCluster: enclaves and the cluster. SysAdmin only; the enclave
	// in the URL is ignored.
	scopeCluster scope = iota
	// scopeEnclave: keys and policies of the enclave named in the URL.
	scopeEnclave
	// scopeIdentity: identities of the enclave named in the URL, or the
	// global SysAdmin identities when the URL names none (the vendor's
	// client sends an empty enclave for them: /v1/kms).
	scopeIdentity
)

// call is one command of a request as its check sees it. The state is
// locked for as long as check runs.
type call struct {
	srv    *Server
	st     *state
	tx     *tx // the request's writes
	caller mtls.Identity
	e      *enclave // nil for scopeCluster, and for global identities
	a      access
	cmd    cmds.Command
	req    proto.Message
}

// write stages rec as this command's change (applied now, logged with the
// request's other writes).
func (x *call) write(rec *record) (run, error) { return nil, x.tx.apply(rec) }

// run computes a read command's answer after the state is unlocked: it
// must only use what its check captured (key versions are immutable).
type run func() (proto.Message, error)

// answer is the run of a read whose answer check already built.
func answer(m proto.Message) (run, error) {
	return func() (proto.Message, error) { return m, nil }, nil
}

// command is one entry of the dispatch table.
type command struct {
	scope scope
	// new returns an empty request message for decoding.
	new func() proto.Message
	// check authorizes and validates the command and, for a write, stages
	// its record; for a read it returns the run that builds the answer.
	// It runs with the state locked, taken and released by Server.execute
	// only. nil: a command the emulator knows but does not implement.
	check func(x *call) (run, error)
}

// commands is the dispatch table: every command code of kms-go cmds/command.go.
var commands map[cmds.Command]command

func init() {
	msg := func(m proto.Message) func() proto.Message {
		return func() proto.Message { return proto.Clone(m) }
	}
	commands = map[cmds.Command]command{
		cmds.ClusterStatus:     {scopeCluster, msg(&pb.ClusterStatusRequest{}), checkClusterStatus},
		cmds.ClusterAddNode:    {scopeCluster, msg(&pb.AddClusterNodeRequest{}), nil},
		cmds.ClusterRemoveNode: {scopeCluster, msg(&pb.RemoveClusterNodeRequest{}), nil},
		cmds.ClusterEdit:       {scopeCluster, msg(&pb.EditClusterRequest{}), nil},

		cmds.EnclaveCreate: {scopeCluster, msg(&pb.CreateEnclaveRequest{}), checkEnclaveCreate},
		cmds.EnclaveDelete: {scopeCluster, msg(&pb.DeleteEnclaveRequest{}), checkEnclaveDelete},
		cmds.EnclaveStatus: {scopeCluster, msg(&pb.EnclaveStatusRequest{}), checkEnclaveStatus},
		cmds.EnclaveList:   {scopeCluster, msg(&pb.ListRequest{}), checkEnclaveList},

		cmds.KeyCreate:       {scopeEnclave, msg(&pb.CreateKeyRequest{}), checkKeyAdd},
		cmds.KeyImport:       {scopeEnclave, msg(&pb.ImportKeyRequest{}), checkKeyAdd},
		cmds.KeyDelete:       {scopeEnclave, msg(&pb.DeleteKeyRequest{}), checkKeyDelete},
		cmds.KeyStatus:       {scopeEnclave, msg(&pb.KeyStatusRequest{}), checkKeyStatus},
		cmds.KeyEncrypt:      {scopeEnclave, msg(&pb.EncryptRequest{}), checkKeyEncrypt},
		cmds.KeyDecrypt:      {scopeEnclave, msg(&pb.DecryptRequest{}), checkKeyDecrypt},
		cmds.KeyGenerate:     {scopeEnclave, msg(&pb.GenerateKeyRequest{}), checkKeyGenerate},
		cmds.KeyList:         {scopeEnclave, msg(&pb.ListRequest{}), checkKeyList},
		cmds.KeyListVersions: {scopeEnclave, msg(&pb.KeyStatusRequest{}), nil},

		cmds.PolicyCreate: {scopeEnclave, msg(&pb.CreatePolicyRequest{}), checkPolicyCreate},
		cmds.PolicyDelete: {scopeEnclave, msg(&pb.DeletePolicyRequest{}), checkPolicyDelete},
		cmds.PolicyAssign: {scopeEnclave, msg(&pb.AssignPolicyRequest{}), checkPolicyAssign},
		cmds.PolicyGet:    {scopeEnclave, msg(&pb.PolicyRequest{}), checkPolicyGet},
		cmds.PolicyStatus: {scopeEnclave, msg(&pb.PolicyRequest{}), checkPolicyGet},
		cmds.PolicyList:   {scopeEnclave, msg(&pb.ListRequest{}), checkPolicyList},

		cmds.IdentityCreate: {scopeIdentity, msg(&pb.CreateIdentityRequest{}), checkIdentityCreate},
		cmds.IdentityDelete: {scopeIdentity, msg(&pb.DeleteIdentityRequest{}), checkIdentityDelete},
		cmds.IdentityGet:    {scopeIdentity, msg(&pb.IdentityRequest{}), checkIdentityGet},
		cmds.IdentityList:   {scopeIdentity, msg(&pb.ListRequest{}), checkIdentityList},
	}
}

// check finds the caller's access for one decoded frame and runs the
// command's check. The state is locked.
func (s *Server) check(t *tx, caller mtls.Identity, encName string, f frame) (run, error) {
	st := s.st
	x := &call{srv: s, st: st, tx: t, caller: caller, cmd: f.cmd, req: f.req}
	switch {
	case f.def.scope == scopeCluster, f.def.scope == scopeIdentity && encName == "":
		if x.a = st.accessLocked(caller, nil); !x.a.sys {
			return nil, kms.ErrPermission
		}
	default:
		x.e = st.enclaves[encName]
		if x.a = st.accessLocked(caller, x.e); !x.a.any() {
			return nil, kms.ErrPermission
		}
		if x.e == nil {
			return nil, kms.ErrEnclaveNotFound
		}
	}
	return f.def.check(x)
}

// validEnclaveName reports whether an enclave name can be addressed: the
// vendor's client puts it into the request path as one segment
// (client.go Send: url.JoinPath("/v1/kms/", enclave)), and an empty one
// addresses the enclave-less commands. Nothing else is stated.
func validEnclaveName(s string) bool {
	return s != "" && s != "." && s != ".." && !containsByte(s, '/')
}

// validName reports whether s is acceptable as a key or policy name. The
// vendor states no rule for them (kms-go request.go and request.proto
// carry them as protobuf strings, so they are UTF-8); an empty name is
// refused because it is the protobuf default, indistinguishable from a
// name left out.
func validName(s string) bool { return s != "" }

func containsByte(s string, b byte) bool {
	for i := range len(s) {
		if s[i] == b {
			return true
		}
	}
	return false
}

// access describes what a caller may do within one enclave.
type access struct {
	sys   bool // SysAdmin: everything
	admin bool // Admin of the enclave: everything inside it
	user  *identity
	pol   *policy // policy of a User, nil if none
}

func (a access) any() bool { return a.sys || a.admin || a.pol != nil || a.user != nil }

// privilege is the caller's privilege: SysAdmin, Admin or User.
func (a access) privilege() kms.Privilege {
	switch {
	case a.sys:
		return kms.SysAdmin
	case a.admin:
		return kms.Admin
	}
	return kms.User
}

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

// privilegeOf is the privilege an identity acts with: a service account's
// is its parent's (kms-go response.go IdentityResponse: service accounts
// inherit the permissions of their parent identity).
func (s *state) privilegeOf(e *enclave, id *identity) kms.Privilege {
	if !id.ServiceAccount {
		return id.Privilege
	}
	if id.CreatedBy == s.root || s.sysadmins[id.CreatedBy] != nil {
		return kms.SysAdmin
	}
	if e != nil {
		if p, ok := e.identities[id.CreatedBy]; ok && !p.ServiceAccount {
			return p.Privilege
		}
	}
	return kms.User
}

// outranks reports whether privilege p is higher than q (SysAdmin > Admin
// > User; kms-go identity.go numbers them from 1 = SysAdmin).
func outranks(p, q kms.Privilege) bool { return p < q }

func now() time.Time { return time.Now().UTC() }

func pageSize(limit uint32) int {
	if limit == 0 {
		return defaultPageSize
	}
	return int(min(limit, maxPageSize))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand)
	return b
}

// ---------------------------------------------------------------------------
// Cluster and enclaves.

func checkClusterStatus(x *call) (run, error) {
	s := x.srv
	return answer(&pb.ClusterStatusResponse{
		NodesUp: map[uint32]*pb.ServerStatusResponse{0: {
			Version: Version, APIVersion: "v1", Host: s.Addr(), UpTime: pb.Duration(time.Since(s.started)),
			Role: "Leader", Commit: uint64(x.st.records), Nodes: map[uint32]string{0: s.Addr()},
		}},
		NodesDown: map[uint32]string{},
	})
}

func enclaveStatus(e *enclave) *pb.EnclaveStatusResponse {
	return &pb.EnclaveStatusResponse{Name: e.Name, CreatedAt: pb.Time(e.CreatedAt), CreatedBy: e.CreatedBy.String()}
}

func checkEnclaveCreate(x *call) (run, error) {
	name := x.req.(*pb.CreateEnclaveRequest).Name
	if !validEnclaveName(name) {
		return nil, badRequest("invalid enclave name '" + name + "'")
	}
	if _, ok := x.st.enclaves[name]; ok {
		return nil, kms.ErrEnclaveExists
	}
	return x.write(&record{Op: opEnclaveCreate, Name: name, At: now(), By: x.caller.String()})
}

func checkEnclaveDelete(x *call) (run, error) {
	name := x.req.(*pb.DeleteEnclaveRequest).Name
	if _, ok := x.st.enclaves[name]; !ok {
		return nil, kms.ErrEnclaveNotFound
	}
	return x.write(&record{Op: opEnclaveDelete, Name: name, At: now(), By: x.caller.String()})
}

func checkEnclaveStatus(x *call) (run, error) {
	e, ok := x.st.enclaves[x.req.(*pb.EnclaveStatusRequest).Name]
	if !ok {
		return nil, kms.ErrEnclaveNotFound
	}
	return answer(enclaveStatus(e))
}

func checkEnclaveList(x *call) (run, error) {
	lr := x.req.(*pb.ListRequest)
	names, next, err := paginate(sortedMapKeys(x.st.enclaves), lr.Prefix, lr.ContinueAt, pageSize(lr.Limit), nil)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListEnclavesResponse{ContinueAt: next}
	for _, n := range names {
		resp.Enclaves = append(resp.Enclaves, enclaveStatus(x.st.enclaves[n]))
	}
	return answer(resp)
}

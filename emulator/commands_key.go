package emulator

import (
	"strconv"

	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	pb "github.com/minio/kms-go/kms/protobuf"
	"google.golang.org/protobuf/proto"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

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

// versions returns the key versions a crypto command may use: all of them
// for version 0 (newest last), else the one asked for. The slice is never
// edited in place (apply replaces it), so it may be used after unlocking.
func (x *call) versions(name string, version uint32) ([]*keyVersion, error) {
	if !x.a.allowed(x.cmd, name) {
		return nil, kms.ErrPermission
	}
	r, ok := x.e.keys[name]
	if !ok {
		return nil, kms.ErrKeyNotFound
	}
	if version == 0 {
		return r.versions, nil
	}
	kv := r.version(int(version))
	if kv == nil {
		return nil, kms.ErrKeyNotFound
	}
	return []*keyVersion{kv}, nil
}

// checkKeyAdd serves KEY:CREATE and KEY:IMPORT.
func checkKeyAdd(x *call) (run, error) {
	var (
		name, typ  string
		material   []byte
		addVersion bool
	)
	if r, ok := x.req.(*pb.CreateKeyRequest); ok {
		name, typ, addVersion = r.Name, r.Type, r.AddVersion
	} else {
		r := x.req.(*pb.ImportKeyRequest)
		name, typ, material = r.Name, r.Type, r.Key
	}
	if !x.a.allowed(x.cmd, name) {
		return nil, kms.ErrPermission
	}
	if !validName(name) {
		return nil, badRequest("invalid key name: empty")
	}
	alg, err := parseKeyType(typ)
	if err != nil {
		return nil, err
	}
	e := x.e
	rec := &record{Op: opKeyAdd, Enclave: e.Name, Name: name, Version: 1, Type: alg.String(), At: now(), By: x.caller.String()}
	if x.cmd == cmds.KeyImport {
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
	} else if e.deleted[name] && x.srv.readings.DeletedNames == DeletedTombstoned {
		// kms-go request.go DeleteKeyRequest: "Once a key version has been
		// removed it cannot be added again." The name answers as taken.
		return nil, kms.ErrKeyExists
	}
	return x.write(rec)
}

func checkKeyDelete(x *call) (run, error) {
	r := x.req.(*pb.DeleteKeyRequest)
	if !x.a.allowed(x.cmd, r.Name) {
		return nil, kms.ErrPermission
	}
	if r.AllVersions && r.Version > 0 {
		return nil, badRequest("invalid request: all_versions and a non-zero version are incompatible")
	}
	ring, ok := x.e.keys[r.Name]
	if !ok {
		return nil, kms.ErrKeyNotFound
	}
	rec := &record{Op: opKeyDelete, Enclave: x.e.Name, Name: r.Name, At: now(), By: x.caller.String()}
	if !r.AllVersions {
		kv := ring.version(int(r.Version))
		if kv == nil {
			return nil, kms.ErrKeyNotFound
		}
		rec.Version = kv.Version
	}
	return x.write(rec)
}

func checkKeyStatus(x *call) (run, error) {
	r := x.req.(*pb.KeyStatusRequest)
	vs, err := x.versions(r.Name, r.Version)
	if err != nil {
		return nil, err
	}
	return answer(keyStatus(r.Name, vs[len(vs)-1]))
}

func checkKeyList(x *call) (run, error) {
	r := x.req.(*pb.ListRequest)
	if !x.a.mayList(x.cmd) {
		return nil, kms.ErrPermission
	}
	e := x.e
	keep := func(n string) bool { return x.a.allowed(x.cmd, n) }
	names, next, err := paginate(e.sortedKeys(), r.Prefix, r.ContinueAt, pageSize(r.Limit), keep)
	if err != nil {
		return nil, err
	}
	resp := &pb.ListKeysResponse{ContinueAt: next, Keys: make([]*pb.KeyStatusResponse, 0, len(names))}
	for _, n := range names {
		resp.Keys = append(resp.Keys, keyStatus(n, e.keys[n].latest()))
	}
	return answer(resp)
}

// The crypto commands capture the key versions under the lock and seal or
// open without it.

func checkKeyEncrypt(x *call) (run, error) {
	r := x.req.(*pb.EncryptRequest)
	vs, err := x.versions(r.Name, r.Version)
	if err != nil {
		return nil, err
	}
	kv := vs[len(vs)-1]
	return func() (proto.Message, error) {
		ct, err := kescrypto.Seal(kv.Key, r.Plaintext, r.AssociatedData)
		if err != nil {
			return nil, kms.Error{Code: 500, Err: "encryption failed"}
		}
		return &pb.EncryptResponse{Version: uint32(kv.Version), Ciphertext: ct}, nil
	}, nil
}

func checkKeyGenerate(x *call) (run, error) {
	r := x.req.(*pb.GenerateKeyRequest)
	vs, err := x.versions(r.Name, r.Version)
	if err != nil {
		return nil, err
	}
	n := int(r.Length)
	if n == 0 {
		n = 32
	}
	if n > maxDataKeyLen {
		return nil, badRequest("invalid data key length " + strconv.Itoa(n) + ": at most 1024 bytes")
	}
	kv := vs[len(vs)-1]
	return func() (proto.Message, error) {
		plaintext := randomBytes(n)
		ct, err := kescrypto.Seal(kv.Key, plaintext, r.AssociatedData)
		if err != nil {
			return nil, kms.Error{Code: 500, Err: "encryption failed"}
		}
		return &pb.GenerateKeyResponse{Version: uint32(kv.Version), Plaintext: plaintext, Ciphertext: ct}, nil
	}, nil
}

func checkKeyDecrypt(x *call) (run, error) {
	r := x.req.(*pb.DecryptRequest)
	vs, err := x.versions(r.Name, r.Version)
	if err != nil {
		return nil, err
	}
	refuse := x.srv.cfg.FaultRefuseFormats
	return func() (proto.Message, error) {
		if refusesFormat(refuse, r.Ciphertext) {
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
	}, nil
}

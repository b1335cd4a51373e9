package steps

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"
	kesdk "github.com/minio/kms-go/kes"
)

// fsKeyStore is KES's fs key store (kesconf.FSKeyStore) with a cheaper Get:
// the plan's classification and the verification read every key, and at
// 10,000 keys os.Open and Close were a sixth of the runbook's CPU (pprof).
// os.Open registers every file with the runtime's poller, switching it to
// non-blocking and back, to learn that a regular file cannot be polled:
// nine system calls per key (strace) where four do.
type fsKeyStore struct {
	kesserver.KeyStore
	dir string
}

// fsMaxValue is the most of a value KES's fs store reads (kes@v0.24.0
// internal/keystore/fs/fs.go, Get: mem.LimitReader of 1 MiB; the rest is
// not read).
const fsMaxValue = 1 << 20

// Get answers as KES's fs store does (kes@v0.24.0
// internal/keystore/fs/fs.go, Get): a name holding '/', '\' or '.' is
// refused with KES's message, a missing file is kesdk.ErrKeyNotFound, and
// at most fsMaxValue bytes are read; other failures are *fs.PathError as
// os.Open and Read give them.
func (s fsKeyStore) Get(_ context.Context, name string) ([]byte, error) {
	if name == "" || strings.ContainsAny(name, `/\.`) {
		return nil, errors.New("fs: key name contains invalid character")
	}
	path := filepath.Join(s.dir, name)
	var fd int
	err := ignoringEINTR(func() (err error) {
		fd, err = syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, kesdk.ErrKeyNotFound
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	value := make([]byte, 0, 512) // a key file is 100-300 bytes
	for len(value) < fsMaxValue {
		if len(value) == cap(value) {
			value = append(value, 0)[:len(value)]
		}
		var n int
		err := ignoringEINTR(func() (err error) {
			n, err = syscall.Read(fd, value[len(value):min(cap(value), fsMaxValue)])
			return err
		})
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			break
		}
		value = value[:len(value)+n]
	}
	return value, nil
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// fastKeyStore is ks, KES's store of conf, with fsKeyStore's Get when
// conf names an fs store and vaultKeyStore's when it names Vault.
func fastKeyStore(ks kesserver.KeyStore, conf *kesconf.File) kesserver.KeyStore {
	switch c := conf.KeyStore.(type) {
	case *kesconf.FSKeyStore:
		return fsKeyStore{KeyStore: ks, dir: c.Path}
	case *kesconf.VaultKeyStore:
		return &vaultKeyStore{KeyStore: ks, conf: c}
	}
	return ks
}

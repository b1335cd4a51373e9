package steps

import (
	"context"
	"sync"
	"time"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/internal/keystore"
)

// vaultKeyStore is KES's vault key store with a cheaper Get: the plan's
// classification and the verification read every key, and KES's own store
// opens a new connection to Vault for each read (keystore.VaultReader).
// The first Get logs in a keystore.VaultReader; a value it does not return
// plain, and every read when its login failed, is KES's store's Get, so
// that each answer is KES's own.
type vaultKeyStore struct {
	kesserver.KeyStore
	conf *kesconf.VaultKeyStore

	once   sync.Once
	reader *keystore.VaultReader // nil: the login failed
}

// vaultLoginTimeout bounds the reader's login; KES's store reads on.
const vaultLoginTimeout = 10 * time.Second

func (s *vaultKeyStore) Get(ctx context.Context, name string) ([]byte, error) {
	s.once.Do(func() {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), vaultLoginTimeout)
		defer cancel()
		s.reader, _ = keystore.NewVaultReader(lctx, s.conf)
	})
	if s.reader != nil {
		if v, ok := s.reader.Get(ctx, name); ok {
			return v, nil
		}
	}
	return s.KeyStore.Get(ctx, name)
}

// Close revokes the reader's token and closes KES's store.
func (s *vaultKeyStore) Close() error {
	s.once.Do(func() {}) // no login after Close
	if s.reader != nil {
		s.reader.Close()
	}
	return s.KeyStore.Close()
}

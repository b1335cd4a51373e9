package engine

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// Files of a journal dir that this file manages.
const (
	gitignoreFile = ".gitignore"
	secretsDir    = "secrets"
	// hashKeyFile holds the key of the keyed hash that binds sensitive
	// values in plans and run records (32 random bytes, hex, 0600).
	hashKeyFile = "plan-hash.key"
)

// EnsureJournalDir creates a journal dir (0700, made durable in its parent)
// with a .gitignore that ignores everything in it: a journal holds backups
// and secrets and must never be committed with the runbook beside it.
func EnsureJournalDir(dir string) error {
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create journal dir: %w", err)
	}
	p := filepath.Join(dir, gitignoreFile)
	if _, err := os.Stat(p); err == nil {
		return nil
	}
	if err := atomicfile.WriteFile(p, []byte("# runbook journal: backups and secrets, never committed\n*\n"), 0o600); err != nil {
		return fmt.Errorf("write journal .gitignore: %w", err)
	}
	return nil
}

// HashKey is the journal's key for binding sensitive values: HMAC-SHA256
// under a random key kept in the journal dir's secrets/, so a plan.json or a
// journal record that leaves the machine allows no offline guessing of a
// value, while the same inputs on the same journal give the same plan.
type HashKey struct {
	key []byte
}

// LoadHashKey reads the journal's hash key; os.ErrNotExist when there is none.
func LoadHashKey(journal string) (*HashKey, error) {
	raw, err := os.ReadFile(filepath.Join(journal, secretsDir, hashKeyFile))
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(string(raw))
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("read hash key %s: not 64 hex digits", filepath.Join(journal, secretsDir, hashKeyFile))
	}
	return &HashKey{key: key}, nil
}

// EnsureHashKey returns the journal's hash key, creating the journal dir,
// its secrets/ and the key (0600) on first use.
func EnsureHashKey(journal string) (*HashKey, error) {
	k, fresh, err := HashKeyFor(journal)
	if err != nil || !fresh {
		return k, err
	}
	return k, k.Save(journal)
}

// HashKeyFor returns the journal's hash key, or, when it has none, a new one
// (fresh) not yet saved: a command that may still refuse saves it (Save)
// only once nothing refused.
func HashKeyFor(journal string) (k *HashKey, fresh bool, err error) {
	k, err = LoadHashKey(journal)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, false, fmt.Errorf("generate hash key: %w", err)
	}
	return &HashKey{key: key}, true, nil
}

// Save writes a key HashKeyFor made to the journal dir's secrets/ (0600),
// creating the journal dir.
func (k *HashKey) Save(journal string) error {
	if err := EnsureJournalDir(journal); err != nil {
		return err
	}
	if err := atomicfile.MkdirAll(filepath.Join(journal, secretsDir), 0o700); err != nil {
		return fmt.Errorf("create secrets dir: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(journal, secretsDir, hashKeyFile), []byte(hex.EncodeToString(k.key)), 0o600); err != nil {
		return fmt.Errorf("write hash key: %w", err)
	}
	return nil
}

// Sum binds a value under a name: "hmac-sha256:" and 64 hex digits.
func (k *HashKey) Sum(name string, v cty.Value) string {
	v, _ = v.UnmarkDeep()
	raw, _ := ctyjson.Marshal(v, v.Type())
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte("runbook value\x00" + name + "\x00"))
	m.Write(raw)
	return "hmac-sha256:" + hex.EncodeToString(m.Sum(nil))
}

// ID names the key without revealing it, so that a plan made with another
// journal's key is told apart from a changed value.
func (k *HashKey) ID() string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte("runbook key id"))
	return hex.EncodeToString(m.Sum(nil))[:16]
}

// WriteFileAtomic is atomicfile.WriteFile, for steps that write whole files
// (backups, patches) through the engine's name for it.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.WriteFile(path, data, perm)
}

// MkdirDurable is atomicfile.MkdirAll.
func MkdirDurable(dir string, perm os.FileMode) error { return atomicfile.MkdirAll(dir, perm) }

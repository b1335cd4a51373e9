package steps

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// listKeyStore returns every key name in the store, sorted, completely.
//
// KES's listing helper (internal/keystore.List) returns at most 1024 names
// and a "continuation" that is really a prefix: following it, as kes migrate
// does, silently stops after 1025 keys (DOMAIN.md). Asked for more names than
// the store holds, with an empty prefix, it returns all of them in one page
// and an empty continuation — that is the only listing trusted here, and it
// is cross-checked: against the directory itself for an fs store, and against
// a second listing otherwise.
func listKeyStore(ctx context.Context, ks kesserver.KeyStore, conf *kesconf.File) ([]string, error) {
	names, next, err := ks.List(ctx, "", math.MaxInt32)
	if err != nil {
		return nil, fmt.Errorf("list key store: %w", err)
	}
	if next != "" {
		return nil, fmt.Errorf("list key store: the store returned a partial listing (%d names, continuing at %q) although every name was asked for; refusing to work from an incomplete list", len(names), next)
	}
	names = slices.Clone(names)
	slices.Sort(names)
	if fs, ok := conf.KeyStore.(*kesconf.FSKeyStore); ok {
		entries, err := os.ReadDir(fs.Path)
		if err != nil {
			return nil, fmt.Errorf("cross-check key store directory: %w", err)
		}
		files := 0
		for _, e := range entries {
			if e.Type().IsRegular() {
				files++
			}
		}
		if files != len(names) {
			return nil, fmt.Errorf("list key store: the listing has %d names but %s holds %d files; refusing to work from an incomplete list", len(names), fs.Path, files)
		}
		return names, nil
	}
	again, _, err := ks.List(ctx, "", math.MaxInt32)
	if err != nil {
		return nil, fmt.Errorf("list key store again: %w", err)
	}
	again = slices.Clone(again)
	slices.Sort(again)
	if !slices.Equal(names, again) {
		return nil, fmt.Errorf("list key store: two listings differ (%d and %d names): is a key being created? Halt key creation at KES first", len(names), len(again))
	}
	return names, nil
}

// errUnparsable marks an entry that is not a KES key.
var errUnparsable = errors.New("not a KES key")

// readKey reads and parses one key store entry. The error never holds key
// material.
func readKey(ctx context.Context, ks kesserver.KeyStore, name string) (kescrypto.Key, error) {
	raw, err := ks.Get(ctx, name)
	if err != nil {
		return kescrypto.Key{}, fmt.Errorf("read key %q from the key store: %w", name, err)
	}
	k, err := kescrypto.ParseKey(raw)
	if err != nil {
		return kescrypto.Key{}, fmt.Errorf("parse key %q: %w: %v", name, errUnparsable, err)
	}
	return k, nil
}

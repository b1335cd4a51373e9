package steps

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	kesserver "github.com/minio/kes"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// storeListing is a key store's complete listing, checked by a second means,
// with every name sorted into what it is. Prerequisites, migration and
// verification all take it from listKeyStore, so they agree on what a key is.
//
// The groups (DOMAIN.md A5, E):
//   - Keys: entries KES can serve as keys. A symlink to a key file is one
//     (KES's fs store reads through it). Their content is parsed only when
//     read (parseEntry): one that does not parse is "unparsable", named
//     and never migrated.
//   - NotKeys: entries that are not keys (a directory such as lost+found, a
//     dot-file, an editor backup, a name KES itself refuses, a symlink that
//     leads nowhere), each named with the reason and left out by every step.
type storeListing struct {
	All     []string  // every name the store lists, sorted
	Keys    []string  // the names that are keys (until read: see parseEntry), sorted
	NotKeys []problem // the entries that are not keys, with the reason, sorted by name
	// Check says how the listing's completeness was checked, for the plan.
	Check string
}

// notKeyNames are the NotKeys' names.
func (l *storeListing) notKeyNames() []string {
	out := make([]string, len(l.NotKeys))
	for i, p := range l.NotKeys {
		out[i] = p.Name
	}
	return out
}

// listKeyStore lists every entry of the store, completely, checks the
// listing by a second, independent means where the backend allows, and
// sorts the entries into keys and not-keys.
//
// KES's listing helper (internal/keystore.List) returns at most 1024 names
// and a "continuation" that is really a prefix: following it, as kes migrate
// does, silently stops after 1025 keys (DOMAIN.md C). Asked for more names
// than the store holds, with an empty prefix, it returns all of them in one
// page and an empty continuation; that is the only listing trusted here.
//
// Errors: the store cannot be listed; the listing is partial; the second
// means disagrees (the names that differ are named).
func listKeyStore(ctx context.Context, ks kesserver.KeyStore, conf *kesconf.File) (*storeListing, error) {
	names, next, err := ks.List(ctx, "", math.MaxInt32)
	if err != nil {
		// KES's vault error holds Vault's answer but not the fix; the
		// direct listing says which policy rule is missing.
		if verr := vaultListRefusal(ctx, conf); verr != nil {
			return nil, fmt.Errorf("list key store: %w", verr)
		}
		return nil, fmt.Errorf("list key store: %w", err)
	}
	if next != "" {
		return nil, fmt.Errorf("list key store: the store returned a partial listing (%d names, continuing at %q) although every name was asked for; refusing to work from an incomplete list", len(names), next)
	}
	l := &storeListing{All: slices.Clone(names)}
	slices.Sort(l.All)
	l.All = slices.Compact(l.All)

	// The second, independent listing: one case per backend kind.
	var fsDir string
	var fsTypes map[string]fs.FileMode // directory entry types, without following symlinks
	switch s := conf.KeyStore.(type) {
	case *kesconf.FSKeyStore:
		fsDir = s.Path
		entries, err := os.ReadDir(s.Path)
		if err != nil {
			return nil, fmt.Errorf("cross-check key store directory: %w", err)
		}
		dir := make([]string, len(entries))
		fsTypes = make(map[string]fs.FileMode, len(entries))
		for i, e := range entries {
			dir[i] = e.Name()
			fsTypes[e.Name()] = e.Type()
		}
		slices.Sort(dir)
		if err := sameNames("the key store's listing", l.All, "directory "+s.Path, dir); err != nil {
			return nil, err
		}
		l.Check = fmt.Sprintf("cross-checked by name against the directory %s itself (%d entries)", s.Path, len(dir))
	case *kesconf.VaultKeyStore:
		direct, err := listVaultNames(ctx, s)
		if err != nil {
			return nil, fmt.Errorf("cross-check key store through the Vault API: %w", err)
		}
		where := "Vault's own listing of " + vaultListPath(s) + "/"
		if err := sameNames("the key store's listing", l.All, where, slices.Compact(direct)); err != nil {
			return nil, err
		}
		l.Check = fmt.Sprintf("cross-checked by name against %s through the Vault API (%d entries)", where, len(direct))
	default:
		// No independent means here: list again, so that a store that
		// changes while it is read is at least caught.
		again, _, err := ks.List(ctx, "", math.MaxInt32)
		if err != nil {
			return nil, fmt.Errorf("list key store again: %w", err)
		}
		again = slices.Clone(again)
		slices.Sort(again)
		if err := sameNames("the first listing", l.All, "a second listing", slices.Compact(again)); err != nil {
			return nil, fmt.Errorf("%w: is a key being created? Halt key creation at KES first", err)
		}
		l.Check = fmt.Sprintf("listed twice with the same result; no listing independent of KES is available for a %s store here, so completeness rests on KES's own listing asked for every name at once", keyStoreKind(conf))
	}

	for _, n := range l.All {
		if why := notKeyReason(fsDir, fsTypes, n); why != "" {
			l.NotKeys = append(l.NotKeys, problem{Name: n, Reason: why})
		} else {
			l.Keys = append(l.Keys, n)
		}
	}
	return l, nil
}

// sameNames compares two sorted name lists and names every difference.
func sameNames(whatA string, a []string, whatB string, b []string) error {
	onlyA, onlyB := verifyDiff(a, b)
	if len(onlyA) == 0 && len(onlyB) == 0 {
		return nil
	}
	var parts []string
	if len(onlyA) > 0 {
		parts = append(parts, fmt.Sprintf("only in %s: %s", whatA, verifyNameList(onlyA, verifyShown)))
	}
	if len(onlyB) > 0 {
		parts = append(parts, fmt.Sprintf("only in %s: %s", whatB, verifyNameList(onlyB, verifyShown)))
	}
	return fmt.Errorf("list key store: %s and %s differ (%s); refusing to work from a listing that may be incomplete or changing: halt key changes at KES and plan again", whatA, whatB, strings.Join(parts, "; "))
}

// notKeyReason says why the entry name is not a key, or "" when it is one.
// fsDir is the directory of an fs store ("" for other backends), where
// directories and dangling symlinks are told apart by the file system;
// types are its entries' types as the directory listing gave them (a
// regular file needs no further look).
func notKeyReason(fsDir string, types map[string]fs.FileMode, name string) string {
	if t, ok := types[name]; fsDir != "" && (!ok || !t.IsRegular()) {
		p := filepath.Join(fsDir, name)
		info, err := os.Stat(p) // through a symlink, as KES's os.Open reads
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if target, lerr := os.Readlink(p); lerr == nil {
				return fmt.Sprintf("a symlink that leads nowhere (to %s)", target)
			}
			return "gone from the directory while it was read"
		case err != nil:
			return fmt.Sprintf("cannot be examined (%v)", errors.Unwrap(err))
		case info.IsDir():
			return "a directory, not a key file"
		case !info.Mode().IsRegular():
			return fmt.Sprintf("not a regular file (%s)", info.Mode().Type())
		}
	}
	switch {
	case strings.HasSuffix(name, "/"):
		return "a folder below the key store's prefix, not a key: Vault lists sub-paths with a trailing '/'"
	case strings.HasPrefix(name, "."):
		return "a dot-file: KES refuses names with '.', so it never served it"
	case strings.HasSuffix(name, "~"):
		return "an editor backup: KES refuses names with '~', so it never served it"
	case strings.Contains(name, "."):
		return "a name with '.': KES refuses it (its fs store lists such a file but never reads it), so it never served it"
	case !kesValidName(name):
		return "a name KES refuses (only 0-9, A-Z, a-z, '_' and inner '-', at most 80 characters), so it never served it"
	}
	return ""
}

// kesValidName is KES v0.24's rule for key names (auth.go validName): every
// key API call refuses any other name, so no object can be sealed under it.
// The fs store's own rule (no '/', '\\' or '.') is narrower and included.
func kesValidName(s string) bool {
	if s == "" || s == "_" || len(s) > 80 {
		return false
	}
	last := len(s) - 1
	for i, c := range s {
		switch {
		case c >= '0' && c <= '9', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c == '_':
		case c == '-' && i > 0 && i < last:
		default:
			return false
		}
	}
	return true
}

// keyStoreKind names the backend, e.g. "fs" or "vault".
func keyStoreKind(conf *kesconf.File) string {
	switch conf.KeyStore.(type) {
	case *kesconf.FSKeyStore:
		return "fs"
	case *kesconf.VaultKeyStore:
		return "vault"
	}
	t := fmt.Sprintf("%T", conf.KeyStore)
	return strings.TrimSuffix(strings.TrimPrefix(t, "*kesconf."), "KeyStore")
}

// The names of the groups, as plans and logs show them.
const (
	groupNotKeys    = "entries that are not keys"
	groupUnparsable = "entries that look like keys but do not parse"
)

// Stored-key formats, as KES wrote them (DOMAIN.md A5).
const (
	formatV024 = "v0.24" // base64 protobuf
	formatV023 = "v0.23" // JSON, written by KES v0.22/v0.23
)

// parseEntry parses a key store value. A value that does not parse is an
// "unparsable" entry: reason says why, never with material.
func parseEntry(raw []byte) (k kescrypto.Key, format, reason string) {
	format = formatV024
	if json.Valid(raw) {
		format = formatV023
	}
	k, err := kescrypto.ParseKey(raw)
	if err != nil {
		if len(raw) == 0 {
			return kescrypto.Key{}, format, "the entry is empty"
		}
		return kescrypto.Key{}, format, strings.TrimPrefix(err.Error(), "kescrypto: ")
	}
	return k, format, ""
}

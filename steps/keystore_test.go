package steps

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// TestListKeyStoreGroups sorts an operator's fs store the way every step
// must: keys (a symlink to a key file is one), and entries that are not
// keys, each with its reason. The empty file is a key until read.
func TestListKeyStoreGroups(t *testing.T) {
	dir := t.TempDir()
	elsewhere := t.TempDir()
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32)}
	raw, err := k.MarshalV023()
	if err != nil {
		t.Fatal(err)
	}
	write := func(p string, b []byte) {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "key-1"), raw)
	write(filepath.Join(dir, "key-1~"), raw)
	write(filepath.Join(dir, ".gitkeep"), nil)
	write(filepath.Join(dir, "empty"), nil)
	write(filepath.Join(dir, "notes.txt"), []byte("hello"))
	write(filepath.Join(dir, "bad+name"), raw)
	write(filepath.Join(elsewhere, "real"), raw)
	if err := os.Mkdir(filepath.Join(dir, "lost+found"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(elsewhere, "real"), filepath.Join(dir, "linked")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(elsewhere, "gone"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	conf := &kesconf.File{KeyStore: &kesconf.FSKeyStore{Path: dir}}
	ks, err := conf.KeyStore.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	l, err := listKeyStore(context.Background(), ks, conf)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"empty", "key-1", "linked"}; !slices.Equal(l.Keys, want) {
		t.Errorf("keys: %q, want %q", l.Keys, want)
	}
	want := map[string]string{
		".gitkeep":   "a dot-file",
		"bad+name":   "a name KES refuses",
		"dangling":   "a symlink that leads nowhere",
		"key-1~":     "an editor backup",
		"lost+found": "a directory",
		"notes.txt":  "a name with '.'",
	}
	if got := l.notKeyNames(); len(got) != len(want) {
		t.Errorf("not keys: %q, want %d", got, len(want))
	}
	for _, p := range l.NotKeys {
		if !strings.HasPrefix(p.Reason, want[p.Name]) || want[p.Name] == "" {
			t.Errorf("%s: reason %q, want it to start with %q", p.Name, p.Reason, want[p.Name])
		}
	}
	if len(l.All) != len(l.Keys)+len(l.NotKeys) {
		t.Errorf("%d names, %d keys and %d not keys", len(l.All), len(l.Keys), len(l.NotKeys))
	}
	if !strings.Contains(l.Check, "cross-checked by name against the directory") {
		t.Errorf("check: %q", l.Check)
	}
	if _, _, reason := parseEntry(nil); reason != "the entry is empty" {
		t.Errorf("empty entry: %q", reason)
	}
	if _, format, reason := parseEntry(raw); reason != "" || format != formatV023 {
		t.Errorf("v0.23 key: format %q, reason %q", format, reason)
	}
}

// TestSameNamesNamesTheDifference: a listing that differs from the
// directory is refused naming each name on each side, never only counts.
func TestSameNamesNamesTheDifference(t *testing.T) {
	err := sameNames("the key store's listing", []string{"a", "b", "c"}, "directory /keys", []string{"a", "c", "d"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"only in the key store's listing: b", "only in directory /keys: d", "refusing"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%v: want %q", err, s)
		}
	}
	if err := sameNames("x", []string{"a"}, "y", []string{"a"}); err != nil {
		t.Errorf("equal lists: %v", err)
	}
}

func TestKESValidName(t *testing.T) {
	for name, ok := range map[string]bool{
		"key-1": true, "A_b-9": true, "_x": true, strings.Repeat("a", 80): true,
		"": false, "_": false, "-a": false, "a-": false, "a.b": false, "a~": false,
		"lost+found": false, "a/b": false, strings.Repeat("a", 81): false,
	} {
		if kesValidName(name) != ok {
			t.Errorf("kesValidName(%q) = %v, want %v", name, !ok, ok)
		}
	}
}

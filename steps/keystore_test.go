package steps

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/minio/kes/kesconf"
	kesdk "github.com/minio/kms-go/kes"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// TestListKeyStoreGroups sorts an operator's fs store the way every step
// must: keys (a symlink to a key file is one), and entries that are not
// keys, each with its reason. The empty file is a key until read.
func TestListKeyStoreGroups(t *testing.T) {
	t.Parallel()
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
	write(filepath.Join(dir, "app-db"), []byte(`{"username": "app", "password": "hunter2"}`))
	write(filepath.Join(dir, "blob"), []byte{0x00, 0xff, 0x13, 0x37, 0x80})
	write(filepath.Join(dir, "short-key"), []byte(`{"bytes":"AAECAwQFBgcICQoLDA0ODw=="}`))
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
	l, err := listKeyStore(context.Background(), nil, nil, ks, conf)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"empty", "key-1", "linked", "short-key"}; !slices.Equal(l.Keys, want) {
		t.Errorf("keys: %q, want %q", l.Keys, want)
	}
	if want := []string{"app-db", "blob"}; !slices.Equal(l.Foreign, want) {
		t.Errorf("not KES keys: %q, want %q", l.Foreign, want)
	}
	want := map[string]string{
		".gitkeep":   "a dot-file",
		"bad+name":   "a name KES refuses",
		"dangling":   "a symlink that leads nowhere",
		"key-1~":     "an editor backup",
		"lost+found": "a directory",
		"notes.txt":  "a name with '.'",
	}
	if got := l.NotKeyNames(); len(got) != len(want) {
		t.Errorf("not keys: %q, want %d", got, len(want))
	}
	for _, p := range l.NotKeys {
		if !strings.HasPrefix(p.Reason, want[p.Name]) || want[p.Name] == "" {
			t.Errorf("%s: reason %q, want it to start with %q", p.Name, p.Reason, want[p.Name])
		}
	}
	if len(l.All) != len(l.Keys)+len(l.NotKeys)+len(l.Foreign) {
		t.Errorf("%d names, %d keys, %d not keys and %d not KES keys", len(l.All), len(l.Keys), len(l.NotKeys), len(l.Foreign))
	}
	if !strings.Contains(l.Check, "cross-checked by name against the directory") {
		t.Errorf("check: %q", l.Check)
	}
	if _, _, reason := parseEntry(nil); !strings.HasPrefix(reason, "the entry is empty") {
		t.Errorf("empty entry: %q", reason)
	}
	if _, format, reason := parseEntry(raw); reason != "" || format != formatV023 {
		t.Errorf("v0.23 key: format %q, reason %q", format, reason)
	}
}

// A store whose entries KES sealed with a Vault transit key: read through
// the config's transit key they are keys; read with a config that names no
// transit key, each is named as an entry KES cannot read (never a failure
// of the step).
func TestVaultTransitEntries(t *testing.T) {
	t.Parallel()
	v, root := vaultWithTransit(t, testenv.VaultOptions{})
	ctx := context.Background()
	role, err := v.CreateAppRole(ctx, "transit", transitPolicy(testenv.VaultKV1))
	if err != nil {
		t.Fatal(err)
	}
	conf := &kesconf.VaultKeyStore{Endpoint: v.URL, Engine: "kv1", Prefix: "kes",
		AppRole: &kesconf.VaultAppRoleAuth{ID: role.RoleID, Secret: role.SecretID},
		Transit: &kesconf.VaultTransit{KeyName: "kes"}}
	ks, err := conf.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}
	raw, err := k.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Create(ctx, "sealed-key", raw); err != nil {
		t.Fatal(err)
	}
	s, err := root.Logical().ReadWithContext(ctx, "kv1/kes/sealed-key")
	if err != nil || s == nil {
		t.Fatalf("read the raw entry: %v", err)
	}
	if stored, _ := s.Data["sealed-key"].(string); !strings.HasPrefix(stored, "vault:v1:") {
		t.Fatalf("the entry is not transit-sealed: %.20q", stored)
	}

	src, err := newSourceSet(ks, &kesconf.File{KeyStore: conf}, &storeListing{All: []string{"sealed-key"}, Keys: []string{"sealed-key"}}, "*")
	if err != nil {
		t.Fatal(err)
	}
	e, err := src.readEntry(ctx, "sealed-key")
	if err != nil || e.class != entryOK {
		t.Fatalf("with the transit key: %+v, %v", e, err)
	}
	e.wipe()

	plain := *conf
	plain.Transit = nil
	ks2, err := plain.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ks2.Close()
	src2, err := newSourceSet(ks2, &kesconf.File{KeyStore: &plain}, &storeListing{All: []string{"sealed-key"}, Keys: []string{"sealed-key"}}, "*")
	if err != nil {
		t.Fatal(err)
	}
	e, err = src2.readEntry(ctx, "sealed-key")
	if err != nil || e.class != entryUnparsable || !strings.Contains(e.reason, "transit key") {
		t.Fatalf("without the transit key: %+v, %v", e, err)
	}
}

// TestFSKeyStoreGetAnswersAsKES reads every kind of entry an operator's fs
// store holds through fsKeyStore and through KES's own fs store, and wants
// the same answer of both: the value, or the same error (the steps sort
// entries by the error's text and by kes.ErrKeyNotFound).
func TestFSKeyStoreGetAnswersAsKES(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, 32), HMAC: make([]byte, 32)}
	v024, err := k.MarshalV024()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"v024":  v024,
		"empty": nil,
		"s511":  []byte(strings.Repeat("x", 511)),
		"s512":  []byte(strings.Repeat("x", 512)),
		"s513":  []byte(strings.Repeat("x", 513)),
		"large": []byte(strings.Repeat("y", 1<<20+4096)), // KES reads its first MiB only
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "lost+found"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("v024", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	conf := &kesconf.File{KeyStore: &kesconf.FSKeyStore{Path: dir}}
	kes, err := conf.KeyStore.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fast := fastKeyStore(kes, conf)
	if _, ok := fast.(fsKeyStore); !ok {
		t.Fatalf("fastKeyStore of an fs store is %T, not fsKeyStore", fast)
	}
	for _, name := range []string{"v024", "empty", "s511", "s512", "s513", "large", "lost+found", "link", "dangling", "missing", "a.b", "", `a\b`, "../v024"} {
		want, wantErr := kes.Get(context.Background(), name)
		got, gotErr := fast.Get(context.Background(), name)
		if !slices.Equal(got, want) || fmt.Sprint(gotErr) != fmt.Sprint(wantErr) || errors.Is(gotErr, kesdk.ErrKeyNotFound) != errors.Is(wantErr, kesdk.ErrKeyNotFound) {
			t.Errorf("Get(%q) = %d bytes, %v; KES's fs store: %d bytes, %v", name, len(got), gotErr, len(want), wantErr)
		}
	}
	if got, _ := fast.Get(context.Background(), "large"); len(got) != 1<<20 {
		t.Errorf("Get(large) read %d bytes, want KES's 1 MiB", len(got))
	}
}

package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

func TestWriteFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.json")
	for _, content := range []string{"first", "second, longer content"} {
		if err := WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != content {
			t.Fatalf("content = %q, %v; want %q", b, err, content)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, %v", fi.Mode(), err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only plan.json", len(entries))
	}
}

func TestWriteFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("write into a missing dir succeeded")
	}
	// Rename onto a non-empty directory fails after the temp file is written.
	target := filepath.Join(dir, "target")
	os.MkdirAll(filepath.Join(target, "x"), 0o700)
	err := WriteFile(target, []byte("data"), 0o600)
	if err == nil {
		t.Fatal("rename onto a directory succeeded")
	}
	t.Log(err)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "target" {
		t.Errorf("temp file left behind: %v", entries)
	}
}

func TestSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "secrets"), 0o700)
	os.MkdirAll(filepath.Join(dir, "backups", "cutover.aistor"), 0o700)
	for _, name := range []string{
		"plan.json.0123456789abcdef.tmp", "secrets.json.fedcba9876543210.tmp", "user.tmp", "plan.json", "a.0123.tmp",
		"secrets/identity.aistor.api_key.00112233445566ff.tmp", "secrets/identity.aistor.api_key",
		"backups/cutover.aistor/node1.env.aabbccddeeff0011.tmp", "backups/cutover.aistor/node1.env",
	} {
		os.WriteFile(filepath.Join(dir, name), nil, 0o600)
	}
	os.Mkdir(filepath.Join(dir, "d.0123456789abcdef.tmp"), 0o700)
	got, err := Sweep(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"backups/cutover.aistor/node1.env.aabbccddeeff0011.tmp",
		"plan.json.0123456789abcdef.tmp",
		"secrets.json.fedcba9876543210.tmp",
		"secrets/identity.aistor.api_key.00112233445566ff.tmp",
	}
	if !slices.Equal(got, want) {
		t.Errorf("swept %q, want %q", got, want)
	}
	var left []string
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if rel, _ := filepath.Rel(dir, p); err == nil && !e.IsDir() {
			left = append(left, rel)
		}
		return nil
	})
	if want := []string{"a.0123.tmp", "backups/cutover.aistor/node1.env", "plan.json", "secrets/identity.aistor.api_key", "user.tmp"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "d.0123456789abcdef.tmp")); err != nil {
		t.Errorf("a directory named like a temp file was removed: %v", err)
	}
	if got, err := Sweep(filepath.Join(dir, "missing")); got != nil || err != nil {
		t.Errorf("sweep of missing dir = %v, %v", got, err)
	}
}

// recordDirSyncs records every directory fsync until the test ends.
func recordDirSyncs(t *testing.T) *[]string {
	var mu sync.Mutex
	synced := []string{}
	testOnlyDirSynced = func(dir string) {
		mu.Lock()
		defer mu.Unlock()
		synced = append(synced, dir)
	}
	t.Cleanup(func() { testOnlyDirSynced = nil })
	return &synced
}

func TestMkdirAll(t *testing.T) {
	root := t.TempDir()
	synced := recordDirSyncs(t)
	dir := filepath.Join(root, ".runbook", "migrate", "backups", "cutover.aistor")
	if err := MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// Every new level is fsynced into its parent, top down, before return.
	want := []string{root, filepath.Join(root, ".runbook"), filepath.Join(root, ".runbook", "migrate"), filepath.Join(root, ".runbook", "migrate", "backups")}
	if !slices.Equal(*synced, want) {
		t.Errorf("fsynced %q, want %q", *synced, want)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir = %v, %v; want a 0700 directory", fi, err)
	}
	// Once durable, a second call costs nothing; a sibling syncs its parent only.
	*synced = (*synced)[:0]
	if err := MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(root, ".runbook", "migrate", "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(root, ".runbook", "migrate")}; !slices.Equal(*synced, want) {
		t.Errorf("fsynced %q, want %q", *synced, want)
	}
	// A directory that exists but was not made durable by this process (a
	// run killed between mkdir and fsync) is fsynced into its parent.
	os.Mkdir(filepath.Join(root, "old"), 0o700)
	*synced = (*synced)[:0]
	if err := MkdirAll(filepath.Join(root, "old"), 0o700); err != nil {
		t.Fatal(err)
	}
	if want := []string{root}; !slices.Equal(*synced, want) {
		t.Errorf("fsynced %q, want %q", *synced, want)
	}
	// Removed since: made again.
	os.RemoveAll(filepath.Join(root, ".runbook", "migrate", "secrets"))
	if err := MkdirAll(filepath.Join(root, ".runbook", "migrate", "secrets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, ".runbook", "migrate", "secrets")); err != nil {
		t.Error(err)
	}
	// A file in the way is an error, not a directory.
	os.WriteFile(filepath.Join(root, "file"), nil, 0o600)
	if err := MkdirAll(filepath.Join(root, "file"), 0o700); err == nil {
		t.Error("MkdirAll over a file succeeded")
	}
}

func TestWriteFileThenSweepKeepsTarget(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash before rename.
	os.WriteFile(filepath.Join(dir, "f.00000000deadbeef.tmp"), []byte("half"), 0o600)
	got, err := Sweep(dir)
	if err != nil || len(got) != 1 {
		t.Fatalf("sweep = %v, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); errors.Is(err, os.ErrNotExist) {
		t.Fatal("sweep removed the target")
	}
}

// A file streamed through Create is in place only after Commit; Abort
// leaves the old content and no temp file.
func TestCreateCommitAbort(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "snapshot.tar")
	if err := WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("half"))
	f.Abort()
	f.Abort() // harmless twice
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("after Abort the file holds %q, want the old content", b)
	}
	f, err = Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	f.Write([]byte("new"))
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("before Commit the file holds %q, want the old content", b)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err == nil {
		t.Error("a second Commit succeeded")
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Errorf("after Commit the file holds %q, want %q", b, "new")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only the file", len(entries))
	}
}

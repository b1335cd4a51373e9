package engine

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "plan.json")
	for _, content := range []string{"first", "second, longer content"} {
		if err := WriteFileAtomic(path, []byte(content), 0o600); err != nil {
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

func TestWriteFileAtomicErrors(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFileAtomic(filepath.Join(dir, "missing", "f"), nil, 0o600); err == nil {
		t.Error("write into a missing dir succeeded")
	}
	// Rename onto a non-empty directory fails after the temp file is written.
	target := filepath.Join(dir, "target")
	os.MkdirAll(filepath.Join(target, "x"), 0o700)
	err := WriteFileAtomic(target, []byte("data"), 0o600)
	if err == nil {
		t.Fatal("rename onto a directory succeeded")
	}
	t.Log(err)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "target" {
		t.Errorf("temp file left behind: %v", entries)
	}
}

func TestSweepTempFiles(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"plan.json.0123456789abcdef.tmp", "secrets.json.fedcba9876543210.tmp", "user.tmp", "plan.json", "a.0123.tmp"} {
		os.WriteFile(filepath.Join(dir, name), nil, 0o600)
	}
	os.Mkdir(filepath.Join(dir, "d.0123456789abcdef.tmp"), 0o700)
	got, err := SweepTempFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"plan.json.0123456789abcdef.tmp", "secrets.json.fedcba9876543210.tmp"}; !slices.Equal(got, want) {
		t.Errorf("swept %q, want %q", got, want)
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if want := []string{"a.0123.tmp", "d.0123456789abcdef.tmp", "plan.json", "user.tmp"}; !slices.Equal(left, want) {
		t.Errorf("left %q, want %q", left, want)
	}
	if got, err := SweepTempFiles(filepath.Join(dir, "missing")); got != nil || err != nil {
		t.Errorf("sweep of missing dir = %v, %v", got, err)
	}
}

func TestWriteFileAtomicThenSweepKeepsTarget(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFileAtomic(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash before rename.
	os.WriteFile(filepath.Join(dir, "f.00000000deadbeef.tmp"), []byte("half"), 0o600)
	got, err := SweepTempFiles(dir)
	if err != nil || len(got) != 1 {
		t.Fatalf("sweep = %v, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); errors.Is(err, os.ErrNotExist) {
		t.Fatal("sweep removed the target")
	}
}

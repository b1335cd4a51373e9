package engine

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
)

// WriteFileAtomic writes data to path via path+".<random>.tmp": create
// (perm, subject to the umask), write, Sync, Close, Rename, fsync the
// directory. It removes the temp file on any error, so path holds either the
// old content or the new, never a mix.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	var (
		f   *os.File
		tmp string
	)
	for range 100 {
		var r [8]byte
		for i := range r {
			r[i] = byte(rand.Uint32())
		}
		tmp = path + "." + hex.EncodeToString(r[:]) + ".tmp"
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("create temp file: %w", err)
	}
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				f.Close()
			}
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write temp file: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("sync temp file: %w", err)
	}
	closed = true
	if err = f.Close(); err != nil {
		return fmt.Errorf("close temp file: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename temp file: %w", err)
	}
	if err = fsyncDirectory(dir); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// tempFilePattern matches the temp file names WriteFileAtomic makes, and
// nothing else, so that SweepTempFiles leaves other *.tmp files alone.
var tempFilePattern = regexp.MustCompile(`^.+\.[0-9a-f]{16}\.tmp$`)

// SweepTempFiles removes leftover temp files of WriteFileAtomic
// ("<name>.<16 hex digits>.tmp") in dir, not recursively, and returns the
// names it removed. A missing dir has nothing to sweep.
func SweepTempFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read dir: %w", err)
	}
	var (
		removed []string
		errs    []error
	)
	for _, e := range entries {
		if !e.Type().IsRegular() || !tempFilePattern.MatchString(e.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove temp file: %w", err))
			continue
		}
		removed = append(removed, e.Name())
	}
	return removed, errors.Join(errs...)
}

// mkdirSynced creates dir (mode 0700) if it does not exist and fsyncs its
// parent so that the new entry survives a crash.
func mkdirSynced(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return fsyncDirectory(filepath.Dir(filepath.Clean(dir)))
}

// fsyncDirectory fsyncs a directory, making renames, creations and removals in it
// durable.
func fsyncDirectory(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return err
	}
	return d.Close()
}

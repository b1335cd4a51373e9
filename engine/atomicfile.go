package engine

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
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
// ("<name>.<16 hex digits>.tmp") in dir and every directory below it (a
// crash can leave one wherever a file is written: secrets/, backups/STEP/,
// …), and returns their paths relative to dir, in lexical order. Symbolic
// links are not followed. A missing dir has nothing to sweep.
func SweepTempFiles(dir string) ([]string, error) {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	var (
		removed []string
		errs    []error
	)
	err := filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			errs = append(errs, fmt.Errorf("read dir: %w", err))
			if e != nil && e.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !e.Type().IsRegular() || !tempFilePattern.MatchString(e.Name()) {
			return nil
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove temp file: %w", err))
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		removed = append(removed, rel)
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	slices.Sort(removed)
	return removed, errors.Join(errs...)
}

// durableDirs holds the directories MkdirDurable made durable in this
// process, so that a directory written in often (logs/) costs one fsync.
var durableDirs sync.Map

// MkdirDurable creates dir and any missing parents with mode perm (subject
// to the umask) and fsyncs every level's parent, top down, before it
// returns, so that no file written in dir afterwards can be reached by a
// path that a crash (power loss) takes away. It does so for a dir that
// already exists too, once per process: a run killed between its mkdir and
// the fsync leaves a directory that only exists in the page cache.
func MkdirDurable(dir string, perm os.FileMode) error {
	dir = filepath.Clean(dir)
	if _, ok := durableDirs.Load(dir); ok {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return nil
		}
		durableDirs.Delete(dir) // removed since: make it again
	}
	// dir and its missing ancestors, up to the first that exists or was
	// made durable before.
	var levels []string
	for d := dir; ; {
		levels = append(levels, d)
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		if _, ok := durableDirs.Load(parent); ok {
			break
		}
		if _, err := os.Stat(parent); err == nil {
			break
		}
		d = parent
	}
	for i := len(levels) - 1; i >= 0; i-- {
		d := levels[i]
		if err := os.Mkdir(d, perm); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("create dir %s: %w", d, err)
		}
		if fi, err := os.Stat(d); err != nil {
			return fmt.Errorf("create dir %s: %w", d, err)
		} else if !fi.IsDir() {
			return fmt.Errorf("create dir %s: it exists and is not a directory", d)
		}
		if parent := filepath.Dir(d); parent != d {
			if err := fsyncDirectory(parent); err != nil {
				return fmt.Errorf("sync dir %s: %w", parent, err)
			}
		}
		durableDirs.Store(d, true)
	}
	return nil
}

// mkdirSynced creates a journal directory (mode 0700) durably.
func mkdirSynced(dir string) error { return MkdirDurable(dir, 0o700) }

// fsyncDirectory fsyncs a directory, making renames, creations and removals in it
// durable.
func fsyncDirectory(dir string) error {
	if testOnlyDirSynced != nil {
		testOnlyDirSynced(dir)
	}
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

// testOnlyDirSynced, when set by a test, is told of every directory fsync.
var testOnlyDirSynced func(dir string)

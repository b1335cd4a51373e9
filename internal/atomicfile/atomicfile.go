// Package atomicfile writes whole files so that a crash at any instant
// leaves either the old content or the new, never a mix, and makes
// directories durable. It is the one writer of whole files for the engine
// (plans, secrets, backups), the steps (key-store snapshots) and the Key
// Manager emulator (its TLS files).
//
// A file is written to path+".<16 hex digits>.tmp" beside it: create,
// write, fsync, close, rename over path, fsync the directory (as
// litestream's file replica client does). A crash can leave such a temp
// file; Sweep removes them.
package atomicfile

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

// File is a file being written atomically: write to it, then Commit to put
// it in place, or Abort to leave the old content. Its *os.File is the temp
// file (Chmod and Chown act on what Commit puts in place).
type File struct {
	*os.File
	path string
	done bool
}

// Create starts writing path: it creates a temp file beside it with perm
// (subject to the umask). The caller must Commit or Abort it.
func Create(path string, perm os.FileMode) (*File, error) {
	var (
		f   *os.File
		err error
	)
	for range 100 {
		var r [8]byte
		for i := range r {
			r[i] = byte(rand.Uint32())
		}
		f, err = os.OpenFile(path+"."+hex.EncodeToString(r[:])+".tmp", os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create temp file: %w", err)
	}
	return &File{File: f, path: path}, nil
}

// Commit fsyncs the temp file, renames it over the target and fsyncs the
// directory. On error the temp file is removed and the target is as it was
// (or, if only the directory fsync failed, already the new content).
func (f *File) Commit() (err error) {
	if f.done {
		return errors.New("commit temp file: already committed or aborted")
	}
	f.done = true
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err = f.Sync(); err != nil {
		f.File.Close()
		return fmt.Errorf("sync temp file: %w", err)
	}
	if err = f.File.Close(); err != nil {
		return fmt.Errorf("close temp file: %w", err)
	}
	if err = os.Rename(tmp, f.path); err != nil {
		return fmt.Errorf("rename temp file: %w", err)
	}
	if err := SyncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("sync dir %s: %w", filepath.Dir(f.path), err)
	}
	return nil
}

// Abort removes the temp file; the target keeps its old content. It is
// harmless after Commit, so `defer f.Abort()` covers every error path.
func (f *File) Abort() {
	if f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
}

// WriteFile writes data to path atomically with perm (subject to the umask).
func WriteFile(path string, data []byte, perm os.FileMode) error {
	f, err := Create(path, perm)
	if err != nil {
		return err
	}
	defer f.Abort()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write temp file: %w", err)
	}
	return f.Commit()
}

// tempFilePattern matches the temp file names Create makes, and nothing
// else, so that Sweep leaves other *.tmp files alone.
var tempFilePattern = regexp.MustCompile(`^.+\.[0-9a-f]{16}\.tmp$`)

// Sweep removes leftover temp files of Create ("<name>.<16 hex
// digits>.tmp") in dir and every directory below it (a crash can leave one
// wherever a file is written: secrets/, backups/STEP/, …), and returns
// their paths relative to dir, in lexical order. Symbolic links are not
// followed. A missing dir has nothing to sweep.
func Sweep(dir string) ([]string, error) {
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

// durableDirs holds the directories MkdirAll made durable in this process,
// so that a directory written in often (logs/) costs one fsync.
var durableDirs sync.Map

// MkdirAll creates dir and any missing parents with mode perm (subject to
// the umask) and fsyncs every level's parent, top down, before it returns,
// so that no file written in dir afterwards can be reached by a path that
// a crash (power loss) takes away. It does so for a dir that already
// exists too, once per process: a run killed between its mkdir and the
// fsync leaves a directory that only exists in the page cache.
func MkdirAll(dir string, perm os.FileMode) error {
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
			if err := SyncDir(parent); err != nil {
				return fmt.Errorf("sync dir %s: %w", parent, err)
			}
		}
		durableDirs.Store(d, true)
	}
	return nil
}

// SyncDir fsyncs a directory, making renames, creations and removals in it
// durable.
func SyncDir(dir string) error {
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

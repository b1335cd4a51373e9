package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// lockFileName is the name of the lock file inside a journal directory.
const lockFileName = "lock"

// The lock is a file dir/lock holding a JSON owner record, plus flock(2) on
// it. The flock says whether the holder is alive: the kernel drops it when
// the holder's process dies, however it dies. The owner record outlives the
// process, so a lock file with an owner record but no flock was left by a
// process that is gone (stale). AcquireLock takes a stale lock over when its
// owner ran on this host and its process is gone (README.md, "Using it": kill -9,
// then runbook resume); any other stale lock stays until broken explicitly
// (BreakLock, `runbook unlock`).
//
// Liveness is only reliable within one host: flock on a network file system
// may be emulated or not shared between hosts, and a process id means
// nothing on another host, so a lock from another host is never taken over.

// LockOwner describes the process that holds (or held) a lock.
type LockOwner struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	Started time.Time `json:"started"`
	Command string    `json:"command"`
}

// String returns e.g. "pid 4242 on host build-7 (runbook apply), since 2026-11-26T17:03:00Z".
func (o LockOwner) String() string {
	if o == (LockOwner{}) {
		return "an unknown owner"
	}
	return fmt.Sprintf("pid %d on host %s (%s), since %s",
		o.PID, o.Host, o.Command, o.Started.UTC().Format(time.RFC3339))
}

var (
	// ErrLocked means the lock is held by a live process.
	ErrLocked = errors.New("journal is locked by another run")
	// ErrStaleLock means the lock file exists but its owner process is gone.
	ErrStaleLock = errors.New("journal lock was left by a process that is gone")
)

// LockError reports a lock that could not be taken or broken.
type LockError struct {
	Err   error // ErrLocked or ErrStaleLock
	Owner LockOwner
	Path  string // the lock file
}

func (e *LockError) Error() string {
	return fmt.Sprintf("%v: %s (lock file %s)", e.Err, e.Owner, e.Path)
}

func (e *LockError) Unwrap() error { return e.Err }

// Lock is a held journal lock.
type Lock struct {
	f        *os.File
	path     string
	owner    LockOwner
	tookOver *LockOwner
}

// Owner returns the owner record this lock wrote.
func (l *Lock) Owner() LockOwner { return l.owner }

// TookOver returns the owner of the stale lock this one replaced, or nil
// when the lock was free. Callers report it: the operator should know that
// an earlier run ended without releasing its lock.
func (l *Lock) TookOver() *LockOwner { return l.tookOver }

// AcquireLock creates dir (0700) if needed and takes the lock file dir/lock
// (0600). If a live process holds it, it returns a *LockError wrapping
// ErrLocked. If the file holds the owner record of a process that is gone
// (no flock), it takes the lock over when that owner ran on this host (same
// host name) and its process no longer exists (see ownerGone), and reports
// the old owner through TookOver; otherwise it returns a *LockError wrapping
// ErrStaleLock and leaves the lock in place. Once it holds the lock it
// writes and fsyncs its owner record and keeps the lock until Release.
// command describes the holder, e.g. "runbook apply".
func AcquireLock(dir, command string) (*Lock, error) {
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create journal dir: %w", err)
	}
	path := filepath.Join(dir, lockFileName)
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lock file: %w", err)
		}
		locked, err := tryFlock(f, syscall.LOCK_EX)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !locked {
			owner := waitLockOwner(f)
			f.Close()
			return nil, &LockError{Err: ErrLocked, Owner: owner, Path: path}
		}
		// A holder releasing (or BreakLock) removes the file while holding
		// the flock; if we locked an inode that is no longer at path, retry.
		if same, err := lockSameFile(f, path); err != nil || !same {
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("lock %s: %w", path, err)
			}
			continue
		}
		owner, err := readLockOwner(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read lock file: %w", err)
		}
		l := &Lock{f: f, path: path}
		if owner != nil {
			if !ownerGone(*owner) {
				f.Close() // releases the flock: we do not hold a stale lock
				return nil, &LockError{Err: ErrStaleLock, Owner: *owner, Path: path}
			}
			// We hold the flock of a lock whose owner is gone: replace its
			// record (a shorter record must not leave the old one's tail).
			if err := f.Truncate(0); err != nil {
				f.Close()
				return nil, fmt.Errorf("take over lock file: %w", err)
			}
			l.tookOver = owner
		}
		if err := l.writeOwner(command); err != nil {
			l.Release()
			return nil, err
		}
		return l, nil
	}
}

func (l *Lock) writeOwner(command string) error {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown"
	}
	l.owner = LockOwner{PID: os.Getpid(), Host: host, Started: time.Now().UTC(), Command: command}
	js, err := json.Marshal(l.owner)
	if err != nil {
		return fmt.Errorf("encode lock owner: %w", err)
	}
	if _, err := l.f.WriteAt(append(js, '\n'), 0); err != nil {
		return fmt.Errorf("write lock file: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("sync lock file: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(l.path)); err != nil {
		return fmt.Errorf("sync journal dir: %w", err)
	}
	return nil
}

// Release empties and removes the lock file, then unlocks and closes it.
// Releasing twice is harmless.
func (l *Lock) Release() error {
	if l.f == nil {
		return nil
	}
	var errs []error
	// Empty first: a crash between the two steps leaves an empty file,
	// which the next AcquireLock takes over rather than calling it stale.
	if err := l.f.Truncate(0); err != nil {
		errs = append(errs, fmt.Errorf("empty lock file: %w", err))
	}
	if err := os.Remove(l.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove lock file: %w", err))
	}
	if err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN); err != nil {
		errs = append(errs, fmt.Errorf("unlock lock file: %w", err))
	}
	if err := l.f.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close lock file: %w", err))
	}
	l.f = nil
	return errors.Join(errs...)
}

// InspectLock reports the current owner (nil if there is no lock file or it
// is empty) and whether a live process holds the lock. It briefly takes a
// shared flock to test; an AcquireLock racing with it may report ErrLocked.
func InspectLock(dir string) (owner *LockOwner, alive bool, err error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("open lock file: %w", err)
	}
	defer f.Close()
	locked, err := tryFlock(f, syscall.LOCK_SH)
	if err != nil {
		return nil, false, fmt.Errorf("lock %s: %w", path, err)
	}
	owner, err = readLockOwner(f)
	if err != nil {
		return nil, false, fmt.Errorf("read lock file: %w", err)
	}
	return owner, !locked, nil // closing f drops our shared flock
}

// BreakLock removes a stale lock and returns its owner (nil if there was no
// lock file or it was empty). It refuses with a *LockError wrapping ErrLocked
// when a live process holds the lock.
func BreakLock(dir string) (*LockOwner, error) {
	path := filepath.Join(dir, lockFileName)
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("open lock file: %w", err)
		}
		locked, err := tryFlock(f, syscall.LOCK_EX)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if !locked {
			owner := waitLockOwner(f)
			f.Close()
			return nil, &LockError{Err: ErrLocked, Owner: owner, Path: path}
		}
		if same, err := lockSameFile(f, path); err != nil || !same {
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("lock %s: %w", path, err)
			}
			continue // removed or replaced meanwhile: look again
		}
		owner, err := readLockOwner(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("read lock file: %w", err)
		}
		// Remove while holding the flock, so no one can take it meanwhile.
		err = os.Remove(path)
		if err == nil {
			err = atomicfile.SyncDir(dir)
		}
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("remove lock file: %w", err)
		}
		return owner, nil
	}
}

// ownerGone reports whether the owner of a lock whose flock is free can be
// known to be gone: it ran on this host (same host name) and no process with
// its pid exists, or the one that does is a zombie or started after the
// owner wrote its record (the pid was reused). A record from another host,
// or one that could not be parsed, is never judged gone: only the operator
// can tell (runbook unlock).
func ownerGone(o LockOwner) bool {
	host, err := os.Hostname()
	if err != nil || o.Host == "" || o.Host != host || o.PID <= 0 {
		return false
	}
	if o.PID == os.Getpid() {
		return false // this very process: alive, whatever its flock says
	}
	err = syscall.Kill(o.PID, 0)
	if errors.Is(err, syscall.ESRCH) {
		return true
	}
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A process with that pid exists (EPERM: of another user).
	started, zombie, ok := procStart(o.PID)
	if !ok {
		return false
	}
	// The record is written after the process started; a process that
	// started later (beyond clock-tick rounding) is another one.
	return zombie || started.After(o.Started.Add(2*time.Second))
}

// procStart reads a process's start time and whether it is a zombie from
// Linux's /proc (proc(5): /proc/PID/stat fields 3 "state" and 22
// "starttime", in clock ticks since boot; /proc/stat "btime", seconds since
// the epoch). ok is false where /proc is not available.
func procStart(pid int) (started time.Time, zombie, ok bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return time.Time{}, false, false
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, false, false
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 20 { // fields[0] is field 3, fields[19] is field 22
		return time.Time{}, false, false
	}
	zombie = fields[0] == "Z" || fields[0] == "X"
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return time.Time{}, false, false
	}
	boot, err := bootTime()
	if err != nil {
		return time.Time{}, false, false
	}
	// USER_HZ is 100 on every Linux architecture Go supports.
	const userHZ = 100
	return boot.Add(time.Duration(ticks) * time.Second / userHZ), zombie, true
}

// bootTime reads "btime" from /proc/stat.
func bootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, err
			}
			return time.Unix(secs, 0), nil
		}
	}
	return time.Time{}, errors.New("no btime in /proc/stat")
}

// tryFlock attempts a non-blocking flock; it returns false if another open
// file description holds a conflicting lock.
func tryFlock(f *os.File, how int) (bool, error) {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return false, nil
		default:
			return false, err
		}
	}
}

// lockSameFile reports whether path still names the file open as f.
func lockSameFile(f *os.File, path string) (bool, error) {
	fi, err := f.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(fi, pi), nil
}

// readLockOwner reads the owner record from the start of f: nil if the file is
// empty, a zero LockOwner if it holds something unparsable (e.g. a write
// torn by a crash).
func readLockOwner(f *os.File) (*LockOwner, error) {
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<20))
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, nil
	}
	var o LockOwner
	if err := json.Unmarshal(b, &o); err != nil {
		return &LockOwner{}, nil
	}
	return &o, nil
}

// waitLockOwner reads the owner record of a lock held by someone else,
// giving a holder that has just taken the flock a moment to write it.
func waitLockOwner(f *os.File) LockOwner {
	for range 20 {
		if o, err := readLockOwner(f); err != nil || o != nil {
			if o == nil {
				return LockOwner{}
			}
			return *o
		}
		time.Sleep(10 * time.Millisecond)
	}
	return LockOwner{}
}

// reportTakeover says, when the lock replaced a stale one, whose it was.
func (x *execution) reportTakeover(l *Lock) {
	if o := l.TookOver(); o != nil {
		x.emit(Event{Type: EventWarning, Message: fmt.Sprintf("took over the journal lock left by %s: that process is gone, on this host", o)})
	}
}

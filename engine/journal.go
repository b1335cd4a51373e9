package engine

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// JournalFile is the name of the journal inside a journal directory.
const JournalFile = "journal.log"

// ErrJournalCorrupt is wrapped by every error that reports damage to a
// journal other than a torn last record.
var ErrJournalCorrupt = errors.New("journal is damaged")

// Record is one journal entry. The journal itself does not interpret Kind;
// Replay does.
type Record struct {
	Seq   uint64          `json:"seq"`
	Time  time.Time       `json:"time"`
	Kind  RecordKind      `json:"kind"`
	Step  string          `json:"step,omitempty"`
	State State           `json:"state,omitempty"`
	Item  string          `json:"item,omitempty"`
	Error string          `json:"error,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
}

// RecordKind says what a journal record holds.
type RecordKind string

// The kinds of record the executor writes. Their names are what journals
// hold: they never change.
const (
	RecordRun        RecordKind = "run"        // a run began: Data is its RunInfo
	RecordTargets    RecordKind = "targets"    // an apply carried the run further: Data lists its targets
	RecordPlan       RecordKind = "plan"       // a saved plan was applied: Data is its PlanRecord
	RecordState      RecordKind = "state"      // Step changed State (Error: why; Data: the attempt)
	RecordCheckpoint RecordKind = "checkpoint" // Step finished Item; Data is the step's own JSON
	RecordOutput     RecordKind = "output"     // Step's outputs (Data)
	RecordNote       RecordKind = "note"       // why Step's rollback failed (Error)
)

// Journal is an append-only, crash-safe log of a run, stored as
// dir/journal.log. Each line is one record:
//
//	<8 lowercase hex digits: CRC-32C of JSON> <space> <JSON> <newline>
//
// Sequence numbers start at 1 and increase by 1. A record is durable
// (fsynced) before Append returns. A Journal is safe for concurrent use.
type Journal struct {
	path string
	f    *os.File

	mu      sync.Mutex // guards the fields below and every write to f
	synced  *sync.Cond // signalled (with mu) when an fsync ends
	seq     uint64     // sequence number of the last record written to f
	durable uint64     // every record with Seq <= durable has been fsynced
	syncing bool       // an fsync is in progress (run without holding mu)
	err     error      // sticky: after a failed write or fsync, nothing more is appended
	closed  bool

	fsyncs atomic.Uint64 // number of fsyncs issued (for tests and benchmarks)
}

var journalCRCTable = crc32.MakeTable(crc32.Castagnoli)

// maxJournalLine bounds one record's line; a longer line is treated as damage
// rather than read into memory without limit.
const maxJournalLine = 64 << 20

// OpenJournal opens (creating with mode 0700, file 0600) the journal in dir
// for appending, after reading every existing record. A torn last record (no
// trailing newline, or a bad checksum on the very last line, as a crash
// mid-write leaves) is discarded: the file is truncated to the last good
// record and a warning is returned that says so (offset and length). Any
// other damage (a bad record followed by good ones, a sequence gap,
// unparsable JSON with a valid checksum) returns an error wrapping
// ErrJournalCorrupt that names the file, line number and what is wrong, and
// changes nothing.
//
// OpenJournal does not take the run lock; callers hold it (AcquireLock).
func OpenJournal(dir string) (j *Journal, records []Record, warnings []string, err error) {
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, nil, fmt.Errorf("create journal dir: %w", err)
	}
	path := filepath.Join(dir, JournalFile)
	created := true
	f, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		created = false
		f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open journal: %w", err)
	}
	if created {
		if err := atomicfile.SyncDir(dir); err != nil {
			f.Close()
			return nil, nil, nil, fmt.Errorf("sync journal dir: %w", err)
		}
	}
	res, err := scanJournal(path, f)
	if err != nil {
		f.Close()
		return nil, nil, nil, fmt.Errorf("open journal: %w", err)
	}
	if res.torn != nil {
		if err := f.Truncate(res.goodLen); err != nil {
			f.Close()
			return nil, nil, nil, fmt.Errorf("truncate torn journal record: %w", err)
		}
		warnings = append(warnings, fmt.Sprintf(
			"journal %s: discarded torn last record at offset %d (%d bytes): %s",
			path, res.torn.offset, res.torn.length, res.torn.reason))
	}
	// Records a killed process wrote but never fsynced may be read from the
	// page cache: make what the caller acts on durable (and the truncation).
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, nil, nil, fmt.Errorf("sync journal: %w", err)
	}
	j = &Journal{path: path, f: f, seq: uint64(len(res.records))}
	j.durable = j.seq
	j.synced = sync.NewCond(&j.mu)
	return j, res.records, warnings, nil
}

// ReadJournal reads the journal in dir without modifying anything (for
// status and show). It makes the same checks as OpenJournal; a torn last
// record is reported as a warning and left in place. A missing journal is an
// error that wraps fs.ErrNotExist.
func ReadJournal(dir string) (records []Record, warnings []string, err error) {
	path := filepath.Join(dir, JournalFile)
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read journal: %w", err)
	}
	defer f.Close()
	res, err := scanJournal(path, f)
	if err != nil {
		return nil, nil, fmt.Errorf("read journal: %w", err)
	}
	if res.torn != nil {
		warnings = append(warnings, fmt.Sprintf(
			"journal %s: ignoring torn last record at offset %d (%d bytes): %s; it is discarded when the journal is next opened for writing",
			path, res.torn.offset, res.torn.length, res.torn.reason))
	}
	return res.records, warnings, nil
}

// Append sets r.Seq (next sequence number) and r.Time (if zero,
// time.Now().UTC()), writes the record and returns only after it is
// fsynced. Concurrent appenders share fsyncs (group commit): an fsync covers
// every record written before it started, and records are written while an
// fsync runs, so N appenders cost about one fsync per round, not N.
//
// After a failed write or fsync the journal refuses further appends: the
// file may end in a partial record, and after a failed fsync the kernel may
// have dropped the written data. Reopening the journal discards a torn tail.
func (j *Journal) Append(r *Record) error { return j.AppendAll([]*Record{r}) }

// AppendAll appends records in order, as Append does each, in one write and
// under one fsync: a batch of checkpoints costs one fsync, not one round of
// group commit per record. A crash may leave any prefix of the batch (the
// last line possibly torn, which OpenJournal discards).
func (j *Journal) AppendAll(rs []*Record) error {
	if len(rs) == 0 {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return fmt.Errorf("append journal record: %w", os.ErrClosed)
	}
	if j.err != nil {
		return fmt.Errorf("append journal record: journal failed earlier: %w", j.err)
	}
	var buf []byte
	recs := make([]Record, len(rs))
	now := time.Now().UTC()
	for i, r := range rs {
		rec := *r
		rec.Seq = j.seq + uint64(i) + 1
		if rec.Time.IsZero() {
			rec.Time = now
		}
		line, err := encodeJournalLine(&rec)
		if err != nil {
			return fmt.Errorf("append journal record: %w", err)
		}
		buf = append(buf, line...)
		recs[i] = rec
	}
	if _, err := j.f.Write(buf); err != nil {
		j.err = err
		return fmt.Errorf("append journal record: %w", err)
	}
	j.seq += uint64(len(rs))
	for i, r := range rs {
		r.Seq, r.Time = recs[i].Seq, recs[i].Time
	}
	if err := j.waitDurable(j.seq); err != nil {
		return fmt.Errorf("append journal record: %w", err)
	}
	return nil
}

// waitDurable returns once the record seq is fsynced. If no fsync is running
// it starts one (releasing mu meanwhile, so others keep writing); otherwise
// it waits for the running one, which may already cover seq. mu is held.
func (j *Journal) waitDurable(seq uint64) error {
	for j.durable < seq {
		if j.err != nil {
			return fmt.Errorf("journal failed earlier: %w", j.err)
		}
		if j.syncing {
			j.synced.Wait()
			continue
		}
		j.syncing = true
		target := j.seq // every record written so far is covered
		j.mu.Unlock()
		j.fsyncs.Add(1)
		err := j.f.Sync()
		j.mu.Lock()
		j.syncing = false
		j.synced.Broadcast()
		if err != nil {
			if j.err == nil {
				j.err = err
			}
			return fmt.Errorf("sync journal: %w", err)
		}
		j.durable = max(j.durable, target)
	}
	return nil
}

// Close closes the journal file. Appends still waiting for their fsync are
// covered by a final one and succeed; later Appends fail with os.ErrClosed.
// Closing twice is harmless.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil
	}
	j.closed = true // no new records from here on
	for j.syncing {
		j.synced.Wait()
	}
	// Appenders still waiting for an fsync are covered by this one.
	if j.err == nil && j.durable < j.seq {
		j.fsyncs.Add(1)
		if err := j.f.Sync(); err != nil {
			j.err = err
		} else {
			j.durable = j.seq
		}
		j.synced.Broadcast()
		if j.err != nil {
			j.f.Close()
			return fmt.Errorf("sync journal: %w", j.err)
		}
	}
	if err := j.f.Close(); err != nil {
		return fmt.Errorf("close journal: %w", err)
	}
	return nil
}

// encodeJournalLine returns r as one journal line, newline included.
func encodeJournalLine(r *Record) ([]byte, error) {
	js, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encode journal record: %w", err)
	}
	line := make([]byte, 0, 9+len(js)+1)
	line = fmt.Appendf(line, "%08x ", crc32.Checksum(js, journalCRCTable))
	line = append(line, js...)
	return append(line, '\n'), nil
}

type journalTornTail struct {
	offset, length int64
	reason         string
}

type journalScan struct {
	records []Record
	goodLen int64            // length of the file up to the end of the last good record
	torn    *journalTornTail // non-nil if the file ends in a torn record
}

// scanJournal reads and checks every record. Only a damaged final line (no
// newline, or a bad checksum/format on the last line) counts as torn; any
// other problem is an error wrapping ErrJournalCorrupt.
func scanJournal(path string, rd io.Reader) (journalScan, error) {
	var res journalScan
	br := bufio.NewReaderSize(rd, 64<<10)
	var (
		off     int64
		lineNo  int
		pending *journalTornTail // a bad line that is torn only if nothing follows it
		pendNo  int
	)
	for {
		line, err := readJournalLine(br)
		if len(line) == 0 && err == io.EOF {
			break
		}
		if err == errJournalLineTooLong {
			return res, journalCorrupt(path, lineNo+1, "line longer than %d bytes", maxJournalLine)
		}
		if err != nil && err != io.EOF {
			return res, fmt.Errorf("%s: %w", path, err)
		}
		lineNo++
		if pending != nil {
			return res, journalCorrupt(path, pendNo, "%s, and line %d follows it, so this is not a torn final write", pending.reason, lineNo)
		}
		if err == io.EOF { // final line without newline: torn write
			res.torn = &journalTornTail{offset: off, length: int64(len(line)), reason: "no trailing newline"}
			break
		}
		body := line[:len(line)-1]
		js, reason := checkJournalLine(body)
		if reason != "" {
			pending = &journalTornTail{offset: off, length: int64(len(line)), reason: reason}
			pendNo = lineNo
			off += int64(len(line))
			continue
		}
		var rec Record
		if err := json.Unmarshal(js, &rec); err != nil {
			return res, journalCorrupt(path, lineNo, "checksum is valid but the record is not a journal record: %v", err)
		}
		if want := uint64(len(res.records)) + 1; rec.Seq != want {
			return res, journalCorrupt(path, lineNo, "sequence number %d where %d was expected", rec.Seq, want)
		}
		res.records = append(res.records, rec)
		off += int64(len(line))
		res.goodLen = off
	}
	if pending != nil {
		res.torn = pending
	}
	return res, nil
}

var errJournalLineTooLong = errors.New("journal line too long")

// readJournalLine returns the next line including its newline. At the end of the
// file it returns the remaining bytes (without newline) and io.EOF.
func readJournalLine(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			buf = append(buf, frag...)
			if len(buf) > maxJournalLine {
				return nil, errJournalLineTooLong
			}
			continue
		}
		if buf == nil {
			return bytes.Clone(frag), err
		}
		return append(buf, frag...), err
	}
}

// checkJournalLine validates the checksum framing of a line (newline removed) and
// returns its JSON, or a reason why it is bad.
func checkJournalLine(body []byte) (js []byte, reason string) {
	if len(body) < 10 || body[8] != ' ' {
		return nil, "not a checksummed record"
	}
	for _, c := range body[:8] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return nil, "not a checksummed record"
		}
	}
	stored, _ := strconv.ParseUint(string(body[:8]), 16, 32)
	js = body[9:]
	if sum := crc32.Checksum(js, journalCRCTable); uint32(stored) != sum {
		return nil, fmt.Sprintf("checksum mismatch (stored %08x, computed %08x)", stored, sum)
	}
	return js, ""
}

func journalCorrupt(path string, line int, format string, args ...any) error {
	return fmt.Errorf("%s: line %d: %s: %w", path, line, fmt.Sprintf(format, args...), ErrJournalCorrupt)
}

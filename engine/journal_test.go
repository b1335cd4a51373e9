package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeJournal creates a journal with n records in a new directory and
// returns the directory and the file's bytes.
func writeJournal(t testing.TB, n int) (string, []byte) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "j")
	j, _, _, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		r := Record{Kind: "checkpoint", Step: "keys", Item: fmt.Sprintf("key-%d", i),
			Data: json.RawMessage(`{"n":` + strconv.Itoa(i) + `}`)}
		if err := j.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, readJournalBytes(t, dir)
}

func readJournalBytes(t testing.TB, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, JournalFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func setJournalBytes(t testing.TB, dir string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, JournalFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func recordsEqual(a, b Record) bool {
	var da, db bytes.Buffer
	if len(a.Data) > 0 && json.Compact(&da, a.Data) != nil || len(b.Data) > 0 && json.Compact(&db, b.Data) != nil {
		return false
	}
	return a.Seq == b.Seq && a.Time.Equal(b.Time) && a.Kind == b.Kind && a.Step == b.Step &&
		a.State == b.State && a.Item == b.Item && a.Error == b.Error && bytes.Equal(da.Bytes(), db.Bytes())
}

func TestJournalRoundTrip(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "state", "journal")
	j, recs, warns, err := OpenJournal(dir)
	if err != nil || len(recs) != 0 || len(warns) != 0 {
		t.Fatalf("OpenJournal on new dir = %v, %v, %v", recs, warns, err)
	}
	fixed := time.Date(2026, 11, 26, 17, 3, 0, 123456789, time.UTC)
	in := []Record{
		{Kind: "run", Data: json.RawMessage(`{"plan":"abc","vars":{"x":1}}`)},
		{Kind: "state", Step: "migration.keys", State: "running", Time: fixed},
		{Kind: "checkpoint", Step: "migration.keys", Item: "key \"1\"\n<&>", Data: json.RawMessage(`"é"`)},
		{Kind: "state", Step: "migration.keys", State: "failed", Error: "export key \"k\" from kes: boom"},
		{Kind: "note", Data: json.RawMessage(`"free text"`)},
		{Kind: "checkpoint", Step: "big", Data: json.RawMessage(`"` + strings.Repeat("x", 3<<20) + `"`)},
	}
	for i := range in {
		if err := j.Append(&in[i]); err != nil {
			t.Fatal(err)
		}
		if in[i].Seq != uint64(i+1) || in[i].Time.IsZero() {
			t.Fatalf("record %d: Seq %d, Time %v", i, in[i].Seq, in[i].Time)
		}
	}
	if !in[1].Time.Equal(fixed) {
		t.Errorf("Append replaced a set Time: %v", in[1].Time)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := j.Append(&Record{Kind: "note"}); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Append after Close = %v, want os.ErrClosed", err)
	}

	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v, %v; want 0700", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Join(dir, JournalFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode = %v, %v; want 0600", fi.Mode(), err)
	}

	// On-disk format: "%08x <json>\n" with CRC-32C.
	for i, line := range strings.Split(strings.TrimSuffix(string(readJournalBytes(t, dir)), "\n"), "\n") {
		sum, js, ok := strings.Cut(line, " ")
		want := fmt.Sprintf("%08x", crc32.Checksum([]byte(js), crc32.MakeTable(crc32.Castagnoli)))
		if !ok || sum != want {
			t.Errorf("line %d: checksum %q, want %q", i+1, sum, want)
		}
	}

	check := func(name string, got []Record, warns []string, err error) {
		t.Helper()
		if err != nil || len(warns) != 0 {
			t.Fatalf("%s: warnings %q, error %v", name, warns, err)
		}
		if len(got) != len(in) {
			t.Fatalf("%s: %d records, want %d", name, len(got), len(in))
		}
		for i := range in {
			if !recordsEqual(got[i], in[i]) {
				t.Errorf("%s: record %d = %+v, want %+v", name, i, got[i], in[i])
			}
		}
	}
	got, warns, err := ReadJournal(dir)
	check("ReadJournal", got, warns, err)
	j, got, warns, err = OpenJournal(dir)
	check("OpenJournal", got, warns, err)
	defer j.Close()
	r := Record{Kind: "note"}
	if err := j.Append(&r); err != nil || r.Seq != uint64(len(in)+1) {
		t.Fatalf("Append after reopen: Seq %d, %v", r.Seq, err)
	}
}

func TestReadJournalMissing(t *testing.T) {
	t.Parallel()
	if _, _, err := ReadJournal(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ReadJournal on empty dir = %v, want ErrNotExist", err)
	}
}

func TestJournalConcurrentAppend(t *testing.T) {
	t.Parallel()
	const goroutines, each = 16, 40
	dir := t.TempDir()
	j, _, _, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			var last uint64
			for i := range each {
				r := Record{Kind: "checkpoint", Step: strconv.Itoa(g), Item: strconv.Itoa(i)}
				if err := j.Append(&r); err != nil {
					errs <- err
					return
				}
				if r.Seq <= last {
					errs <- fmt.Errorf("goroutine %d: Seq %d after %d", g, r.Seq, last)
					return
				}
				last = r.Seq
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	fsyncs := j.fsyncs.Load()
	j.Close()
	t.Logf("%d appends, %d fsyncs", goroutines*each, fsyncs)

	recs, warns, err := ReadJournal(dir)
	if err != nil || len(warns) != 0 {
		t.Fatalf("ReadJournal: %q, %v", warns, err)
	}
	if len(recs) != goroutines*each {
		t.Fatalf("%d records, want %d", len(recs), goroutines*each)
	}
	seen := map[string]bool{}
	next := map[string]int{}
	for i, r := range recs {
		if r.Seq != uint64(i+1) {
			t.Fatalf("record %d has Seq %d", i, r.Seq)
		}
		key := r.Step + "/" + r.Item
		if seen[key] {
			t.Fatalf("duplicate record %s", key)
		}
		seen[key] = true
		if n, _ := strconv.Atoi(r.Item); n != next[r.Step] {
			t.Fatalf("goroutine %s: item %s out of order", r.Step, r.Item)
		}
		next[r.Step]++
	}
}

func TestJournalTornTail(t *testing.T) {
	t.Parallel()
	dir0, good := writeJournal(t, 5)
	_ = dir0
	extra, err := encodeJournalLine(&Record{Seq: 6, Time: time.Now().UTC(), Kind: "state", Step: "s", State: "done"})
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(extra)
	flipped[len(flipped)/2] ^= 0x01
	badSum := bytes.Clone(extra)
	badSum[0] = 'x'
	tails := map[string][]byte{
		"half a line":         extra[:len(extra)/2],
		"no newline":          extra[:len(extra)-1],
		"flipped byte":        flipped,
		"bad checksum digits": badSum,
		"abc line":            []byte("abc\n"),
		"abc":                 []byte("abc"),
		"empty line":          []byte("\n"),
		"zeros":               make([]byte, 100),
	}
	for name, tail := range tails {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			damaged := append(bytes.Clone(good), tail...)
			setJournalBytes(t, dir, damaged)

			recs, warns, err := ReadJournal(dir)
			if err != nil || len(recs) != 5 || len(warns) != 1 {
				t.Fatalf("ReadJournal = %d records, %q, %v", len(recs), warns, err)
			}
			if !bytes.Equal(readJournalBytes(t, dir), damaged) {
				t.Fatal("ReadJournal changed the file")
			}

			j, recs, warns, err := OpenJournal(dir)
			if err != nil || len(recs) != 5 || len(warns) != 1 {
				t.Fatalf("OpenJournal = %d records, %q, %v", len(recs), warns, err)
			}
			t.Log(warns[0])
			want := fmt.Sprintf("at offset %d (%d bytes)", len(good), len(tail))
			if !strings.Contains(warns[0], want) {
				t.Errorf("warning %q does not say %q", warns[0], want)
			}
			if !bytes.Equal(readJournalBytes(t, dir), good) {
				t.Fatal("OpenJournal did not truncate to the last good record")
			}
			r := Record{Kind: "note"}
			if err := j.Append(&r); err != nil || r.Seq != 6 {
				t.Fatalf("Append after truncation: Seq %d, %v", r.Seq, err)
			}
			j.Close()
			recs, warns, err = ReadJournal(dir)
			if err != nil || len(recs) != 6 || len(warns) != 0 {
				t.Fatalf("after append: %d records, %q, %v", len(recs), warns, err)
			}
		})
	}
}

// wantCorrupt checks that both readers refuse the journal with an error
// naming the file and the line, and leave the file unchanged.
func wantCorrupt(t *testing.T, dir string, line int, what string) {
	t.Helper()
	before := readJournalBytes(t, dir)
	for name, read := range map[string]func() error{
		"ReadJournal": func() error { _, _, err := ReadJournal(dir); return err },
		"OpenJournal": func() error {
			j, _, _, err := OpenJournal(dir)
			if j != nil {
				j.Close()
			}
			return err
		},
	} {
		err := read()
		if !errors.Is(err, ErrJournalCorrupt) {
			t.Fatalf("%s = %v, want ErrJournalCorrupt", name, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, filepath.Join(dir, JournalFile)) || !strings.Contains(msg, fmt.Sprintf("line %d:", line)) || !strings.Contains(msg, what) {
			t.Errorf("%s error %q should name the file, line %d and %q", name, msg, line, what)
		}
		if !bytes.Equal(readJournalBytes(t, dir), before) {
			t.Fatalf("%s changed the file", name)
		}
	}
	t.Log(read0(dir))
}

func read0(dir string) error { _, _, err := ReadJournal(dir); return err }

func TestJournalDamageInMiddle(t *testing.T) {
	t.Parallel()
	dir, good := writeJournal(t, 10)
	lines := bytes.SplitAfter(good, []byte("\n"))
	lines[2][20] ^= 0x04 // inside the JSON of record 3
	setJournalBytes(t, dir, bytes.Join(lines, nil))
	wantCorrupt(t, dir, 3, "checksum mismatch")
}

func TestJournalBadLastLineThenPartial(t *testing.T) {
	t.Parallel()
	// Two damaged lines at the end is more than one torn write.
	dir, good := writeJournal(t, 3)
	setJournalBytes(t, dir, append(bytes.Clone(good), "abc\ndef"...))
	wantCorrupt(t, dir, 4, "not a checksummed record")
}

func encodeLines(t *testing.T, recs ...Record) []byte {
	t.Helper()
	var b []byte
	for i := range recs {
		line, err := encodeJournalLine(&recs[i])
		if err != nil {
			t.Fatal(err)
		}
		b = append(b, line...)
	}
	return b
}

func rawLine(js string) []byte {
	return fmt.Appendf(nil, "%08x %s\n", crc32.Checksum([]byte(js), crc32.MakeTable(crc32.Castagnoli)), js)
}

func TestJournalSeqGap(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	dir := t.TempDir()
	setJournalBytes(t, dir, encodeLines(t, Record{Seq: 1, Time: now, Kind: "run"}, Record{Seq: 2, Time: now, Kind: "note"},
		Record{Seq: 4, Time: now, Kind: "note"}, Record{Seq: 5, Time: now, Kind: "note"}))
	wantCorrupt(t, dir, 3, "sequence number 4 where 3 was expected")

	// A gap on the last line has a valid checksum: not a torn write.
	setJournalBytes(t, dir, encodeLines(t, Record{Seq: 1, Time: now, Kind: "run"}, Record{Seq: 3, Time: now, Kind: "note"}))
	wantCorrupt(t, dir, 2, "sequence number 3 where 2 was expected")

	setJournalBytes(t, dir, encodeLines(t, Record{Seq: 2, Time: now, Kind: "run"}))
	wantCorrupt(t, dir, 1, "sequence number 2 where 1 was expected")
}

func TestJournalBadJSONValidChecksum(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC()
	for _, js := range []string{`{"seq":"two"}`, `[1,2]`, `{"seq":2,`, `{"seq":2,"time":"yesterday"}`} {
		dir := t.TempDir()
		b := append(encodeLines(t, Record{Seq: 1, Time: now, Kind: "run"}), rawLine(js)...)
		setJournalBytes(t, dir, b)
		wantCorrupt(t, dir, 2, "checksum is valid but the record is not a journal record")
	}
}

func TestJournalEmptyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	setJournalBytes(t, dir, nil)
	recs, warns, err := ReadJournal(dir)
	if err != nil || len(recs) != 0 || len(warns) != 0 {
		t.Fatalf("ReadJournal(empty) = %v, %q, %v", recs, warns, err)
	}
}

func FuzzReadJournal(f *testing.F) {
	_, good := writeJournal(f, 4)
	f.Add(good)
	f.Add([]byte{})
	f.Add(good[:len(good)-7])
	f.Add(append(bytes.Clone(good), "abc\n"...))
	mid := bytes.Clone(good)
	mid[len(mid)/2] ^= 1
	f.Add(mid)
	f.Add(rawLine(`{"seq":1,"time":"2026-11-26T17:03:00+01:00","kind":"run","data":{ "a" : [1, 2] }}`))
	f.Add(rawLine(`{"seq":1,"time":"0000-01-01T00:00:00Z","kind":"x","data":null,"step":"\u00e9\ud800"}`))
	f.Fuzz(func(t *testing.T, content []byte) {
		dir := t.TempDir()
		setJournalBytes(t, dir, content)
		recs, warns, err := ReadJournal(dir)
		if !bytes.Equal(readJournalBytes(t, dir), content) {
			t.Fatal("ReadJournal changed the file")
		}
		if err != nil {
			if !errors.Is(err, ErrJournalCorrupt) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if len(warns) > 1 {
			t.Fatalf("more than one warning: %q", warns)
		}
		var again []byte
		for i := range recs {
			line, err := encodeJournalLine(&recs[i])
			if err != nil {
				t.Fatalf("record %d was read but cannot be written: %v", i+1, err)
			}
			again = append(again, line...)
		}
		setJournalBytes(t, dir, again)
		recs2, warns2, err := ReadJournal(dir)
		if err != nil || len(warns2) != 0 || len(recs2) != len(recs) {
			t.Fatalf("re-read: %d records (want %d), %q, %v", len(recs2), len(recs), warns2, err)
		}
		for i := range recs {
			if !recordsEqual(recs[i], recs2[i]) {
				t.Fatalf("record %d: %+v, re-read as %+v", i+1, recs[i], recs2[i])
			}
		}
	})
}

// BenchmarkAppendParallel measures group commit: run with -cpu 1,8 to
// compare one appender with eight (RunParallel starts GOMAXPROCS goroutines).
func BenchmarkAppendParallel(b *testing.B) {
	j, _, _, err := OpenJournal(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	data := json.RawMessage(`{"key":"` + strings.Repeat("k", 100) + `","imported":true}`)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r := Record{Kind: "checkpoint", Step: "migration.keys", Item: "key", Data: data}
			if err := j.Append(&r); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(j.fsyncs.Load())/float64(b.N), "fsyncs/record")
}

func TestJournalCloseDuringAppends(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	j, _, _, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range 8 {
		wg.Go(func() {
			for {
				if err := j.Append(&Record{Kind: "note"}); err != nil {
					if !errors.Is(err, os.ErrClosed) {
						t.Errorf("Append: %v", err)
					}
					return
				}
				mu.Lock()
				ok++
				mu.Unlock()
			}
		})
	}
	time.Sleep(20 * time.Millisecond)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	recs, _, err := ReadJournal(dir)
	if err != nil || len(recs) != ok {
		t.Fatalf("%d records after %d successful appends, %v", len(recs), ok, err)
	}
}

// A batch is appended in order under consecutive sequence numbers, durable
// under one fsync, and reads back like records appended one by one.
func TestJournalAppendAll(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	j, _, _, err := OpenJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.Append(&Record{Kind: "run"}); err != nil {
		t.Fatal(err)
	}
	before := j.fsyncs.Load()
	batch := []*Record{{Kind: "checkpoint", Step: "s.a", Item: "key/1"}, {Kind: "checkpoint", Step: "s.a", Item: "key/2"}, {Kind: "checkpoint", Step: "s.a", Item: "key/3"}}
	if err := j.AppendAll(batch); err != nil {
		t.Fatal(err)
	}
	if n := j.fsyncs.Load() - before; n != 1 {
		t.Errorf("a batch of 3 records took %d fsyncs, want 1", n)
	}
	for i, r := range batch {
		if r.Seq != uint64(i+2) || r.Time.IsZero() {
			t.Errorf("record %d: seq %d time %v, want seq %d and a time", i, r.Seq, r.Time, i+2)
		}
	}
	if err := j.AppendAll(nil); err != nil {
		t.Errorf("empty batch: %v", err)
	}
	j.Close()
	recs, _, err := ReadJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	var items []string
	for _, r := range recs {
		items = append(items, fmt.Sprintf("%d:%s", r.Seq, r.Item))
	}
	if got, want := strings.Join(items, " "), "1: 2:key/1 3:key/2 4:key/3"; got != want {
		t.Errorf("read back %q, want %q", got, want)
	}
}

// A step's time is its attempts' own time, not the gap before a resume;
// after a rollback, the step's start and time are the rollback's.
func TestReplayStepTimes(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var recs []Record
	add := func(kind RecordKind, state State, at time.Duration) {
		recs = append(recs, Record{Seq: uint64(len(recs) + 1), Time: t0.Add(at), Kind: kind, Step: "s.a", State: state})
	}
	recs = append(recs, Record{Seq: 1, Time: t0, Kind: "run", Data: json.RawMessage(`{"id":"r1"}`)})
	add("state", StateRunning, 0)
	add("state", StateInterrupted, time.Second)
	add("state", StateRunning, 10*time.Second)
	add("state", StateDone, 12*time.Second)
	js, err := Replay(recs)
	if err != nil {
		t.Fatal(err)
	}
	st := js.Steps["s.a"]
	if st.Started != t0 || st.Elapsed != 3*time.Second || st.Attempts != 2 {
		t.Fatalf("after a resumed apply: started %v, elapsed %v, attempts %d; want %v, 3s, 2", st.Started, st.Elapsed, st.Attempts, t0)
	}
	add("state", StateRollingBack, 20*time.Second)
	add("state", StateInterrupted, 21*time.Second)
	add("state", StateRollingBack, 30*time.Second)
	add("state", StateRolledBack, 32*time.Second)
	if js, err = Replay(recs); err != nil {
		t.Fatal(err)
	}
	st = js.Steps["s.a"]
	if st.Started != t0.Add(20*time.Second) || st.Elapsed != 3*time.Second || st.State != StateRolledBack {
		t.Fatalf("after a rollback resumed once: started %v, elapsed %v, state %s; want the rollback's start, 3s", st.Started, st.Elapsed, st.State)
	}
}

// A family reads back exactly the keys of its own items: a name of
// another item, or the bare prefix, is none of its.
func TestFamilyKey(t *testing.T) {
	t.Parallel()
	f := NewFamily[struct{}]("key/")
	for name, want := range map[string]string{"key/a": "a", "key/a/b": "a/b", "key/": "", "keys/a": "", "rollback/key/a": "", "key": ""} {
		k, ok := f.Key(name)
		if k != want && ok || ok != (want != "") {
			t.Errorf("Key(%q) = %q, %v; want %q", name, k, ok, want)
		}
	}
	if got := f.Item("a/b").Name(); got != "key/a/b" {
		t.Errorf("Item(a/b).Name() = %q", got)
	}
}

// A hint travels with its error through wrapping and joining, apart from
// the error's text, in the order it was attached.
func TestHints(t *testing.T) {
	t.Parallel()
	err := WithHint(errors.New("enclave e holds keys"), "delete them first")
	err = fmt.Errorf("roll back enclave.e: %w", WithHint(err, "or roll back --to enclave.e"))
	err = errors.Join(err, WithHint(errors.New("other"), "delete them first"))
	if got, want := err.Error(), "roll back enclave.e: enclave e holds keys\nother"; got != want {
		t.Errorf("Error() = %q, want %q: a hint is not part of the text", got, want)
	}
	if got, want := Hints(err), []string{"delete them first", "or roll back --to enclave.e"}; !slices.Equal(got, want) {
		t.Errorf("Hints = %q, want %q", got, want)
	}
	if WithHint(nil, "x") != nil || Hints(nil) != nil {
		t.Error("a hint on no error is no error")
	}
	if r := RefuseWithHint("h", "no %s", "way"); !errors.Is(r, ErrRefused) || r.Error() != "refused for safety: no way" || !slices.Equal(Hints(r), []string{"h"}) {
		t.Errorf("RefuseWithHint = %v (hints %q)", r, Hints(r))
	}
}

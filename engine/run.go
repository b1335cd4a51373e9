package engine

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zclconf/go-cty/cty"

	"github.com/runbook-dev/runbook/internal/atomicfile"
)

// Run is what a step sees while it plans, applies or rolls back: its decoded
// configuration's metadata, its checkpoints and outputs from the journal, and
// the ways to record progress. Every text it writes is redacted.
type Run struct {
	Addr    string
	Decoded *Decoded

	x           *execution
	mu          sync.Mutex
	checkpoints map[string]json.RawMessage
	order       []string
	outputs     map[string]cty.Value
	attempt     int
	resumed     bool
	lastProg    time.Time
	progStart   time.Time
	progDone0   int64
}

// newRun is the Run a step sees: its decoded configuration, the
// checkpoints the journal holds for it (st), and outs (for a rollback, the
// outputs recorded). A rollback counts as resumed: it works from what an
// earlier command did.
func (x *execution) newRun(addr string, d *Decoded, st *StepState, outs map[string]cty.Value) *Run {
	r := &Run{Addr: addr, Decoded: d, x: x, checkpoints: maps.Clone(st.Checkpoints), order: slices.Clone(st.Order), outputs: maps.Clone(outs), resumed: st.Attempts > 0 || x.op == opRollback}
	if r.checkpoints == nil {
		r.checkpoints = map[string]json.RawMessage{}
	}
	if r.outputs == nil {
		r.outputs = map[string]cty.Value{}
	}
	return r
}

// Resumed reports whether an earlier attempt of this step started (after an
// interruption, a failure or a crash); its checkpoints are in Checkpoints.
func (r *Run) Resumed() bool { return r.resumed }

// Forced reports whether the operator forced a rollback that a step refused
// as unsafe (runbook rollback --force). A step honouring it must still show
// what it found.
func (r *Run) Forced() bool { return r.x.opts.Force }

// BeforeApply reports whether this is the quiet plan that an apply makes
// first, in this process (apply FILE, or apply DIR planning again): unless
// a step or a check after it refuses (the journal lock, a changed
// fingerprint, missing approvals), the apply follows at once. A step may
// start there a read-only observation its apply will need (through Memo),
// so that it runs while the steps before it do; the apply must judge how
// old it is (verification_served.go in steps/ does).
func (r *Run) BeforeApply() bool { return r.x.op == opPlan && r.x.opts.beforeApply }

// Planning reports whether this is a plan (runbook plan, or the quiet plan
// an apply makes first): every step observes read-only, at about the same
// moment, so a step may share through Memo what another step's plan
// observed of the same thing; an apply observes afresh what it acts on.
func (r *Run) Planning() bool { return r.x.op == opPlan }

// Attempt is 1 for the first try, 2 for the first retry, and so on.
func (r *Run) Attempt() int { return r.attempt }

// Checkpoint records that one item of the step's work is done, durably, before
// it returns. data is the step's own JSON; it must hold no secret. Steps
// declare their items (Item, Family in item.go) and record through them;
// the raw name is what the cutover uses until it is converted.
func (r *Run) Checkpoint(item string, data any) error {
	return r.CheckpointAll([]CheckpointItem{{Item: item, Data: data}})
}

// CheckpointItem is one item of CheckpointAll: its name and the step's JSON.
type CheckpointItem struct {
	Item string
	Data any
}

// CheckpointAll records items as Checkpoint does each, durably under one
// fsync before it returns: for a step that finishes many items at once. A
// crash may leave any prefix of them recorded.
func (r *Run) CheckpointAll(items []CheckpointItem) error {
	recs := make([]*Record, len(items))
	raws := make([]json.RawMessage, len(items))
	for i, it := range items {
		if r.x.rd.Contains(it.Item) {
			// Written verbatim: redacted, it would name another item.
			return Refusef("checkpoint of %s: an item name holds a sensitive value (not shown); rename it, or change the secret so that no item name contains it", r.Addr)
		}
		raw, err := json.Marshal(it.Data)
		if err != nil {
			return fmt.Errorf("encode checkpoint %q: %w", it.Item, err)
		}
		raws[i] = json.RawMessage(r.x.rd.String(string(raw)))
		recs[i] = &Record{Kind: RecordCheckpoint, Step: r.Addr, Item: it.Item, Data: raws[i]}
	}
	if err := r.x.appendAll(recs); err != nil {
		return err
	}
	r.mu.Lock()
	for i, it := range items {
		if _, seen := r.checkpoints[it.Item]; !seen {
			r.order = append(r.order, it.Item)
		}
		r.checkpoints[it.Item] = raws[i]
	}
	r.mu.Unlock()
	for _, hook := range []func(step, item string){AfterCheckpoint, r.x.opts.AfterCheckpoint} {
		if hook == nil {
			continue
		}
		for _, it := range items {
			hook(r.Addr, it.Item)
		}
	}
	return nil
}

// AfterCheckpoint, when not nil, is called with the step's address and the
// item once a checkpoint is durable. Only tests set it: cmd/runbook's test
// binary kills itself there (kill -9 at a chosen item) to prove resume and
// rollback from exactly that journal.
var AfterCheckpoint func(step, item string)

// Checkpoints returns the items recorded so far by this and earlier
// attempts, by raw name (steps read through their declared Items).
func (r *Run) Checkpoints() map[string]json.RawMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]json.RawMessage, len(r.checkpoints))
	for k, v := range r.checkpoints {
		out[k] = v
	}
	return out
}

// CheckpointOrder returns the items in the order they were recorded.
func (r *Run) CheckpointOrder() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.order...)
}

// CheckpointData returns the data recorded for item by this or an earlier
// attempt (Checkpoints; steps read through their declared Items).
func (r *Run) CheckpointData(item string) (json.RawMessage, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	raw, ok := r.checkpoints[item]
	return raw, ok
}

// everRecorded returns every checkpoint this step recorded in the run's
// journal, those a rollback cleared included (Family.EverRecorded), read
// from the journal as it is now. No journal yet: none.
func (r *Run) everRecorded() (map[string]json.RawMessage, error) {
	js, _, err := LoadJournal(r.x.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st := js.Step(r.Addr)
	all := maps.Clone(st.Cleared)
	if all == nil {
		all = map[string]json.RawMessage{}
	}
	maps.Copy(all, st.Checkpoints)
	return all, nil
}

// StepStates returns, by address, the state of every step of type typ in
// the runbook (for example "cutover"), read from the journal as it is now,
// so that a rollback sees what this very command undid before it. No
// journal yet: every step is pending.
func (r *Run) StepStates(typ string) (map[string]State, error) {
	js, _, err := LoadJournal(r.x.dir)
	if errors.Is(err, os.ErrNotExist) {
		js, err = Replay(nil)
	}
	if err != nil {
		return nil, err
	}
	out := map[string]State{}
	for _, b := range r.x.cfg.Blocks {
		if b.Type == typ && b.BlockType.Kind == KindStep {
			out[b.Addr()] = js.Step(b.Addr()).State
		}
	}
	return out, nil
}

// UpstreamPlans returns, by address, the plans this command made of the
// steps of type typ that this step depends on, directly or through other
// blocks (a plan walks the graph, so theirs are made before this step's
// Plan is called); nil for such a step whose plan failed. A step of that
// type not planned by this command (outside a plan, or not selected) is
// absent. A step's plan may thus judge what an earlier step will have done
// by the time it runs (the keys a migration will import).
func (r *Run) UpstreamPlans(typ string) map[string]*StepPlan {
	out := map[string]*StepPlan{}
	r.x.plannedMu.Lock()
	defer r.x.plannedMu.Unlock()
	for a := range r.x.s.Graph.Ancestors(r.Addr) {
		b := r.x.cfg.Block(a)
		if b == nil || b.Type != typ || b.BlockType.Kind != KindStep {
			continue
		}
		if p, ok := r.x.planned[a]; ok {
			out[a] = p
		}
	}
	return out
}

// UpstreamPending lists, sorted, the steps this step depends on (directly
// or through other blocks) that this command's journal does not record
// done: they run before it, and may change what its plan observes now.
func (r *Run) UpstreamPending() []string {
	var out []string
	for a := range r.x.s.Graph.Ancestors(r.Addr) {
		b := r.x.cfg.Block(a)
		if b == nil || b.BlockType.Kind != KindStep || r.x.js.Step(a).State == StateDone {
			continue
		}
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// HasCheckpoint reports whether item was recorded.
func (r *Run) HasCheckpoint(item string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.checkpoints[item]
	return ok
}

// SetOutput sets one of the step's declared outputs. Sensitive outputs (as the
// block type declares them) are kept in the journal dir's secrets/, never in
// the journal itself.
func (r *Run) SetOutput(name string, v cty.Value) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outputs[name] = v
}

// Outputs returns the outputs set so far (on rollback: those recorded).
func (r *Run) Outputs() map[string]cty.Value {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]cty.Value, len(r.outputs))
	for k, v := range r.outputs {
		out[k] = v
	}
	return out
}

// Logf writes a line to the step's log and to the output.
func (r *Run) Logf(format string, args ...any) {
	msg := r.x.rd.String(fmt.Sprintf(format, args...))
	r.x.emit(Event{Type: EventLog, Step: r.Addr, Message: msg})
	r.x.logLine(r.Addr, msg)
}

// Warnf reports something the operator should read.
func (r *Run) Warnf(format string, args ...any) {
	r.x.emit(Event{Type: EventWarning, Step: r.Addr, Message: r.Addr + ": " + fmt.Sprintf(format, args...)})
}

// Progress reports items done of total; the output shows it at most every
// couple of seconds with rate and ETA.
func (r *Run) Progress(done, total int64) {
	r.mu.Lock()
	now := time.Now()
	if r.progStart.IsZero() {
		r.progStart, r.progDone0 = now, done
	}
	if now.Sub(r.lastProg) < r.x.progressEvery && done < total {
		r.mu.Unlock()
		return
	}
	r.lastProg = now
	elapsed := now.Sub(r.progStart).Seconds()
	start := r.progDone0
	r.mu.Unlock()
	e := Event{Type: EventProgress, Step: r.Addr, Done: done, Total: total}
	if elapsed > 0 && done > start {
		e.Rate = float64(done-start) / elapsed
		if total > done {
			e.ETA = (time.Duration(float64(total-done)/e.Rate) * time.Second).Round(time.Second).String()
		}
	}
	r.x.emit(e)
}

// Path resolves a path written in the runbook against the runbook's folder.
func (r *Run) Path(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(r.x.cfg.Dir, p)
}

// Memo returns what steps keep under key for the rest of the session (one
// process: the quiet plan that apply FILE makes first, then the apply),
// made by make the first time any step of any plan or apply of the session
// asks; concurrent callers wait for it. It is for read-only observations
// that stay true while the process runs, so that the apply does not observe
// again what its plan did, or for one a plan starts for its apply
// (BeforeApply) that the apply takes and judges by its age: a step keeps
// there nothing it must judge anew (a step still checks what it acts on),
// and nothing that is ever written out holds a secret (a client it keeps
// holds its credentials in memory only, as the step's own would). What a
// quiet plan keeps in memory for its apply alone (key values it read)
// implements Releaser, released when the apply ends. key must be
// comparable; a step's own type in it keeps steps apart.
func (r *Run) Memo(key any, make func() any) any {
	e, _ := r.x.s.memo.LoadOrStore(key, &memoEntry{})
	m := e.(*memoEntry)
	m.once.Do(func() {
		m.v = make()
		m.made.Store(true)
	})
	return m.v
}

// ReadFile reads a file the runbook names (relative to its folder) and
// records its digest: a saved plan is bound to every file it read.
func (r *Run) ReadFile(p string) ([]byte, error) {
	path := r.Path(p)
	b, err := os.ReadFile(path)
	if err == nil {
		r.x.recordInput("file "+path, sha256Hex(b))
	}
	return b, err
}

// BindFile binds the plan to a file that a step will run or hand to a
// program (an exec step's program and scripts): it records the SHA-256 of its
// content like ReadFile, without keeping the content. Applying a saved plan
// (or resuming its run), it also refuses (ErrRefused) a file whose content is
// not the one the plan was checked with, so that what runs is what was
// reviewed, however long after the check it runs.
func (r *Run) BindFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	digest := hex.EncodeToString(h.Sum(nil))
	name := "file " + path
	if want, ok := r.x.bound[name]; ok && want != digest {
		return Refusef("%s changed since the plan was checked (SHA-256 %s, now %s): it is not what was reviewed. Make a new plan and have it reviewed", path, short(want), short(digest))
	}
	r.x.recordInput(name, digest)
	return nil
}

// RecordInput binds the plan to something observed that is not a file, for
// example a digest of the key names in a key store.
func (r *Run) RecordInput(name, digest string) { r.x.recordInput(name, digest) }

// Connection is one decoded connection block of the runbook.
type Connection struct {
	Addr  string // type.name
	Block Block
}

// Connections returns every connection block of the given type (for
// example "aistor") in the runbook, decoded, in the runbook's order, whether
// or not this step refers to it: a rollback asks the object store whether
// it still uses what the rollback would delete, though the step never
// changes the object store. An error names a block that does not decode.
func (r *Run) Connections(typ string) ([]Connection, error) {
	var out []Connection
	for _, b := range r.x.cfg.Blocks {
		if b.Type != typ || b.BlockType.Kind != KindConnection {
			continue
		}
		addr := b.Addr()
		blk := r.x.s.Scope.connection(addr)
		if blk == nil {
			// Not on this command's path (a targeted run): decode it as apply would.
			if err := r.x.s.decodeConnection(b); err != nil {
				return nil, err
			}
			blk = r.x.s.Scope.connection(addr)
		}
		out = append(out, Connection{Addr: addr, Block: blk})
	}
	return out, nil
}

// JournalDir is the run's journal directory.
func (r *Run) JournalDir() string { return r.x.dir }

// Redact replaces registered secrets in s.
func (r *Run) Redact(s string) string { return r.x.rd.String(s) }

// AddSecret registers values that must never be shown (for example a
// credential read from a file).
func (r *Run) AddSecret(values ...string) { r.x.rd.Add(values...) }

// RedactedWriter returns a writer that redacts before writing to w.
func (r *Run) RedactedWriter(w io.Writer) *RedactWriter { return r.x.rd.Writer(w) }

// SecretPath is the file in the journal dir's secrets/ that WriteSecret
// writes name to, for messages that must name it.
func (r *Run) SecretPath(name string) string { return r.secretPath(name) }

// secretPath is where a sensitive value of this step lives.
func (r *Run) secretPath(name string) string {
	return filepath.Join(r.x.dir, "secrets", r.Addr+"."+name)
}

// WriteSecret stores a sensitive value in the journal dir's secrets/ (0600),
// atomically, and registers it for redaction.
func (r *Run) WriteSecret(name string, value []byte) error {
	r.AddSecret(string(value))
	dir := filepath.Join(r.x.dir, "secrets")
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create secrets dir: %w", err)
	}
	if err := atomicfile.WriteFile(r.secretPath(name), value, 0o600); err != nil {
		return fmt.Errorf("write secret %s: %w", name, err)
	}
	return nil
}

// ReadSecret reads a value WriteSecret stored; os.ErrNotExist when there is none.
func (r *Run) ReadSecret(name string) ([]byte, error) {
	b, err := os.ReadFile(r.secretPath(name))
	if err == nil {
		r.AddSecret(string(b))
	}
	return b, err
}

// BackupPath is where a backup file of this step named name lives, in the
// journal dir's backups/ (0700). Steps write it with atomicfile.WriteFile(…, 0600).
func (r *Run) BackupPath(name string) (string, error) {
	dir := filepath.Join(r.x.dir, "backups", r.Addr)
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create backups dir: %w", err)
	}
	return filepath.Join(dir, name), nil
}

// LogPath is a file in the journal dir's logs/ for this step (for example an
// exec step's captured stdout). What goes there must be redacted first.
func (r *Run) LogPath(name string) (string, error) {
	dir := filepath.Join(r.x.dir, "logs")
	if err := atomicfile.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create logs dir: %w", err)
	}
	return filepath.Join(dir, r.Addr+"."+name), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

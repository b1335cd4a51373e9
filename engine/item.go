package engine

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Item is one named checkpoint of a step, whose data is a T (the step's own
// JSON; it must hold no secret). A step declares its items once, together
// at the top of its main file, so that its whole durable state reads in
// one place, and reads and writes its checkpoints only through them.
//
// An item's name is what the journal records (Record.Item): once released
// it must never change, or journals written before would no longer resume
// (testdata/journals holds journals written by earlier trees, and
// testdata/scripts/journal_compat_*.txtar resumes and rolls them back).
type Item[T any] struct{ name string }

// NewItem declares a single checkpoint item named name.
func NewItem[T any](name string) Item[T] { return Item[T]{name: name} }

// Name is the item's name in the journal.
func (i Item[T]) Name() string { return i.name }

// Done reports whether the item is recorded (by this or an earlier
// attempt, and not cleared by a rollback since).
func (i Item[T]) Done(c Checkpoints) bool {
	_, ok := c.CheckpointData(i.name)
	return ok
}

// Get returns the item's data; ok is false when it is not recorded. The
// error says the recorded data is not a T.
func (i Item[T]) Get(c Checkpoints) (v T, ok bool, err error) {
	raw, ok := c.CheckpointData(i.name)
	if !ok {
		return v, false, nil
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, true, fmt.Errorf("decode checkpoint %q: %w", i.name, err)
	}
	return v, true, nil
}

// Put records the item with data v, durably, before it returns.
func (i Item[T]) Put(w CheckpointWriter, v T) error {
	return w.CheckpointAll([]CheckpointItem{i.With(v)})
}

// With is the item with data v, for a batch recorded under one fsync
// (CheckpointWriter.CheckpointAll).
func (i Item[T]) With(v T) CheckpointItem { return CheckpointItem{Item: i.name, Data: v} }

// Family is a set of checkpoint items of one kind, keyed by name (a key's
// name, a node, an object): the item of key k is recorded as prefix+k, and
// only the family reads a name back. No other item or family of the step
// may have a name that starts with the prefix.
type Family[T any] struct{ prefix string }

// NewFamily declares a family of checkpoint items named prefix+KEY.
func NewFamily[T any](prefix string) Family[T] { return Family[T]{prefix: prefix} }

// Item is the family's item of key.
func (f Family[T]) Item(key string) Item[T] { return Item[T]{name: f.prefix + key} }

// Key returns the key of an item name of this family; ok is false for the
// name of another item.
func (f Family[T]) Key(name string) (key string, ok bool) {
	key, ok = strings.CutPrefix(name, f.prefix)
	return key, ok && key != ""
}

// Keys returns the keys recorded, in the order they were first recorded.
func (f Family[T]) Keys(c Checkpoints) []string {
	var keys []string
	for _, name := range c.CheckpointOrder() {
		if k, ok := f.Key(name); ok {
			keys = append(keys, k)
		}
	}
	return keys
}

// All returns the data of every item recorded, by key.
func (f Family[T]) All(c Checkpoints) (map[string]T, error) {
	out := map[string]T{}
	for _, k := range f.Keys(c) {
		v, _, err := f.Item(k).Get(c)
		if err != nil {
			return nil, err
		}
		out[k] = v
	}
	return out, nil
}

// EverRecorded returns, by key, every item of the family that r's step
// recorded in the run's journal, including those a rollback of the step
// cleared since (All no longer shows them), each with its latest data: a
// step reads what an earlier rollback did, for example which names it
// deleted. At plan, when no run holds the journal, it is read as it is.
func (f Family[T]) EverRecorded(r *Run) (map[string]T, error) {
	recorded, err := r.everRecorded()
	if err != nil {
		return nil, err
	}
	out := map[string]T{}
	for name, raw := range recorded {
		if k, ok := f.Key(name); ok {
			var v T
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("decode checkpoint %q: %w", name, err)
			}
			out[k] = v
		}
	}
	return out, nil
}

// Checkpoints is what items are read from: a step's *Run (its journal), or
// a test's stand-in.
type Checkpoints interface {
	// CheckpointData returns the data recorded for the item name.
	CheckpointData(name string) (json.RawMessage, bool)
	// CheckpointOrder returns the names recorded, in the order they were
	// first recorded.
	CheckpointOrder() []string
}

// CheckpointWriter is what items are recorded to: a step's *Run, or a
// test's stand-in.
type CheckpointWriter interface {
	// CheckpointAll records the items durably, under one fsync, before it
	// returns.
	CheckpointAll([]CheckpointItem) error
}

var (
	_ Checkpoints      = (*Run)(nil)
	_ CheckpointWriter = (*Run)(nil)
)

package emulator

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Readings choose how the emulator answers where the vendor's client
// leaves the Key Manager's behaviour open (docs/emulator.md; docs/domain.md, "Key Manager readings").
// The zero value is the most demanding reading of each.
type Readings struct {
	// WriteAnswer: how a write command is answered. WriteEmpty (default):
	// it adds nothing to the body, so a request of write commands only is
	// answered 200 with an empty body. WriteFrames: one empty frame per
	// write command. kms-go closes the body of a write unread
	// (client.go CreateKey, ImportKey, DeleteKey...), so either is valid.
	WriteAnswer string
	// Mixed: a request that mixes read and write commands. MixedRefuse
	// (default): refused with 400 before any command runs. MixedAccept:
	// run in order. kms-go cmds/command.go IsWrite: "A server may choose to
	// not accept multiple commands within a single request that do and do
	// not change the server's state".
	Mixed string
	// Batch: a request of several commands of which one fails.
	// BatchPartial (default): the commands before it stay committed and
	// the answer is the failed command's error. BatchAtomic: none is.
	Batch string
	// DeletedNames: whether the name of a deleted key may be created or
	// imported again. DeletedTombstoned (default): no, answered
	// ErrKeyExists (kms-go request.go DeleteKeyRequest: "Once a key version
	// has been removed it cannot be added again"). DeletedReusable: yes.
	DeletedNames string
}

// Reading values. The first of each pair is the default.
const (
	WriteEmpty        = "empty"
	WriteFrames       = "frames"
	MixedRefuse       = "refuse"
	MixedAccept       = "accept"
	BatchPartial      = "partial"
	BatchAtomic       = "atomic"
	DeletedTombstoned = "tombstoned"
	DeletedReusable   = "reusable"
)

// ErrReading is returned by Start for a reading that is not one.
var ErrReading = errors.New("emulator: unknown reading")

// normalize fills in the defaults and refuses unknown values.
func (r Readings) normalize() (Readings, error) {
	for _, f := range []struct {
		name string
		v    *string
		ok   [2]string
	}{
		{"write-answer", &r.WriteAnswer, [2]string{WriteEmpty, WriteFrames}},
		{"mixed", &r.Mixed, [2]string{MixedRefuse, MixedAccept}},
		{"batch", &r.Batch, [2]string{BatchPartial, BatchAtomic}},
		{"deleted-names", &r.DeletedNames, [2]string{DeletedTombstoned, DeletedReusable}},
	} {
		switch *f.v {
		case "":
			*f.v = f.ok[0]
		case f.ok[0], f.ok[1]:
		default:
			return r, fmt.Errorf("%w: --%s %q: want %s or %s", ErrReading, f.name, *f.v, f.ok[0], f.ok[1])
		}
	}
	return r, nil
}

// Normalized returns r with the defaults filled in, or ErrReading.
func (r Readings) Normalized() (Readings, error) { return r.normalize() }

// String lists the readings as the command-line flags that select them.
func (r Readings) String() string { return strings.Join(r.Args(), " ") }

// Flags registers --write-answer, --mixed, --batch and --deleted-names on
// fs, setting r. Start refuses a value that is not a reading.
func (r *Readings) Flags(fs *flag.FlagSet) {
	fs.StringVar(&r.WriteAnswer, "write-answer", WriteEmpty, "how write commands are answered: "+WriteEmpty+" (a 200 without a body) or "+WriteFrames+" (an empty frame each)")
	fs.StringVar(&r.Mixed, "mixed", MixedRefuse, "a request mixing read and write commands: "+MixedRefuse+" or "+MixedAccept)
	fs.StringVar(&r.Batch, "batch", BatchPartial, "a request whose command fails part-way: "+BatchPartial+" (earlier commands stay) or "+BatchAtomic+" (none does)")
	fs.StringVar(&r.DeletedNames, "deleted-names", DeletedTombstoned, "whether a deleted key's name can be used again: "+DeletedTombstoned+" (no) or "+DeletedReusable)
}

// Args returns the command-line flags that select r.
func (r Readings) Args() []string {
	r, _ = r.normalize()
	return []string{"--write-answer", r.WriteAnswer, "--mixed", r.Mixed, "--batch", r.Batch, "--deleted-names", r.DeletedNames}
}

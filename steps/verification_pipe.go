package steps

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/minio/kms-go/kms"
	"golang.org/x/sync/errgroup"
)

// decryptPipe has the Key Manager decrypt the proofs while the store is
// still being read: a request goes as soon as a batch of proofs is sealed,
// so the Key Manager's work and its round trips overlap the reading here
// (at 1,000 keys on loopback the reading and the decryption had each taken
// about a third of the verification, one after the other). A batch holds
// whole keys: each key's proofs are answered together, and progress counts
// keys.
type decryptPipe struct {
	ctx      context.Context
	stop     context.CancelCauseFunc
	c        *kms.Client
	enclave  string
	g        *errgroup.Group
	progress func(keys int)

	mu       sync.Mutex
	holding  bool            // added proofs wait in held until open
	held     []sealedProof   // whole keys, in the order added
	keep     map[string]bool // set by open: only these keys' proofs go; nil for all
	pending  []sealedProof
	answered []decryptedBatch
	keys     []string  // every key whose proofs were added
	proofs   int       // and how many proofs
	last     time.Time // when the last request was sent
}

// decryptedBatch is one request's proofs and their outcomes.
type decryptedBatch struct {
	proofs   []sealedProof
	outcomes []proofOutcome
}

// newDecryptPipe starts a pipe that keeps up to par requests in flight;
// progress (may be nil) is told of the keys whose proofs were answered.
// End it with wait, or with abort on a path that does not wait.
func newDecryptPipe(ctx context.Context, c *kms.Client, enclave string, par int, progress func(keys int)) *decryptPipe {
	ctx, stop := context.WithCancelCause(ctx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(max(par, 1))
	return &decryptPipe{ctx: gctx, stop: stop, c: c, enclave: enclave, g: g, progress: progress}
}

// cancel ends the pipe: add returns context.Canceled from then on.
func (d *decryptPipe) cancel() { d.stop(nil) }

// fail ends the pipe with err, which add returns from then on.
func (d *decryptPipe) fail(err error) { d.stop(err) }

// hold makes the pipe keep the proofs added until open says which keys to
// send: the verification reads and seals while the enclave is still being
// listed, and only the listing says which keys the enclave holds. Call it
// before the first add.
func (d *decryptPipe) hold() {
	d.mu.Lock()
	d.holding = true
	d.mu.Unlock()
}

// open ends hold: the proofs kept and every later one are sent if their
// key is in keep, and wiped if not. It returns the error that ended the
// pipe.
func (d *decryptPipe) open(keep map[string]bool) error {
	d.mu.Lock()
	held := d.held
	d.held, d.holding, d.keep = nil, false, keep
	d.mu.Unlock()
	for i := 0; i < len(held); {
		j := i + 1
		for j < len(held) && held[j].name == held[i].name {
			j++
		}
		if err := d.add(held[i:j]); err != nil {
			wipeProofs(held[j:])
			return err
		}
		i = j
	}
	return context.Cause(d.ctx)
}

// add takes one key's proofs, and sends the batch they would overflow.
// Sending waits while par requests are in flight: the reading slows to
// what the Key Manager answers. It returns the error that ended the pipe.
func (d *decryptPipe) add(ps []sealedProof) error {
	if len(ps) == 0 {
		return nil
	}
	d.mu.Lock()
	if d.holding {
		d.held = append(d.held, ps...)
		d.mu.Unlock()
		return context.Cause(d.ctx)
	}
	if d.keep != nil && !d.keep[ps[0].name] {
		d.mu.Unlock()
		wipeProofs(ps)
		return context.Cause(d.ctx)
	}
	var full []sealedProof
	if len(d.pending)+len(ps) > verifyDecryptBatch {
		full, d.pending = d.pending, make([]sealedProof, 0, verifyDecryptBatch)
	}
	d.pending = append(d.pending, ps...)
	d.keys = append(d.keys, ps[0].name)
	d.proofs += len(ps)
	d.mu.Unlock()
	if full != nil {
		d.send(full)
	}
	return context.Cause(d.ctx)
}

func (d *decryptPipe) send(batch []sealedProof) {
	d.g.Go(func() error {
		if d.ctx.Err() != nil {
			wipeProofs(batch)
			return nil // an earlier request failed while this one waited
		}
		d.mu.Lock()
		d.last = time.Now()
		d.mu.Unlock()
		outcomes, err := decryptBatch(d.ctx, d.c, d.enclave, batch)
		// Only the key and format are judged from here on: the bytes go
		// now, not with the last answer (at 100,000 keys, tens of MB).
		for i := range batch {
			clear(batch[i].plaintext)
			batch[i].plaintext, batch[i].ciphertext, batch[i].aad = nil, nil, nil
		}
		if err != nil {
			return err
		}
		d.mu.Lock()
		d.answered = append(d.answered, decryptedBatch{batch, outcomes})
		d.mu.Unlock()
		if d.progress != nil {
			d.progress(keysOf(batch))
		}
		return nil
	})
}

// keysOf counts the keys of a batch (a key's proofs are adjacent).
func keysOf(batch []sealedProof) int {
	n := 0
	for i, p := range batch {
		if i == 0 || batch[i-1].name != p.name {
			n++
		}
	}
	return n
}

// sealed returns the keys whose proofs were added, sorted, and the number
// of proofs. Call it once the reading has ended.
func (d *decryptPipe) sealed() ([]string, int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slices.Sort(d.keys)
	return slices.Clone(d.keys), d.proofs
}

// wait sends what is left, waits for every answer and returns every proof
// (its key and format; its bytes are dropped once answered) with its
// outcome, sorted by key then format (compareProofs), and how long
// the Key Manager took after the last request was sent (the part of its
// work that did not overlap the reading).
func (d *decryptPipe) wait() ([]sealedProof, []proofOutcome, time.Duration, error) {
	d.mu.Lock()
	rest := d.pending
	d.pending = nil
	d.mu.Unlock()
	if len(rest) > 0 {
		d.send(rest)
	}
	err := d.g.Wait()
	var tail time.Duration
	if !d.last.IsZero() {
		tail = time.Since(d.last)
	}
	d.cancel()
	if err != nil {
		d.wipe()
		return nil, nil, 0, err
	}
	type answered struct {
		p sealedProof
		o proofOutcome
	}
	all := make([]answered, 0, d.proofs)
	for _, b := range d.answered {
		for i, p := range b.proofs {
			all = append(all, answered{p, b.outcomes[i]})
		}
	}
	slices.SortFunc(all, func(a, b answered) int { return compareProofs(a.p, b.p) })
	proofs := make([]sealedProof, len(all))
	outcomes := make([]proofOutcome, len(all))
	for i, a := range all {
		proofs[i], outcomes[i] = a.p, a.o
	}
	return proofs, outcomes, tail, nil
}

// abort ends the pipe on a path that will not wait: the requests in flight
// are cancelled and waited for, and the plaintexts wiped.
func (d *decryptPipe) abort() {
	d.cancel()
	d.g.Wait()
	d.wipe()
}

// wipe clears the plaintexts of the proofs not sent (a request clears
// its own once answered or failed).
func (d *decryptPipe) wipe() {
	d.mu.Lock()
	defer d.mu.Unlock()
	wipeProofs(d.pending)
	wipeProofs(d.held)
}

// wipeProofs clears the plaintexts of ps.
func wipeProofs(ps []sealedProof) {
	for _, p := range ps {
		clear(p.plaintext)
	}
}

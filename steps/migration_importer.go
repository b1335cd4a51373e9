package steps

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"

	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"

	"github.com/runbook-dev/runbook/internal/kescrypto"
)

// importer imports keys into one enclave, several per request (one
// KEY:IMPORT frame each, as the protocol allows).
//
// It relies only on what every reading of the protocol guarantees
// (docs/emulator.md): a 200 means every command of the request succeeded.
// It never reads a write's answer (kms-go closes it unread, and a Key
// Manager may send an empty body), never mixes reads and writes in one
// request (a Key Manager may refuse that), and never assumes how much of a
// failed request took effect (part of it, none, or all with the answer
// lost). After a request failed for good it reads back, with read-only
// KEY:STATUS requests, which of its keys are at the target, proves those by
// round trip, and sends the rest again. A key the Key Manager refuses is
// narrowed down by halving the request (O(log n) requests per refused key)
// and reported by name; the other keys are imported.
type importer struct {
	c       *kms.Client
	enclave string
	rep     *report
}

// importResult is what importAll confirmed: keys at the target with the
// source's material, and keys found there with different material.
type importResult struct {
	ok, conflicts []string
}

// importAll imports es, keys that were not at the target at the listing.
// It returns the names confirmed at the target with the source's material
// and those found with different material (appeared since the listing), and
// with an error, those confirmed before it. Keys the Key Manager refuses
// are in rep.rejected, not in an error.
func (im *importer) importAll(ctx context.Context, es []*sourceEntry) (ok, conflicts []string, err error) {
	var res importResult
	err = im.group(ctx, es, &res)
	return res.ok, res.conflicts, err
}

func (im *importer) group(ctx context.Context, es []*sourceEntry, res *importResult) error {
	if len(es) == 0 {
		return nil
	}
	err := im.send(ctx, es)
	if err == nil {
		for _, e := range es {
			res.ok = append(res.ok, e.name)
		}
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if transient(err) || errors.Is(err, kms.ErrPermission) || errors.Is(err, kms.ErrEnclaveNotFound) {
		// Out of retries, or nothing here can succeed. What took effect is
		// found by the next attempt (present, no checkpoint: proven).
		return fmt.Errorf("import %d keys: %w", len(es), err)
	}
	// The request failed for good, perhaps part-way, perhaps after taking
	// effect (a resend after a lost answer meets its own keys).
	k, rerr := im.committedPrefix(ctx, es)
	if rerr != nil {
		return rerr
	}
	if k > 0 {
		same, differ, perr := im.prove(ctx, es[:k])
		if perr != nil {
			return perr
		}
		im.rep.inflight.Add(int64(len(same)))
		res.ok = append(res.ok, same...)
		res.conflicts = append(res.conflicts, differ...)
		return im.group(ctx, es[k:], res)
	}
	if len(es) == 1 {
		return im.refused(es[0], err)
	}
	mid := len(es) / 2
	if err := im.group(ctx, es[:mid], res); err != nil {
		return err
	}
	return im.group(ctx, es[mid:], res)
}

// send imports es in one write-only request, retrying transient failures.
func (im *importer) send(ctx context.Context, es []*sourceEntry) error {
	body := make([]byte, 0, 64*len(es))
	for _, e := range es {
		var err error
		if body, err = cmds.Encode(body, cmds.KeyImport, &kms.ImportKeyRequest{Name: e.name, Type: kmsType(e.key.Algorithm), Key: e.key.Material}); err != nil {
			clear(body)
			return permanent{fmt.Errorf("encode import request: %w", err)}
		}
	}
	defer clear(body)
	return withRetry(ctx, func() error {
		im.rep.requestCount.Add(1)
		im.rep.commandCount.Add(int64(len(es)))
		resp, err := im.c.Send(ctx, &kms.Request{Enclave: im.enclave, Body: body})
		if err != nil {
			return err
		}
		// The answer to writes means nothing; drained so the connection
		// is reused.
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
		return resp.Body.Close()
	})
}

// present reports, with one read-only request, whether every key of es is
// at the target (kms-go KeyStatus fails with ErrKeyNotFound if one is not).
func (im *importer) present(ctx context.Context, es []*sourceEntry) (bool, error) {
	reqs := make([]*kms.KeyStatusRequest, len(es))
	for i, e := range es {
		reqs[i] = &kms.KeyStatusRequest{Name: e.name}
	}
	err := withRetry(ctx, func() error {
		im.rep.readbacks.Add(1)
		_, err := im.c.KeyStatus(ctx, im.enclave, reqs...)
		return err
	})
	if errors.Is(err, kms.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read back keys from enclave %s: %w", im.enclave, err)
	}
	return true, nil
}

// committedPrefix returns k such that es[:k] are all at the target, found
// with read-only requests: what a failed request committed is a prefix of
// its commands in every reading (earlier commands committed, or none, or
// all with the answer lost), so a binary search over prefixes takes
// O(log n) requests; a Key Manager that broke that order is still safe
// here, since only what was read back as present is returned.
func (im *importer) committedPrefix(ctx context.Context, es []*sourceEntry) (int, error) {
	// The first key decides between nothing (atomic, or a failure at the
	// first command) and something; then the whole (a lost answer).
	if ok, err := im.present(ctx, es[:1]); err != nil || !ok {
		return 0, err
	}
	if len(es) == 1 {
		return 1, nil
	}
	if ok, err := im.present(ctx, es); err != nil || ok {
		return len(es), err
	}
	lo, hi := 1, len(es)-1 // es[:lo] present; es[:hi+1] not all present
	for lo < hi {
		mid := (lo + hi + 1) / 2
		ok, err := im.present(ctx, es[:mid])
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo, nil
}

// refused records why the Key Manager refused the import of e, a key that
// is not at the target, or returns err when that is not a refusal of this
// key.
func (im *importer) refused(e *sourceEntry, err error) error {
	var reason string
	ke, isKMS := errors.AsType[kms.Error](err)
	switch {
	case errors.Is(err, kms.ErrKeyExists):
		// KEY:STATUS says the key does not exist, yet its name is taken.
		reason = "the Key Manager refuses this name: a key of that name was deleted from enclave " + im.enclave +
			" and the Key Manager does not give a deleted name out again (the vendor's client: \"Once a key version has been removed it cannot be added again\"); migrate into another enclave"
	case isKMS && ke.Code == 400:
		reason = "the Key Manager refused to import it: " + ke.Err
	default:
		return fmt.Errorf("import key %q: %w", e.name, err)
	}
	im.rep.refuse(e.name, reason)
	return nil
}

// prove reports which of es the target holds with the source's material:
// a random plaintext sealed here under each key, in KES's raw format, must
// decrypt at the Key Manager to the same bytes. One read-only request
// decrypts them all; if one fails to open, each is proven alone to tell
// which.
func (im *importer) prove(ctx context.Context, es []*sourceEntry) (same, differ []string, err error) {
	plaintexts := make([][]byte, len(es))
	reqs := make([]*kms.DecryptRequest, len(es))
	defer func() {
		for _, p := range plaintexts {
			clear(p)
		}
	}()
	for i, e := range es {
		plaintexts[i] = make([]byte, 32)
		if _, err := rand.Read(plaintexts[i]); err != nil {
			return nil, nil, fmt.Errorf("draw plaintext: %w", err)
		}
		ct, err := kescrypto.Seal(e.key, plaintexts[i], roundTripAAD)
		if err != nil {
			return nil, nil, fmt.Errorf("seal locally under key %q: %w", e.name, err)
		}
		reqs[i] = &kms.DecryptRequest{Name: e.name, Ciphertext: ct, AssociatedData: roundTripAAD}
	}
	var resp []*kms.DecryptResponse
	err = withRetry(ctx, func() error {
		var err error
		resp, err = im.c.Decrypt(ctx, im.enclave, reqs...)
		return err
	})
	if err == nil && len(resp) == len(es) {
		for i, r := range resp {
			if subtle.ConstantTimeCompare(r.Plaintext, plaintexts[i]) == 1 {
				same = append(same, es[i].name)
			} else {
				differ = append(differ, es[i].name)
			}
			clear(r.Plaintext)
		}
		return same, differ, nil
	}
	if err != nil && !errors.Is(err, kms.ErrDecrypt) {
		return nil, nil, fmt.Errorf("round trip %d keys: %w", len(es), err)
	}
	for _, e := range es {
		ok, err := sameMaterial(ctx, im.c, im.enclave, e.name, e.key)
		if err != nil {
			return nil, nil, err
		}
		if ok {
			same = append(same, e.name)
		} else {
			differ = append(differ, e.name)
		}
	}
	return same, differ, nil
}

package steps

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/testenv"
)

// emulatorEnclave starts a Key Manager emulator with the enclave named
// enclave and returns its root client.
func emulatorEnclave(ctx context.Context, t *testing.T, enclave string) *kms.Client {
	t.Helper()
	kmc := testenv.StartKeyManager(t, testenv.KeyManagerOptions{}).Client()
	if err := kmc.CreateEnclave(ctx, &kms.CreateEnclaveRequest{Name: enclave}); err != nil {
		t.Fatal(err)
	}
	return kmc
}

// TestDecryptPipe: proofs handed to the pipe from several goroutines, as
// the store's readers do, come back from the Key Manager (the emulator)
// each with its own outcome, sorted by key then format, over several
// requests that each hold whole keys (progress counts each key once); a
// key with other material and one the enclave lacks are told apart; and a pipe whose
// requests fail ends the adding with that error.
func TestDecryptPipe(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const enclave = "pipe"
	kmc := emulatorEnclave(ctx, t, enclave)
	// 100 keys of the KES v0.22/v0.23 shape: two proofs each (raw,
	// msgpack), 200 in all, at least four requests of up to 64.
	const n = 100
	other := map[string]bool{"key-017": true, "key-064": true} // other material in the enclave
	missing := map[string]bool{"key-031": true, "key-099": true}
	keys := map[string]kescrypto.Key{}
	for i := range n {
		name := fmt.Sprintf("key-%03d", i)
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, kescrypto.KeySize)}
		rand.Read(k.Material)
		keys[name] = k
		if missing[name] {
			continue
		}
		imported := k.Material
		if other[name] {
			imported = make([]byte, kescrypto.KeySize)
			rand.Read(imported)
		}
		if err := kmc.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: name, Type: kms.SecretKeyType(k.Algorithm), Key: imported}); err != nil {
			t.Fatalf("import %s: %v", name, err)
		}
	}

	var progressed atomic.Int64
	pipe := newDecryptPipe(ctx, kmc, enclave, 2, func(keys int) { progressed.Add(int64(keys)) })
	var wg sync.WaitGroup
	var mu sync.Mutex
	var addErr error
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				name := fmt.Sprintf("key-%03d", i)
				ps, err := sealProofs(name, keys[name], formatV023)
				if err == nil {
					err = pipe.add(ps)
				}
				if err != nil {
					mu.Lock()
					addErr = err
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if addErr != nil {
		pipe.abort()
		t.Fatalf("add: %v", addErr)
	}
	names, sealed := pipe.sealed()
	proofs, outcomes, _, err := pipe.wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if len(names) != n || sealed != 2*n || len(proofs) != 2*n || len(outcomes) != 2*n {
		t.Fatalf("%d keys, %d sealed, %d proofs, %d outcomes; want %d keys, %d proofs", len(names), sealed, len(proofs), len(outcomes), n, 2*n)
	}
	if !slices.IsSortedFunc(proofs, compareProofs) {
		t.Error("proofs not sorted by key, then format")
	}
	if got := progressed.Load(); got != n {
		t.Errorf("progress told of %d keys, want %d", got, n)
	}
	for i, p := range proofs {
		want := outcomeProven
		switch {
		case other[p.name]:
			want = outcomeRefused // other material cannot open it (AEAD)
		case missing[p.name]:
			want = outcomeNoKey
		}
		if outcomes[i] != want {
			t.Errorf("%s (%s): outcome %d, want %d", p.name, p.format, outcomes[i], want)
		}
	}
	for _, kp := range judgeProofs(proofs, outcomes) {
		switch {
		case other[kp.Name]:
			if !strings.Contains(kp.Failed, errMaterialDiffers.Error()) {
				t.Errorf("%s: %+v, want material differs", kp.Name, kp)
			}
		case missing[kp.Name]:
			if !strings.Contains(kp.Failed, kp.Name) {
				t.Errorf("%s: %+v, want a failure naming it", kp.Name, kp)
			}
		case kp.Failed != "" || !slices.Equal(kp.Formats, []string{formatRaw, formatMsgpack}):
			t.Errorf("%s: %+v, want proven in raw and msgpack", kp.Name, kp)
		}
	}

	// Requests that fail for another reason than a proof (an enclave that
	// does not exist) end the pipe: adding returns that error, and abort
	// returns once nothing is in flight.
	bad := newDecryptPipe(ctx, kmc, "no-such-enclave", 2, nil)
	var err2 error
	for i := 0; i < n && err2 == nil; i++ {
		name := fmt.Sprintf("key-%03d", i)
		ps, err := sealProofs(name, keys[name], formatV023)
		if err != nil {
			t.Fatal(err)
		}
		err2 = bad.add(ps)
		if err2 == nil && i == n-1 {
			_, _, _, err2 = bad.wait()
		}
	}
	bad.abort()
	if err2 == nil || !strings.Contains(err2.Error(), "decrypt at the Key Manager") {
		t.Errorf("a pipe into no enclave: %v, want the Key Manager's refusal", err2)
	}
}

// TestDecryptPipeHold: proofs added while the pipe holds (the enclave not
// listed yet) go to the Key Manager only once open names the keys to
// send; the others' are never asked (a key the enclave lacks is named by
// the name comparison, not as a failed decryption) and their plaintexts
// are wiped; keys added after open are filtered alike; and fail ends the
// adding with its error.
func TestDecryptPipeHold(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const enclave = "hold"
	kmc := emulatorEnclave(ctx, t, enclave)
	const n = 150 // more than two requests' worth before open, and after
	keys := map[string]kescrypto.Key{}
	lacked := map[string]bool{}
	keep := map[string]bool{}
	for i := range n {
		name := fmt.Sprintf("key-%03d", i)
		k := kescrypto.Key{Algorithm: kescrypto.AES256, Material: make([]byte, kescrypto.KeySize)}
		rand.Read(k.Material)
		keys[name] = k
		if i%7 == 3 {
			lacked[name] = true
			continue
		}
		keep[name] = true
		if err := kmc.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: name, Type: kms.SecretKeyType(k.Algorithm), Key: k.Material}); err != nil {
			t.Fatalf("import %s: %v", name, err)
		}
	}
	var progressed atomic.Int64
	pipe := newDecryptPipe(ctx, kmc, enclave, 2, func(keys int) { progressed.Add(int64(keys)) })
	pipe.hold()
	var lackedPlaintexts [][]byte
	add := func(from, to int) {
		for i := from; i < to; i++ {
			name := fmt.Sprintf("key-%03d", i)
			ps, err := sealProofs(name, keys[name], formatV024)
			if err != nil {
				t.Fatal(err)
			}
			if lacked[name] {
				for _, p := range ps {
					lackedPlaintexts = append(lackedPlaintexts, p.plaintext)
				}
			}
			if err := pipe.add(ps); err != nil {
				pipe.abort()
				t.Fatalf("add %s: %v", name, err)
			}
		}
	}
	add(0, 100)
	if sent, _ := pipe.sealed(); len(sent) != 0 || progressed.Load() != 0 {
		t.Fatalf("%d keys sent while the pipe held them, want none", len(sent))
	}
	if err := pipe.open(keep); err != nil {
		pipe.abort()
		t.Fatalf("open: %v", err)
	}
	add(100, n)
	names, _ := pipe.sealed()
	proofs, outcomes, _, err := pipe.wait()
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	if len(names) != len(keep) || !slices.IsSorted(names) {
		t.Fatalf("sent the proofs of %d keys, want the %d kept", len(names), len(keep))
	}
	for i, p := range proofs {
		if !keep[p.name] {
			t.Errorf("%s: its proof was sent, but open did not keep it", p.name)
		} else if outcomes[i] != outcomeProven {
			t.Errorf("%s: outcome %d, want proven", p.name, outcomes[i])
		}
	}
	if got := progressed.Load(); got != int64(len(keep)) {
		t.Errorf("progress told of %d keys, want %d", got, len(keep))
	}
	for _, pt := range lackedPlaintexts {
		if slices.ContainsFunc(pt, func(b byte) bool { return b != 0 }) {
			t.Fatal("the plaintext of a proof that was never sent was not wiped")
		}
	}

	// fail, while the reading goes on (the enclave's listing failed):
	// adding returns its error, and what the pipe held is wiped.
	failing := newDecryptPipe(ctx, kmc, enclave, 2, nil)
	failing.hold()
	name := "key-000"
	ps, err := sealProofs(name, keys[name], formatV024)
	if err != nil {
		t.Fatal(err)
	}
	if err := failing.add(ps); err != nil {
		t.Fatalf("add while held: %v", err)
	}
	listErr := fmt.Errorf("list enclave %s: the Key Manager is gone", enclave)
	failing.fail(listErr)
	ps2, _ := sealProofs("key-001", keys["key-001"], formatV024)
	if err := failing.add(ps2); err != listErr {
		t.Errorf("add after fail: %v, want %v", err, listErr)
	}
	failing.abort()
	for _, p := range ps {
		if slices.ContainsFunc(p.plaintext, func(b byte) bool { return b != 0 }) {
			t.Error("a held proof's plaintext was not wiped by abort")
		}
	}
}

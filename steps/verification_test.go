package steps

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/kes/kesconf"
	"github.com/minio/kms-go/kms"

	"github.com/runbook-dev/runbook/internal/kescrypto"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/testenv"
)

func TestVerifyMatch(t *testing.T) {
	t.Parallel()
	names := []string{"minio-a", "minio-b", "other"}
	if got := verifyMatch(names, "minio-*"); !slices.Equal(got, []string{"minio-a", "minio-b"}) {
		t.Fatalf("match = %q", got)
	}
	if got := verifyMatch(names, "*"); !slices.Equal(got, names) {
		t.Fatalf("match * = %q", got)
	}
}

func TestVerifyNameSetMessage(t *testing.T) {
	t.Parallel()
	msg := verifyNameSetMessage("kes.legacy", "aistor-primary", []string{"new-key"}, []string{"stray"})
	for _, want := range []string{"1 key(s) of the kes.legacy key store are missing from enclave aistor-primary: new-key", "enclave aistor-primary holds 1 key(s) the kes.legacy key store does not: stray"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	msg = verifyNameSetMessage("kes.legacy", "e", []string{"m"}, nil)
	if strings.Contains(msg, "holds") {
		t.Errorf("message %q speaks of extra keys where there are none", msg)
	}
}

func TestVerifyFailureMessage(t *testing.T) {
	t.Parallel()
	msg := verifyFailureMessage("e", []verifyFailure{
		{Name: "k1", Reason: errMaterialDiffers.Error() + ": x"},
		{Name: "k2", Reason: "decrypt at the Key Manager: boom"},
	})
	if !strings.Contains(msg, "1 key(s) in enclave e have different material than at KES: k1") {
		t.Errorf("message %q does not name k1 as differing", msg)
	}
	if !strings.Contains(msg, "k2 (decrypt at the Key Manager: boom)") {
		t.Errorf("message %q does not name k2 with its reason", msg)
	}
}

func TestVerifySample(t *testing.T) {
	t.Parallel()
	var names []string
	for i := range 100 {
		names = append(names, "key-"+string(rune('a'+i%26))+string(rune('a'+i/26)))
	}
	slices.Sort(names)
	a := verifySample(names, 10, 42)
	b := verifySample(names, 10, 42)
	if len(a) != 10 || !slices.Equal(a, b) {
		t.Fatalf("a sample from one seed is not stable: %q vs %q", a, b)
	}
	if !slices.IsSorted(a) || len(slices.Compact(slices.Clone(a))) != 10 {
		t.Fatalf("sample %q is not 10 distinct sorted names", a)
	}
	for _, n := range a {
		if !slices.Contains(names, n) {
			t.Fatalf("sample holds %q, not a name", n)
		}
	}
	if c := verifySample(names, 10, 43); slices.Equal(a, c) {
		t.Fatalf("two seeds gave the same sample %q", a)
	}
}

func TestVerifyProofName(t *testing.T) {
	t.Parallel()
	if got := verifyProofName(nil, proofLocalSeal); got != proofLocalSeal {
		t.Errorf("no checkpoints: %q", got)
	}
	if got := verifyProofName(map[string]int{proofKESGenerate: 3}, proofLocalSeal); got != proofKESGenerate {
		t.Errorf("one proof: %q", got)
	}
	if got := verifyProofName(map[string]int{proofKESGenerate: 3, proofLocalSeal: 1}, proofLocalSeal); got != proofMixed {
		t.Errorf("two proofs: %q", got)
	}
}

func TestVerifyRefsWhereList(t *testing.T) {
	t.Parallel()
	var r verifyRefs
	r.add("k", "the default key")
	for _, o := range []string{"b/1", "b/2", "b/3", "b/4"} {
		r.add("k", "object "+o)
	}
	r.add("j", "bucket b (default encryption)")
	if got := r.names(); !slices.Equal(got, []string{"j", "k"}) {
		t.Fatalf("names = %q", got)
	}
	got := r.whereList([]string{"k"})
	want := "k (referenced by the default key, object b/1, object b/2 and 2 more)"
	if got != want {
		t.Fatalf("whereList = %q, want %q", got, want)
	}
}

type statusErr int

func (s statusErr) Error() string { return "status" }
func (s statusErr) Status() int   { return int(s) }

func TestRetry(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	n := 0
	err := withRetry(ctx, func() error {
		n++
		if n < 3 {
			return statusErr(503)
		}
		return nil
	})
	if err != nil || n != 3 {
		t.Fatalf("transient errors: err %v after %d tries", err, n)
	}
	n = 0
	err = withRetry(ctx, func() error { n++; return statusErr(404) })
	if !errors.Is(err, statusErr(404)) || n != 1 {
		t.Fatalf("a 4xx answer was retried: err %v after %d tries", err, n)
	}
}

// TestVerifyRoundTrips proves both proofs against the real KES server and
// the Key Manager emulator: a key imported with the KES key store's material
// passes; a key imported under the same name with other material fails as
// differing; a key the enclave lacks fails by name.
func TestVerifyRoundTrips(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	k := testenv.StartKES(t, testenv.KESOptions{Keys: 3})
	const enclave = "verify"
	kmc := emulatorEnclave(ctx, t, enclave)
	ks, err := (&kesconf.FSKeyStore{Path: k.KeyStoreDir}).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ks.Close()
	entries, err := os.ReadDir(k.KeyStoreDir)
	if err != nil || len(entries) != 3 {
		t.Fatalf("key store: %d entries, %v", len(entries), err)
	}
	var names []string
	imported := map[string]kescrypto.Key{} // what the enclave holds
	for i, e := range entries {
		names = append(names, e.Name())
		raw, err := os.ReadFile(filepath.Join(k.KeyStoreDir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		key, err := kescrypto.ParseKey(raw)
		if err != nil {
			t.Fatal(err)
		}
		switch i {
		case 0: // same material
		case 1: // other material under the same name
			key.Material = make([]byte, kescrypto.KeySize)
			rand.Read(key.Material)
		case 2: // not imported
			continue
		}
		if err := kmc.ImportKey(ctx, enclave, &kms.ImportKeyRequest{Name: e.Name(), Type: kms.SecretKeyType(key.Algorithm), Key: key.Material}); err != nil {
			t.Fatalf("import %s: %v", e.Name(), err)
		}
		imported[e.Name()] = key
	}
	kc := k.Client()
	if err := verifyKESGenerate(ctx, kc, kmc, enclave, names[0]); err != nil {
		t.Errorf("kes-generate: same material: %v", err)
	}
	if err := verifyKESGenerate(ctx, kc, kmc, enclave, names[1]); !errors.Is(err, errMaterialDiffers) {
		t.Errorf("kes-generate: other material: got %v, want %v", err, errMaterialDiffers)
	}
	if err := verifyKESGenerate(ctx, kc, kmc, enclave, names[2]); err == nil || !strings.Contains(err.Error(), names[2]) {
		t.Errorf("kes-generate: key not in the enclave: got %v, want an error naming it", err)
	}
	// local-seal: the three keys in one batch, which the Key Manager fails
	// as a whole; every key's outcome is still told apart.
	v := &verificationStep{}
	sealAndDecrypt := func(held *keystore.Verdicts) ([]problem, []sealedProof, []proofOutcome) {
		t.Helper()
		pipe := newDecryptPipe(ctx, kmc, enclave, 2, nil)
		unparsable, err := v.readAndSeal(ctx, ks, held, names, setOf(names), pipe.add)
		if err != nil {
			pipe.abort()
			t.Fatalf("read and seal: %v", err)
		}
		proofs, outcomes, _, err := pipe.wait()
		if err != nil {
			t.Fatalf("decrypt: %v", err)
		}
		return unparsable, proofs, outcomes
	}
	unparsable, proofs, outcomes := sealAndDecrypt(nil)
	if len(unparsable) != 0 || len(proofs) != 3 {
		t.Fatalf("read and seal: %d unparsable, %d proofs", len(unparsable), len(proofs))
	}
	kps := judgeProofs(proofs, outcomes)
	if len(kps) != 3 {
		t.Fatalf("%d key proofs, want 3", len(kps))
	}
	byName := map[string]keyProof{}
	for _, kp := range kps {
		byName[kp.Name] = kp
	}
	if kp := byName[names[0]]; kp.Failed != "" || !slices.Equal(kp.Formats, []string{formatRaw}) {
		t.Errorf("local-seal: same material: %+v", kp)
	}
	if kp := byName[names[1]]; !strings.Contains(kp.Failed, errMaterialDiffers.Error()) {
		t.Errorf("local-seal: other material: %+v, want %v", kp, errMaterialDiffers)
	}
	if kp := byName[names[2]]; !strings.Contains(kp.Failed, names[2]) {
		t.Errorf("local-seal: key not in the enclave: %+v, want a failure naming it", kp)
	}
	if err := verifyKESGenerate(ctx, kc, kmc, enclave, "no-such-key"); err == nil || !strings.Contains(err.Error(), "the KES server has no key \"no-such-key\"") {
		t.Errorf("key unknown to KES: %v", err)
	}
	// KES round trips drawn as the reading starts, before the enclave is
	// listed (verifyRun.kesRoundTripsOn): keep narrows them to the keys
	// both sides hold (names[0], names[1]) and makes the sample up from
	// those. The sampled key the enclave lacks (names[2]) is dropped, never
	// a failure; a kept key with other material (names[1]) still fails.
	rt := startKESRoundTrips(ctx, kc, kmc, enclave, []string{names[2], names[1]}, 2)
	rt.keep([]string{names[0], names[1]}, 2)
	failures, kesProven, err := rt.wait()
	if err != nil || len(failures) != 1 || failures[0].Name != names[1] || !strings.Contains(failures[0].Reason, errMaterialDiffers.Error()) {
		t.Errorf("kes round trips narrowed by keep: failures %+v, %v; want one, of %s, material differs", failures, err, names[1])
	}
	if len(kesProven) != 1 || !kesProven[names[0]] {
		t.Errorf("kes round trips narrowed by keep: proven %v, want only %s (drawn to make up the sample)", kesProven, names[0])
	}

	// local-seal with what a plan held: the plan read names[0] as the store
	// holds it, and names[1] as the enclave holds it (a value changed in
	// the store since the plan). The bytes read now differ from names[1]'s
	// held value, so the store's own key is proven, and fails as before.
	held := new(keystore.Verdicts)
	held.Hold()
	planRead := func(_ context.Context, name string) ([]byte, error) {
		if name == names[1] {
			return imported[name].MarshalV024()
		}
		return os.ReadFile(filepath.Join(k.KeyStoreDir, name))
	}
	if err := (&keystore.Listing{Keys: names[:2]}).Classify(ctx, planRead, 1, held); err != nil {
		t.Fatal(err)
	}
	if _, proofs, outcomes = sealAndDecrypt(held); len(proofs) != 3 {
		t.Fatalf("read and seal with held values: %d proofs", len(proofs))
	}
	for _, kp := range judgeProofs(proofs, outcomes) {
		if failed := kp.Failed != ""; failed != (kp.Name != names[0]) {
			t.Errorf("local-seal with held values: %s: %+v (only %s proves)", kp.Name, kp, names[0])
		}
	}
}

// fakeKESList answers like KES's listing API, cut at n names per answer,
// counting its calls in *calls (safe for the guided listing's parallel
// calls).
func fakeKESList(all []string, n int, calls *int) kesListFunc {
	var mu sync.Mutex
	return func(_ context.Context, prefix string) ([]string, string, error) {
		mu.Lock()
		*calls++
		mu.Unlock()
		if prefix == "_" || strings.HasSuffix(prefix, "-") {
			return nil, "", statusErr(400)
		}
		if prefix == "*" {
			prefix = ""
		}
		var names []string
		for _, s := range all {
			if strings.HasPrefix(s, prefix) {
				names = append(names, s)
			}
		}
		slices.Sort(names)
		if len(names) > n {
			return names[:n], names[n], nil
		}
		return names, "", nil
	}
}

func TestListKESServerIsComplete(t *testing.T) {
	t.Parallel()
	var all []string
	for i := range 500 {
		all = append(all, fmt.Sprintf("key-%05d", i))
	}
	all = append(all, "key", "k", "_x", "_-y", "_--z", "Z-1", "a--b", "a---c", "minio-default-key", "key-_")
	calls := 0
	got, unlisted, err := listKESServer(context.Background(), fakeKESList(all, 16, &calls))
	if err != nil {
		t.Fatal(err)
	}
	if why := checkListing(all, got, unlisted); why != "" {
		t.Fatal(why)
	}
	t.Logf("%d names in %d listings of at most 16", len(got), calls)

	// a store small enough for one page takes one request
	calls = 0
	if got, unlisted, err := listKESServer(context.Background(), fakeKESList(all[:10], 1024, &calls)); err != nil || len(got) != 10 || calls != 1 || unlisted {
		t.Fatalf("small store: %d names, %d calls, unlisted %v, %v", len(got), calls, unlisted, err)
	}
}

// checkListing says what is wrong with got as the listing of a server
// holding all: every name once, but for names under kesUnlisted, which may
// be left out only when unlisted says so ("" when nothing is wrong).
func checkListing(all, got []string, unlisted bool) string {
	want := slices.Clone(all)
	slices.Sort(want)
	missing, extra := keystore.Diff(want, got)
	var lost []string
	for _, n := range missing {
		if !strings.HasPrefix(n, kesUnlisted) || !unlisted {
			lost = append(lost, n)
		}
	}
	if len(lost) > 0 || len(extra) > 0 || !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		return fmt.Sprintf("listed %d names of %d (unlisted %v): missing %q, extra %q", len(got), len(want), unlisted, lost, extra)
	}
	return ""
}

// The names a store holds under kesUnlisted are left out, and said to be;
// the listing of a store whose names need the region walked (more than a
// page sorts before '_', as with hex names) costs a few listings per
// crowded level, not thousands.
func TestListKESServerLeavesOutOnlyTheUnlistedRegion(t *testing.T) {
	t.Parallel()
	var all []string
	for i := range 5000 {
		all = append(all, fmt.Sprintf("%08x", uint32(i)*2654435761))
	}
	all = append(all, "_-a", "_0", "__x", "_--deep")
	slices.Sort(all)
	calls := 0
	got, unlisted, err := listKESServerGuided(context.Background(), fakeKESList(all, 1024, &calls), all, kesListParallelism)
	if err != nil {
		t.Fatal(err)
	}
	if why := checkListing(all, got, unlisted); why != "" || slices.Contains(got, "_--deep") {
		t.Fatalf("%s; want every name but _--deep", why)
	}
	planned, plannedUnlisted := kesPlannedListings(context.Background(), all)
	if calls > 2000 || planned != calls || !plannedUnlisted {
		t.Fatalf("%d listings (planned %d, unlisted %v) for %d hex names: the region under \"_-\" is walked too deep", calls, planned, plannedUnlisted, len(all))
	}
	t.Logf("%d names in %d listings", len(got), calls)
}

// randomKESNames draws up to n distinct KES key names of 1 to 6 characters.
func randomKESNames(rng *mrand.Rand, n int) []string {
	seen := map[string]bool{}
	var all []string
	for range n {
		l := 1 + rng.IntN(6)
		b := make([]byte, l)
		for i := range b {
			b[i] = kesNameAlphabet[rng.IntN(len(kesNameAlphabet))]
		}
		name := string(b)
		if name[0] == '-' || name[l-1] == '-' || name == "_" || seen[name] {
			continue
		}
		seen[name] = true
		all = append(all, name)
	}
	return all
}

// TestListKESServerRandom checks the listing against random stores and page
// sizes: every name, exactly once.
func TestListKESServerRandom(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(1, 2))
	for round := range 200 {
		all := randomKESNames(rng, rng.IntN(300))
		page := 1 + rng.IntN(20)
		calls := 0
		got, unlisted, err := listKESServer(context.Background(), fakeKESList(all, page, &calls))
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if why := checkListing(all, got, unlisted); why != "" {
			t.Fatalf("round %d (page %d): %s", round, page, why)
		}
	}
}

// TestListKESServerGuided lists random stores completely whatever the
// guide says (the store's names, some missing, some extra), including
// servers that also list names KES refuses (an fs store's lost+found).
func TestListKESServerGuided(t *testing.T) {
	t.Parallel()
	rng := mrand.New(mrand.NewPCG(3, 4))
	for round := range 300 {
		all := randomKESNames(rng, rng.IntN(400))
		server := append(slices.Clone(all), "lost+found", ".gitkeep", "key~", "a.b")
		var guide []string
		for _, n := range all {
			if rng.IntN(4) != 0 {
				guide = append(guide, n)
			}
		}
		for range rng.IntN(20) {
			guide = append(guide, fmt.Sprintf("g%d", rng.IntN(1000)))
		}
		slices.Sort(guide)
		guide = slices.Compact(guide)
		page := 1 + rng.IntN(20)
		calls := 0
		got, unlisted, err := listKESServerGuided(context.Background(), fakeKESList(server, page, &calls), guide, kesListParallelism)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		var valid []string
		for _, n := range got {
			if !slices.Contains(server, n) {
				t.Fatalf("round %d: listed %q, which the server does not hold", round, n)
			}
			if kesValidName(n) {
				valid = append(valid, n)
			}
		}
		if why := checkListing(all, valid, unlisted); why != "" {
			t.Fatalf("round %d (page %d): %s", round, page, why)
		}
	}
}

// TestListKESServerGuidedListings: guided by the store's names, a large
// store takes one listing per 1024 names, plus one per name character that
// no name uses at each crowded level (each must be seen empty), and no
// listing twice, although they run in parallel.
func TestListKESServerGuidedListings(t *testing.T) {
	t.Parallel()
	var all []string
	for i := range 20000 {
		all = append(all, fmt.Sprintf("fs-%06d", i))
	}
	all = append(all, "minio-default-key", "lost+found")
	slices.Sort(all)
	var mu sync.Mutex
	seen := map[string]int{}
	calls := 0
	inner := fakeKESList(all, 1024, &calls)
	got, _, err := listKESServerGuided(context.Background(), func(ctx context.Context, q string) ([]string, string, error) {
		mu.Lock()
		defer mu.Unlock()
		seen[q]++
		return inner(ctx, q)
	}, all, kesListMaxInFlight)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(all) {
		t.Fatalf("listed %d names, want %d", len(got), len(all))
	}
	for q, n := range seen {
		if n > 1 {
			t.Errorf("listed %q %d times", q, n)
		}
	}
	// 20 prefixes fs-000..fs-019, and the unused characters after them at
	// the levels "", "f", "fs", "fs-0", "fs-00" and "fs-01".
	if max := 20 + 6*len(kesNameAlphabet); calls > max {
		t.Errorf("%d listings for %d names, want at most %d", calls, len(all), max)
	}
	t.Logf("%d names in %d listings", len(got), calls)
}

// TestKESProbeTimesRoundTrip: the probe of the quiet plan before an apply
// times a round trip before its listing, and the served listing takes the
// shortest of it and its own two (a round trip timed while the plan judges
// the store also times the wait for a CPU); another probe times none.
func TestKESProbeTimesRoundTrip(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := testenv.StartKES(t, testenv.KESOptions{Keys: 3}).Client()
	planned, err := probeKESServer(ctx, c, true)
	if err != nil {
		t.Fatal(err)
	}
	if planned.rtt <= 0 {
		t.Errorf("the quiet plan's probe timed no round trip (listing %v)", planned.listing)
	}
	applied, err := probeKESServer(ctx, c, false)
	if err != nil {
		t.Fatal(err)
	}
	if applied.rtt != 0 {
		t.Errorf("a probe outside the quiet plan before an apply timed a round trip: %v", applied.rtt)
	}
	applied.rtt = time.Nanosecond // shorter than any the listing times
	if got := applied.roundTrip(ctx); got != time.Nanosecond {
		t.Errorf("roundTrip = %v, want the probe's 1ns, the shortest", got)
	}
	applied.rtt = time.Hour
	if got := applied.roundTrip(ctx); got <= 0 || got >= time.Hour {
		t.Errorf("roundTrip = %v, want one timed now, shorter than the probe's hour", got)
	}
}

// The listings asked at once keep about four on the KES server's CPU: four
// on loopback, and more as the round trip grows against the server's own
// time, within bounds; four when a time is unknown.
func TestKESListInFlight(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	for _, c := range []struct {
		listing, roundTrip time.Duration
		want               int
	}{
		{ms(5), ms(0.2), 4},  // loopback, 10,000 keys
		{ms(30), ms(0.2), 4}, // loopback, 100,000 keys
		{ms(6), ms(1), 5},    // 1 ms
		{ms(15), ms(10), 12}, // 10 ms, 10,000 keys
		{ms(40), ms(10), 5},  // 10 ms, 100,000 keys
		{ms(55), ms(50), 16}, // 50 ms: bounded
		{ms(10), ms(12), 16}, // a round trip measured longer than the listing
		{0, ms(10), 4},       // not measured
		{ms(15), 0, 4},
	} {
		if got := kesListInFlight(c.listing, c.roundTrip); got != c.want {
			t.Errorf("kesListInFlight(%v, %v) = %d, want %d", c.listing, c.roundTrip, got, c.want)
		}
	}
}

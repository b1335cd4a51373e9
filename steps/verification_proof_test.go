package steps

import (
	"slices"
	"strings"
	"testing"
)

// TestJudgeProofs tells a refused format (the raw ciphertext of the same key
// decrypts) from different material (the raw one does not), per key.
func TestJudgeProofs(t *testing.T) {
	t.Parallel()
	proofs := []sealedProof{
		{name: "a", format: formatRaw}, {name: "a", format: formatMsgpack},
		{name: "b", format: formatRaw}, {name: "b", format: formatMsgpack},
		{name: "c", format: formatRaw},
		{name: "d", format: formatRaw},
	}
	outcomes := []proofOutcome{
		outcomeProven, outcomeRefused,
		outcomeRefused, outcomeRefused,
		outcomeProven,
		outcomeNoKey,
	}
	kps := judgeProofs(proofs, outcomes)
	if len(kps) != 4 {
		t.Fatalf("%d keys, want 4", len(kps))
	}
	a, b, c, d := kps[0], kps[1], kps[2], kps[3]
	if !slices.Equal(a.RefusedFormats, []string{formatMsgpack}) || !slices.Equal(a.Formats, []string{formatRaw}) || !strings.Contains(a.Failed, "msgpack") {
		t.Errorf("a: %+v", a)
	}
	if len(b.RefusedFormats) != 0 || !strings.Contains(b.Failed, errMaterialDiffers.Error()) {
		t.Errorf("b: %+v", b)
	}
	if c.Failed != "" || !slices.Equal(c.Formats, []string{formatRaw}) {
		t.Errorf("c: %+v", c)
	}
	if !strings.Contains(d.Failed, `no key "d"`) {
		t.Errorf("d: %+v", d)
	}
	msg := formatRefusalMessage("e", kps)
	if !strings.Contains(msg, "refuses the msgpack format") || !strings.Contains(msg, "; a") || strings.Contains(msg, "JSON format") {
		t.Errorf("message: %q", msg)
	}
	if got := ciphertextFormats(formatV024); !slices.Equal(got, []string{formatRaw}) {
		t.Errorf("v0.24 key formats: %q", got)
	}
	// A JSON ciphertext never reaches the Key Manager: MinIO turns it into
	// raw (docs/domain.md, "Ciphertext formats").
	if got := ciphertextFormats(formatV023); !slices.Equal(got, []string{formatRaw, formatMsgpack}) {
		t.Errorf("v0.23 key formats: %q", got)
	}
}

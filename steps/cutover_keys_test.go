package steps

import (
	"strings"
	"testing"
)

// TestSampleKeyNeeds: the keys the cutover needs besides the default key are
// the sample's SSE-KMS objects' keys and the buckets' configured keys, each
// once, by name; MinIO only decrypts under a key that objects alone name.
func TestSampleKeyNeeds(t *testing.T) {
	s := &cutoverSample{
		Objects: []sampledObject{
			{Bucket: "a", Key: "1", SSE: "SSE-KMS", KMSKey: "obj-key"},
			{Bucket: "a", Key: "2", SSE: "SSE-KMS", KMSKey: "obj-key"},
			{Bucket: "b", Key: "1", SSE: "SSE-KMS", KMSKey: "both-key"},
			{Bucket: "b", Key: "2", SSE: "SSE-KMS", KMSKey: "default"},
			{Bucket: "c", Key: "1", SSE: "SSE-S3"},
		},
		BucketKeys: map[string][]string{"b": {"both-key"}, "d": {"bucket-key"}, "e": {"default"}},
	}
	got := sampleKeyNeeds(s, "default")
	want := []struct {
		name, role  string
		decryptOnly bool
	}{
		{"both-key", "the key that the sample's SSE-KMS object(s) b/1 are sealed under and that the encryption configuration of bucket(s) b names", false},
		{"bucket-key", "the key that the encryption configuration of bucket(s) d names", false},
		{"obj-key", "the key that the sample's SSE-KMS object(s) a/1, a/2 are sealed under", true},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d keys %v, want %d", len(got), namesOf(got), len(want))
	}
	for i, w := range want {
		if got[i].name != w.name || got[i].role != w.role || got[i].decryptOnly != w.decryptOnly {
			t.Errorf("key %d: got %q %q decryptOnly=%v, want %q %q %v", i, got[i].name, got[i].role, got[i].decryptOnly, w.name, w.role, w.decryptOnly)
		}
	}
	asked := askedOf(append([]neededKey{defaultKeyNeed("default")}, got...))
	if want := `a data key generated and decrypted under "default", "both-key", "bucket-key"; a data key decrypted under "obj-key"`; !strings.HasPrefix(asked, want) {
		t.Errorf("askedOf = %q, want it to start %q", asked, want)
	}
	if n := sampleKeyNeeds(&cutoverSample{Objects: []sampledObject{{SSE: "SSE-KMS", KMSKey: "default"}}}, "default"); len(n) != 0 {
		t.Errorf("the default key alone: got %v, want none", namesOf(n))
	}
}

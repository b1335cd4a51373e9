package steps

import (
	"strings"
	"testing"
)

// KES's policy rule as each generation applies it (kesPolicy.match):
// v0.22 path.Match, so '*' stands for any name anywhere in a path; since
// 2023-10-24 a pattern matches exactly, or as a prefix when it ends in
// '*', and a '*' elsewhere is a literal character. A deny entry beats an
// allow entry.
func TestKESPolicyVerdict(t *testing.T) {
	t.Parallel()
	allowMinio := []string{"/v1/key/list/*", "/v1/key/generate/minio-*", "/v1/key/decrypt/minio-*"}
	for _, c := range []struct {
		name        string
		allow, deny []string
		glob        bool
		path        string
		ok          bool
		denied      string
	}{
		{"prefix covers", allowMinio, nil, false, "/v1/key/generate/minio-00001", true, ""},
		{"outside the prefix", allowMinio, nil, false, "/v1/key/generate/app-00000", false, ""},
		{"decrypt is not generate", []string{"/v1/key/decrypt/*"}, nil, false, "/v1/key/generate/minio-1", false, ""},
		{"exact path", []string{"/v1/key/generate/minio-1"}, nil, false, "/v1/key/generate/minio-1", true, ""},
		{"exact path, other key", []string{"/v1/key/generate/minio-1"}, nil, false, "/v1/key/generate/minio-10", false, ""},
		{"no trailing star lists nothing", []string{"/v1/key/list"}, nil, false, "/v1/key/list/*", false, ""},
		{"deny beats allow", []string{"/v1/key/generate/*"}, []string{"/v1/key/generate/app-*"}, false, "/v1/key/generate/app-1", false, "/v1/key/generate/app-*"},
		{"deny elsewhere", []string{"/v1/key/generate/*"}, []string{"/v1/key/generate/app-*"}, false, "/v1/key/generate/minio-1", true, ""},
		{"middle star is literal since 2023-10-24", []string{"/v1/key/*/minio-*"}, nil, false, "/v1/key/generate/minio-1", false, ""},
		{"middle star is a glob in v0.22", []string{"/v1/key/*/minio-*"}, nil, true, "/v1/key/generate/minio-1", true, ""},
		{"v0.22 glob star stops at '/'", []string{"/v1/key/*"}, nil, true, "/v1/key/generate/minio-1", false, ""},
		{"v0.22 glob deny", []string{"/v1/key/generate/*"}, []string{"/v1/key/generate/app-?"}, true, "/v1/key/generate/app-1", false, "/v1/key/generate/app-?"},
		{"empty pattern matches nothing", []string{""}, nil, false, "/v1/key/generate/x", false, ""},
	} {
		p := &kesPolicy{allow: c.allow, deny: c.deny, glob: c.glob}
		ok, denied := p.verdict(c.path)
		if ok != c.ok || denied != c.denied {
			t.Errorf("%s: verdict(%s) = %v, %q; want %v, %q", c.name, c.path, ok, denied, c.ok, c.denied)
		}
	}
}

// What the refusal says: how many keys of how many, the first few, and the
// policy entry that fixes it (the deny entry to remove when one matched).
func TestKESRefusedMessage(t *testing.T) {
	t.Parallel()
	a := &kesAccess{identity: "ab12", policy: &kesPolicy{name: "minio"}}
	for _, c := range []struct {
		name    string
		refused []kesRefusal
		want    []string
	}{
		{"one key", []kesRefusal{{name: "app-00000"}},
			[]string{`refuses policy "minio" (identity ab12) a data key under 1 of the 9 keys verification needs: app-00000;`, "add /v1/key/generate/app-00000 (or /v1/key/generate/* for every key) to the allow list of policy"}},
		{"keys sharing a prefix", []kesRefusal{{name: "app-00000"}, {name: "app-00001"}, {name: "app-00002"}, {name: "app-00003"}, {name: "app-00004"}, {name: "app-00005"}},
			[]string{"6 of the 9 keys", "app-00000, app-00001, app-00002, app-00003, app-00004 and 1 more", "add /v1/key/generate/app-0000* (or"}},
		{"nothing shared", []kesRefusal{{name: "app-1"}, {name: "db-1"}},
			[]string{"add /v1/key/generate/* to the allow list"}},
		{"denied", []kesRefusal{{name: "app-1", denied: "/v1/key/generate/app-*"}},
			[]string{"remove the deny entry /v1/key/generate/app-* from policy \"minio\""}},
	} {
		msg := kesRefusedMessage("kes:7373", a, c.refused, 9, "verification needs")
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q\nwant it to say %q", c.name, msg, w)
			}
		}
	}
	probed := &kesAccess{identity: "ab12"}
	msg := kesRefusedMessage("kes:7373", probed, []kesRefusal{{name: "app-1", group: 3}}, 9, "verification needs")
	for _, w := range []string{"refuses identity ab12 a data key under 3 of the 9 keys", "one key probed per name prefix", "app-1 (and the 2 other key(s) named app-…)", "add /v1/key/generate/app-1* (or", "allow list of the policy of identity ab12"} {
		if !strings.Contains(msg, w) {
			t.Errorf("probed: %q\nwant it to say %q", msg, w)
		}
	}
}

func TestKESNamePrefix(t *testing.T) {
	t.Parallel()
	for name, want := range map[string]string{
		"minio-prod-0001": "minio-prod-", "app_key": "app_", "a1b2c3": "", "x-": "x-",
	} {
		if got := kesNamePrefix(name); got != want {
			t.Errorf("kesNamePrefix(%q) = %q, want %q", name, got, want)
		}
	}
}

// A KES release older than v0.22.0 is refused, naming its version and the
// oldest that works; a release's version is a semantic version up to
// v0.22.2, then the time of its commit; a build from source says
// "<unknown>" and is judged by its API instead.
func TestKESVersionProblem(t *testing.T) {
	t.Parallel()
	for version, old := range map[string]bool{
		"v0.21.1": true, "v0.19.4": true, "2022-10-19T09-46-46Z": true,
		"v0.22.0": false, "v0.22.2": false, "2022-12-05T08-40-23Z": false, "2023-10-24T19-13-19Z": false,
		"2025-01-13T13-25-50Z": false, "<unknown>": false, "": false,
	} {
		why := kesVersionProblem(version)
		if (why != "") != old {
			t.Errorf("kesVersionProblem(%q) = %q, want old=%v", version, why, old)
		}
		if old && (!strings.Contains(why, version) || !strings.Contains(why, "v0.22.0")) {
			t.Errorf("kesVersionProblem(%q) = %q: want the version and the oldest that works", version, why)
		}
	}
}

// The self-description in the shapes KES gave it: v0.22 (policy_name and
// lists), the 2023 releases before the refactor (a policy name and
// top-level maps), and since (a policy object with maps).
func TestKESPatterns(t *testing.T) {
	t.Parallel()
	for raw, want := range map[string]string{
		`["/v1/key/list/*","/v1/key/generate/minio-*"]`:       "/v1/key/list/*,/v1/key/generate/minio-*",
		`{"/v1/key/list/*":{},"/v1/key/generate/minio-*":{}}`: "/v1/key/generate/minio-*,/v1/key/list/*",
	} {
		got, ok := kesPatterns([]byte(raw))
		if !ok || strings.Join(got, ",") != want {
			t.Errorf("kesPatterns(%s) = %q, %v; want %q", raw, got, ok, want)
		}
	}
	if _, ok := kesPatterns(nil); ok {
		t.Error("kesPatterns(nil): ok")
	}
}

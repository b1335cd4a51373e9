package steps

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"slices"
	"strings"
	"sync"

	kes "github.com/minio/kes-go"
	"github.com/minio/kes/kesconf"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/keystore"
	"github.com/runbook-dev/runbook/internal/parallel"
)

// kesAccess is what the runbook's KES identity may do at a KES server, as
// far as the plan can know it before anything changes: the admin (every
// request), a policy (matched as the server's generation matches it), or
// neither (probed: see refusedGenerate).
type kesAccess struct {
	identity string // hex SHA-256 of the client certificate's public key (docs/domain.md, "KES identities and policies")
	admin    bool
	policy   *kesPolicy // nil: not known
	source   string     // where admin or policy was learned, for the plan
	// fromConfig marks a policy read from the KES config file rather than
	// described by the server: it is confirmed by probes before it is
	// trusted (the file may not be what the server runs).
	fromConfig bool
}

// kesPolicy is one KES policy: its allow and deny API path patterns.
type kesPolicy struct {
	name        string
	allow, deny []string
	glob        bool // kesGlob: path.Match; else exact, or prefix before a final '*'
}

// match is KES's pattern rule for the server's generation: path.Match for
// kesGlob (kes@v0.22.3 internal/auth/policy.go Verify), else the pattern
// equals the path or, ending in '*', is a prefix of it (kms-go/kes
// policy.go match; a '*' elsewhere is a literal character).
func (p *kesPolicy) match(pattern, urlPath string) bool {
	if p.glob {
		ok, err := path.Match(pattern, urlPath)
		return ok && err == nil
	}
	if pattern == "" {
		return false
	}
	if i := len(pattern) - 1; pattern[i] == '*' {
		return strings.HasPrefix(urlPath, pattern[:i])
	}
	return urlPath == pattern
}

// verdict says whether the policy allows a request for urlPath: a deny
// entry that matches wins over any allow entry (it is returned), else an
// allow entry must match.
func (p *kesPolicy) verdict(urlPath string) (ok bool, denied string) {
	for _, d := range p.deny {
		if p.match(d, urlPath) {
			return false, d
		}
	}
	for _, a := range p.allow {
		if p.match(a, urlPath) {
			return true, ""
		}
	}
	return false, ""
}

// allows reports whether the admin or the policy (which must be known)
// allows a request for urlPath, and the deny entry that refused it, if any.
func (a *kesAccess) allows(urlPath string) (ok bool, denied string) {
	if a.admin {
		return true, ""
	}
	return a.policy.verdict(urlPath)
}

// describe is the plan's words for what is known and whence.
func (a *kesAccess) describe() string {
	switch {
	case a.admin:
		return fmt.Sprintf("the identity %s is the KES admin (%s): every request is allowed", a.identity, a.source)
	case a.policy != nil:
		return fmt.Sprintf("the identity %s has policy %q (%s), matched against every key it will need", a.identity, a.policy.name, a.source)
	}
	return fmt.Sprintf("the policy of identity %s is not known (%s): a step that needs data keys probes one key per distinct name prefix", a.identity, a.source)
}

// checkGenerate is a plan's check that the identity may have the KES server
// generate a data key under every key of names (sorted), which a step needs
// for what: it returns the server and the plan's line, or a refusal
// naming the keys and the policy entry to add, before anything changes.
func (k *kesConnection) checkGenerate(ctx context.Context, r *engine.Run, addr string, names []string, what string) (*kesServer, string, error) {
	srv, acc, err := k.accessAt(ctx, r, addr)
	if err != nil {
		return nil, "", err
	}
	refused, how, err := acc.refusedGenerate(ctx, srv, names)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", addr, err)
	}
	host := hostOf(k.Endpoint())
	if len(refused) > 0 {
		return nil, "", engine.Refusef("%s: %s", addr, kesRefusedMessage(host, acc, refused, len(names), what))
	}
	return srv, fmt.Sprintf("KES server %s: %s; %s: it may have a data key generated under each of the %d key(s) %s", host, acc.describe(), how, len(names), what), nil
}

// accessAt is the server (Server) and the access of the client's identity
// at it (kesAccessOf). The identity's description needs nothing the
// server's probe learns, so it is asked beside the probe, once per plan
// (kesDescribeKey): a round trip less on the plan's longest path where
// KES is far (at 10 ms, the prerequisites' KES check was the quiet plan's
// longest path), and one request for the two steps that ask.
func (k *kesConnection) accessAt(ctx context.Context, r *engine.Run, addr string) (*kesServer, *kesAccess, error) {
	c, err := k.Client(r)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", addr, err)
	}
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	described := make(chan kesDescription, 1)
	go func() {
		// One cut short because the probe failed is not kept for the plan.
		d, _ := planOnce(r, kesDescribeKey{c}, func() (kesDescription, error) { return kesDescribeSelf(dctx, c), dctx.Err() })
		described <- d
	}()
	srv, err := k.Server(ctx, r, addr)
	if err != nil {
		cancel()
		<-described
		return nil, nil, err
	}
	conf, _ := k.LoadConfig(r) // a config that does not load is the key store's error
	acc, err := kesAccessOf(srv, <-described, conf, k.ConfigFile(r))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", addr, err)
	}
	return srv, acc, nil
}

// kesDescribeKey keeps a plan's description of the identity per client.
type kesDescribeKey struct{ c *kes.Client }

// kesAccessOf learns the access of the client's identity: the server's own
// description of it (d: every identity of a kesGlob server, the admin of a
// kesPaged one), else the KES config's policy for it, else nothing.
func kesAccessOf(s *kesServer, d kesDescription, conf *kesconf.File, configFile string) (*kesAccess, error) {
	id, err := kesClientIdentity(s.c)
	if err != nil {
		return nil, err
	}
	a := &kesAccess{identity: id}
	switch {
	case d.admin:
		a.admin, a.source = true, "as the KES server describes it"
		return a, nil
	case d.why == "":
		a.policy = &kesPolicy{name: d.policy, allow: d.allow, deny: d.deny, glob: s.generation == kesGlob}
		a.source = "as the KES server describes it"
		return a, nil
	}
	why := d.why
	if conf == nil {
		a.source = why + "; no KES config to read it from"
		return a, nil
	}
	if string(conf.Admin) == id {
		a.admin, a.source, a.fromConfig = true, "admin.identity of the KES config "+configFile, true
		return a, nil
	}
	for name, p := range conf.Policies {
		for _, pid := range p.Identities {
			if string(pid) == id {
				a.policy = &kesPolicy{name: name, allow: p.Allow, deny: p.Deny, glob: s.generation == kesGlob}
				a.source, a.fromConfig = fmt.Sprintf("from the KES config %s, as %s", configFile, why), true
				return a, nil
			}
		}
	}
	a.source = why + "; the KES config " + configFile + " assigns it no policy"
	return a, nil
}

// kesDescription is the server's description of the client's identity
// (kesDescribeSelf): the admin, or a policy, or why there is none.
type kesDescription struct {
	admin       bool
	policy      string
	allow, deny []string
	why         string // not described: why, for the plan
}

// kesDescribeSelf asks GET /v1/identity/self/describe and reads the
// answer, in any of the shapes KES gave it: v0.22 ({"admin", "policy_name",
// "policy": {"allow": [...], "deny": [...]}}), the releases of 2023 before
// the refactor ({"policy": NAME, "allow": {...}, "deny": {...}}), and since
// ({"policy": {"name", "allow": {...}, "deny": {...}}}, the admin only).
// When it cannot, it says why, for the plan.
func kesDescribeSelf(ctx context.Context, c *kes.Client) kesDescription {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	resp, err := kesGet(cctx, c, "/v1/identity/self/describe")
	switch {
	case errors.Is(err, kes.ErrIdentityNotFound):
		return kesDescription{why: fmt.Sprintf("the KES server does not describe a non-admin identity (KES since 2023-10-24 answers %q)", err.Error())}
	case err != nil:
		return kesDescription{why: fmt.Sprintf("the KES server did not describe the identity (%v)", err)}
	}
	defer resp.Body.Close()
	var d struct {
		Admin      bool            `json:"admin"`
		PolicyName string          `json:"policy_name"`
		Policy     json.RawMessage `json:"policy"`
		Allow      json.RawMessage `json:"allow"`
		Deny       json.RawMessage `json:"deny"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return kesDescription{why: fmt.Sprintf("the KES server's description of the identity does not read (%v)", err)}
	}
	if d.Admin {
		return kesDescription{admin: true}
	}
	desc := kesDescription{policy: d.PolicyName}
	var nested struct {
		Name  string          `json:"name"`
		Allow json.RawMessage `json:"allow"`
		Deny  json.RawMessage `json:"deny"`
	}
	allow, deny := d.Allow, d.Deny
	if json.Unmarshal(d.Policy, &desc.policy) != nil && json.Unmarshal(d.Policy, &nested) == nil {
		allow, deny = nested.Allow, nested.Deny
		if nested.Name != "" {
			desc.policy = nested.Name
		}
	}
	var ok bool
	if desc.allow, ok = kesPatterns(allow); !ok {
		return kesDescription{why: "the KES server's description of the identity holds no policy"}
	}
	desc.deny, _ = kesPatterns(deny)
	return desc
}

// kesPatterns reads a policy's patterns, given as a list or as the keys of
// an object; ok is false when there is no such member.
func kesPatterns(raw json.RawMessage) ([]string, bool) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, false
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list, true
	}
	var set map[string]json.RawMessage
	if json.Unmarshal(raw, &set) != nil {
		return nil, false
	}
	for k := range set {
		list = append(list, k)
	}
	slices.Sort(list)
	return list, true
}

// kesClientIdentity is the KES identity of the client's certificate:
// hex(SHA-256(its public key)), as KES computes it (auth.go).
func kesClientIdentity(c *kes.Client) (string, error) {
	t, ok := c.HTTPClient.Transport.(*http.Transport)
	if !ok || t.TLSClientConfig == nil || len(t.TLSClientConfig.Certificates) == 0 || len(t.TLSClientConfig.Certificates[0].Certificate) == 0 {
		return "", errors.New("the KES client has no certificate")
	}
	cert, err := x509.ParseCertificate(t.TLSClientConfig.Certificates[0].Certificate[0])
	if err != nil {
		return "", fmt.Errorf("read the KES client certificate: %w", err)
	}
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(h[:]), nil
}

// kesIdentity is kesClientIdentity for messages.
func kesIdentity(c *kes.Client) string {
	id, err := kesClientIdentity(c)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return id
}

// kesRefusal is a key the identity may not use, with why.
type kesRefusal struct {
	name   string
	denied string // the deny entry that matched, or ""
	group  int    // for a probe: how many keys share the probed key's prefix
}

// refusedGenerate returns the keys of names (sorted) under which the
// identity may not have the server generate a data key
// (/v1/key/generate/<name>), and what was done to know it. With a policy
// known, every name is matched; a policy from the config file is first
// confirmed by probes. Else one probe per distinct name prefix
// (kesNamePrefix): a generate request, which changes nothing at KES; a key
// the server does not know is verification's finding, not a refusal.
func (a *kesAccess) refusedGenerate(ctx context.Context, s *kesServer, names []string) ([]kesRefusal, string, error) {
	if a.policy != nil || a.admin {
		var refused []kesRefusal
		for _, n := range names {
			if ok, denied := a.allows("/v1/key/generate/" + n); !ok {
				refused = append(refused, kesRefusal{name: n, denied: denied})
			}
		}
		how := fmt.Sprintf("matched %d key(s) against the policy", len(names))
		if a.admin {
			how = "the admin may use every key"
		}
		if !a.fromConfig {
			return refused, how, nil
		}
		if agrees, why, err := a.confirm(ctx, s, names, refused); err != nil || agrees {
			return refused, how + "; " + why, err
		} else {
			a.policy, a.admin, a.source = nil, false, why
		}
	}
	return probeGenerate(ctx, s, names)
}

// confirm probes the server with one key the config's policy allows and
// one it refuses: the file is trusted only when the server agrees.
func (a *kesAccess) confirm(ctx context.Context, s *kesServer, names []string, refused []kesRefusal) (bool, string, error) {
	refusedSet := map[string]bool{}
	for _, r := range refused {
		refusedSet[r.name] = true
	}
	var probes []string
	if i := slices.IndexFunc(names, func(n string) bool { return !refusedSet[n] }); i >= 0 {
		probes = append(probes, names[i])
	}
	if len(refused) > 0 {
		probes = append(probes, refused[0].name)
	}
	for _, n := range probes {
		allowed, err := kesProbeGenerate(ctx, s.c, n)
		if err != nil {
			return false, "", err
		}
		if allowed == refusedSet[n] {
			return false, fmt.Sprintf("the KES config's policy is not what the server enforces (it %s a data key under %s)", map[bool]string{true: "generates", false: "refuses"}[allowed], n), nil
		}
	}
	return true, fmt.Sprintf("the server agrees on %d probe(s)", len(probes)), nil
}

// probeGenerate probes one key per distinct name prefix, in parallel.
func probeGenerate(ctx context.Context, s *kesServer, names []string) ([]kesRefusal, string, error) {
	groups := map[string][]string{}
	var order []string
	for _, n := range names {
		p := kesNamePrefix(n)
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], n)
	}
	var mu sync.Mutex
	var refused []kesRefusal
	err := parallel.ForEach(ctx, readParallelism, len(order), func(ctx context.Context, i int) error {
		g := groups[order[i]]
		allowed, err := kesProbeGenerate(ctx, s.c, g[0])
		if err == nil && !allowed {
			mu.Lock()
			refused = append(refused, kesRefusal{name: g[0], group: len(g)})
			mu.Unlock()
		}
		return err
	})
	slices.SortFunc(refused, func(x, y kesRefusal) int { return strings.Compare(x.name, y.name) })
	return refused, fmt.Sprintf("probed %d key(s), one per distinct name prefix (a policy that tells apart names within a prefix could still refuse one at verification)", len(order)), err
}

// kesNamePrefix is the part of a key name that policies are written for:
// up to and including its last '-' or '_' ("minio-prod-" of
// "minio-prod-0001"), or "" when it has none.
func kesNamePrefix(name string) string {
	return name[:strings.LastIndexAny(name, "-_")+1]
}

// kesProbeGenerate asks the server for a data key under name and reports
// whether the identity may: KES judges a request's policy before anything
// else, so any answer but 403 passed it (a key the server lacks, or cannot
// read, is verification's finding). Only a request that got no answer is
// retried and, in the end, an error.
func kesProbeGenerate(ctx context.Context, c *kes.Client, name string) (bool, error) {
	var status int
	err := withRetry(ctx, func() error {
		cctx, cancel := context.WithTimeout(ctx, checkTimeout)
		defer cancel()
		dek, err := c.GenerateKey(cctx, name, []byte("runbook plan: permission probe"))
		clear(dek.Plaintext)
		var answer interface{ Status() int }
		switch {
		case err == nil:
			status = http.StatusOK
		case errors.As(err, &answer):
			status = answer.Status()
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("probe the KES server with a data key under %s: %w", name, err)
	}
	return status != http.StatusForbidden, nil
}

// kesRefusedMessage is the refusal at plan for keys the identity may not
// use: how many, the first few, and the policy entry that fixes it.
func kesRefusedMessage(server string, a *kesAccess, refused []kesRefusal, total int, what string) string {
	names := make([]string, len(refused))
	var denied []string
	keys := 0
	for i, r := range refused {
		names[i] = r.name
		keys += max(r.group, 1)
		if r.group > 1 {
			names[i] += fmt.Sprintf(" (and the %d other key(s) named %s…)", r.group-1, kesNamePrefix(r.name))
		}
		if r.denied != "" && !slices.Contains(denied, r.denied) {
			denied = append(denied, r.denied)
		}
	}
	who, whose := "identity "+a.identity, "the policy of identity "+a.identity
	how := ""
	if a.policy != nil {
		who = fmt.Sprintf("policy %q (identity %s)", a.policy.name, a.identity)
		whose = who
	} else if !a.admin {
		how = " (its policy could not be read: one key probed per name prefix)"
	}
	msg := fmt.Sprintf("KES server %s refuses %s a data key under %d of the %d keys %s%s: %s; nothing was changed: ", server, who, keys, total, what, how, keystore.NameList(names, 5))
	if len(denied) > 0 {
		return msg + fmt.Sprintf("remove the deny entr%s %s from %s in the KES server config, or use the KES admin API key, and plan again", map[bool]string{true: "y", false: "ies"}[len(denied) == 1], strings.Join(denied, ", "), whose)
	}
	entry := "/v1/key/generate/" + kesCommonPrefix(refusedNames(refused))
	if len(refused) > 1 || refused[0].group > 1 {
		entry += "*"
	}
	if entry != "/v1/key/generate/*" {
		entry += " (or /v1/key/generate/* for every key)"
	}
	return msg + fmt.Sprintf("add %s to the allow list of %s in the KES server config, or use the KES admin API key, and plan again", entry, whose)
}

func refusedNames(refused []kesRefusal) []string {
	out := make([]string, len(refused))
	for i, r := range refused {
		out[i] = r.name
	}
	return out
}

// kesCommonPrefix is the longest prefix the names share.
func kesCommonPrefix(names []string) string {
	p := names[0]
	for _, n := range names[1:] {
		for !strings.HasPrefix(n, p) {
			p = p[:len(p)-1]
		}
	}
	return p
}

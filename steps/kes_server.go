package steps

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	kes "github.com/minio/kes-go"
	"golang.org/x/mod/semver"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/internal/keystore"
)

// kesGeneration is the API generation of a KES server. KES's refactor of
// 2023-10-24 ("refactor KES API and internals", commit 0e49f95, first
// tagged in v0.23.0) changed at once how keys are listed, how policies
// match and what an identity may learn of itself:
//   - kesGlob (v0.22.x and every release before 2023-10-24): GET
//     /v1/key/list/<pattern> matches names with path.Match and answers a
//     stream of JSON lines ({"name"} each, application/x-ndjson; nothing at
//     all when no name matches), refusing the empty pattern ("invalid
//     argument: pattern is empty"); policies match with path.Match;
//     /v1/identity/self/describe answers any identity with its policy
//     (kes@v0.22.3 internal/http/gateway-key-api.go, internal/auth).
//   - kesPaged (2023-10-24 on: v0.23, v0.24): the listing takes a prefix
//     ("*" for all) and answers {"names","continue_at"} pages; a policy
//     path matches exactly, or by prefix when it ends in '*'; the
//     self-description answers the admin only (a non-admin gets "identity
//     does not exist": server.go selfDescribeIdentity looks up the empty
//     resource) (kes@v0.24.0 server.go, kms-go/kes policy.go).
type kesGeneration int

const (
	kesGlob kesGeneration = iota + 1
	kesPaged
)

func (g kesGeneration) String() string {
	if g == kesGlob {
		return "the API before KES's refactor of 2023-10-24 (v0.22.x: listing by glob, streamed)"
	}
	return "the API since KES's refactor of 2023-10-24 (v0.23, v0.24: listing by prefix, paged)"
}

// kesOldest is the oldest KES release the runbook works with: the oldest
// generation proven here against a real server is v0.22.3, and v0.22.0 is
// the first release of that API line.
const (
	kesOldest     = "v0.22.0"
	kesOldestDate = "2022-11-15" // the day v0.22.0 was tagged
)

// kesReleaseDate matches the commit-time versions KES releases report since
// 2022-12-05 ("2023-10-24T19-13-19Z"; kes internal/sys/build.go).
var kesReleaseDate = regexp.MustCompile(`^(\d{4}-\d{2}-\d{2})T\d{2}-\d{2}-\d{2}Z$`)

// kesVersionProblem says why a KES server reporting version is too old for
// the runbook, or "". Releases report a semantic version (up to v0.22.2)
// or the time of their commit; a build from source reports "<unknown>",
// which is judged by how its API answers instead.
func kesVersionProblem(version string) string {
	switch {
	case semver.IsValid(version) && semver.Compare(version, kesOldest) < 0:
	case kesReleaseDate.MatchString(version) && kesReleaseDate.FindStringSubmatch(version)[1] < kesOldestDate:
	default:
		return ""
	}
	return fmt.Sprintf("it runs KES %s, older than %s (released %s), the oldest KES this runbook works with: upgrade KES to %s or later (its key store stays as it is), or leave server out of the kes block to migrate and verify from the key store alone", version, kesOldest, kesOldestDate, kesOldest)
}

// kesServer is a KES server as the runbook found it: its version and API
// generation, and how to list its keys.
type kesServer struct {
	c          *kes.Client
	version    string
	generation kesGeneration
	// listing is how long the probe's listing of every name took: the
	// server's work and a round trip (kesListInFlight).
	listing time.Duration
	// rtt is a /version request the probe of the quiet plan before an
	// apply timed before its listing, early in the plan (0: not timed):
	// the served listing that plan starts (verification_served.go) sizes
	// itself by the round trip, and one timed later, while the plan judges
	// the key store, also times the wait for a CPU (76 ms measured on
	// loopback with KES on a CPU of its own), which kesListInFlight would
	// take for a distant server.
	rtt time.Duration
}

// roundTrip is the shortest of two /version requests on the connection the
// probe left open and the probe's own (rtt): a round trip to the server,
// which does no work for it; 0 when one fails.
func (s *kesServer) roundTrip(ctx context.Context) time.Duration {
	best := s.rtt
	for range 2 {
		start := time.Now()
		if _, err := s.c.Version(ctx); err != nil {
			return 0
		}
		if d := time.Since(start); best == 0 || d < best {
			best = d
		}
	}
	return best
}

// probeKESServer reads the server's version and, by listing every key once,
// its API generation; with timeRTT (the probe of the quiet plan before an
// apply) it also times a round trip first (kesServer.rtt). Errors: the
// server does not answer (as kes-go reports it), refuses the listing
// (kes.ErrNotAllowed), or is too old (a refusal, naming the version).
func probeKESServer(ctx context.Context, c *kes.Client, timeRTT bool) (*kesServer, error) {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	version, err := c.Version(cctx)
	if err != nil {
		return nil, err
	}
	s := &kesServer{c: c, version: version}
	if why := kesVersionProblem(version); why != "" {
		return s, &kesTooOld{why}
	}
	if timeRTT { // the first request opened the connection: this one is a round trip
		start := time.Now()
		if _, err := c.Version(cctx); err == nil {
			s.rtt = time.Since(start)
		}
	}
	start := time.Now()
	if _, _, s.generation, err = kesList(cctx, c, "*"); err != nil {
		return s, err
	}
	s.listing = time.Since(start)
	return s, nil
}

// Server probes the KES server (probeKESServer) and explains what stops it:
// too old, or a listing refused to the identity (refusals: nothing can be
// done until the operator acts), a key store that refuses the listing
// (Vault says why), or the server out of reach. In a plan, a probe that
// passed is kept for the plan's other steps (planOnce): each asks it at
// about the same moment, and it costs the server a listing of its store.
// An apply's step probes again: it checks what it acts on.
func (k *kesConnection) Server(ctx context.Context, r *engine.Run, addr string) (*kesServer, error) {
	c, err := k.Client(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	host := hostOf(k.Endpoint())
	srv, err := planOnce(r, kesProbeKey{c}, func() (*kesServer, error) { return probeKESServer(ctx, c, r != nil && r.BeforeApply()) })
	var old *kesTooOld
	switch {
	case err == nil:
		return srv, nil
	case errors.As(err, &old):
		return nil, engine.Refusef("%s: KES server %s: %s", addr, host, old.why)
	case errors.Is(err, kes.ErrNotAllowed):
		return nil, engine.Refusef("%s: KES server %s refused to list keys for the identity of the configured API key (%s): use the KES admin API key, or one whose policy allows %s", addr, host, kesIdentity(c), kesPolicyPaths)
	}
	// KES answers only "failed to list keys" when its key store refuses;
	// for a vault store, Vault says why.
	if conf, cerr := k.LoadConfig(r); cerr == nil && srv != nil {
		if verr := keystore.VaultListRefusal(ctx, conf); verr != nil {
			return nil, fmt.Errorf("%s: KES server %s answered %q to a key listing: its key store refuses the listing: %w", addr, host, err.Error(), verr)
		}
	}
	return nil, reachError("KES server", addr, k.Endpoint(), err)
}

// kesProbeKey keeps a plan's probe per client (sharedClient: one per
// server, trust and identity).
type kesProbeKey struct{ c *kes.Client }

// kesTooOld is a KES server older than the runbook works with.
type kesTooOld struct{ why string }

func (e *kesTooOld) Error() string { return e.why }

// list is a kesListFunc for this server: the names under prefix ("*" for
// all), one listing.
func (s *kesServer) list(ctx context.Context, prefix string) ([]string, string, error) {
	pattern := prefix
	if s.generation == kesGlob && prefix != "*" {
		pattern = prefix + "*" // a glob: every name that starts with prefix
	}
	names, next, _, err := kesList(ctx, s.c, pattern)
	return names, next, err
}

// kesListMax bounds what one listing may answer (1024 names of at most 80
// characters in a page; a v0.22 stream holds the whole store).
const kesListMax = 64 << 20

// kesList sends one GET /v1/key/list/<pattern> and reads either
// generation's answer: a {"names","continue_at"} page (kesPaged), or a
// stream of {"name"} / {"error"} JSON lines, or nothing at all when no name
// matches (kesGlob). kes-go reads the stream too, but fails on the empty
// answer of a v0.22 server with no key, and does not say which it got.
func kesList(ctx context.Context, c *kes.Client, pattern string) (names []string, next string, gen kesGeneration, err error) {
	resp, err := kesGet(ctx, c, "/v1/key/list/"+url.PathEscape(pattern))
	if err != nil {
		return nil, "", 0, err
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, kesListMax)
	ctype := resp.Header.Get("Content-Type")
	if ctype == "application/x-ndjson" || (resp.ContentLength == 0 && ctype == "") {
		sc := bufio.NewScanner(body)
		for sc.Scan() {
			var line struct{ Name, Error string }
			if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
				return nil, "", 0, fmt.Errorf("read the KES server's key listing: %w", err)
			}
			if line.Error != "" {
				return nil, "", 0, fmt.Errorf("the KES server's key listing ends in an error: %s", line.Error)
			}
			names = append(names, line.Name)
		}
		if err := sc.Err(); err != nil {
			return nil, "", 0, fmt.Errorf("read the KES server's key listing: %w", err)
		}
		return names, "", kesGlob, nil
	}
	var page struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at"`
	}
	if err := json.NewDecoder(body).Decode(&page); err != nil {
		return nil, "", 0, fmt.Errorf("read the KES server's key listing: %w", err)
	}
	return page.Names, page.ContinueAt, kesPaged, nil
}

// kesGet sends a GET to the client's first endpoint with the client's TLS
// identity, and turns an error answer into the kes-go error it stands for
// (kes.ErrNotAllowed, …), read as kes-go reads one: {"message"} or
// {"error"} JSON, else the text.
func kesGet(ctx context.Context, c *kes.Client, path string) (*http.Response, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("no KES server endpoint")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(c.Endpoints[0], "/")+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var msg struct{ Message, Error string }
	text := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &msg) == nil {
		text = msg.Message
		if msg.Error != "" {
			text = msg.Error
		}
	}
	if resp.StatusCode == http.StatusForbidden && text == "prohibited by policy" { // older servers' wording (kes-go error.go)
		return nil, kes.ErrNotAllowed
	}
	return nil, kes.NewError(resp.StatusCode, text)
}

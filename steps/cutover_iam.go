package steps

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"

	"github.com/runbook-dev/runbook/engine"
)

// iamPollInterval is how often checkIAMAfterRestart asks again while
// MinIO's IAM is still loading.
const iamPollInterval = time.Second

// checkIAMAfterRestart judges attempt g's restart by what the object store
// held before it: every IAM user, group, policy and service account and
// every bucket configuration recorded then (cutoverRestart.IAM,
// cutoverRestart.Buckets) must be present and read as before. MinIO seals
// them with the default key in force when each was written and loads its
// IAM all or nothing (docs/domain.md, What MinIO seals with its default
// key): one entry sealed under a key the KMS lacks leaves the lists of
// users, groups and service accounts unanswered, while root and the
// objects still read. It asks again, up to e.wait, while something does
// not read (IAM still loading).
//
// Into the Key Manager (back false) anything absent fails the attempt,
// naming the entries. Back onto KES (the rollback) only what does not read
// fails (forced, it is reported): when IAM loads, every entry read through
// KES, so nothing the Key Manager sealed is left; entries deleted or
// changed since the cutover are reported. Nothing recorded (the store did
// not list them before the restart) is nothing to check.
func (c *cutoverStep) checkIAMAfterRestart(ctx context.Context, r *engine.Run, e *cutoverEnv, g int, back bool) error {
	// A recorded restart that does not decode is an error: read as absent,
	// the check would be skipped as if nothing had been recorded.
	rs, _, err := restartItemsOf(g, false).restart.Get(r)
	if err != nil {
		return err
	}
	if rs.IAM == nil && rs.Buckets == nil && rs.ServerConfig == "" {
		r.Logf("no IAM entries or bucket configurations were recorded before the restart (the object store did not list them): not checked")
		return nil
	}
	admin, s3, err := e.a.Clients(r)
	if err != nil {
		return err
	}
	// Each round is whole (every request bounded by checkTimeout), so the
	// last one says what is absent, not that the wait ran out.
	deadline := time.Now().Add(e.wait)
	var ab iamAbsence
	for {
		ab = absentSince(ctx, admin, s3, rs)
		if len(ab.unread) == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(iamPollInterval):
		}
	}
	kms := kmsNameKeyManager
	if back {
		kms = kmsNameKES
	}
	switch {
	case len(ab.unread) == 0 && len(ab.missing) == 0:
		also := ""
		if rs.ServerConfig != "" {
			also = ", and so does the server configuration"
		}
		r.Logf("on %s the %d IAM entries and %d bucket configurations recorded before the restart are all present and read as before%s", kms, len(rs.IAM), len(rs.Buckets), also)
		return nil
	case back && len(ab.unread) == 0:
		r.Warnf("on %s again, not as before the cutover (deleted or changed since, on the Key Manager): %s", kms, strings.Join(shortList(ab.missing, 50), ", "))
		return nil
	}
	if back && r.Forced() {
		r.Warnf("rolled back although on %s %s (forced)", kms, ab)
		return nil
	}
	err = fmt.Errorf("check IAM and bucket configuration after the restart: on %s %s; the nodes' logs:%s", kms, ab, e.plat.Logs(ctx, r))
	if back {
		return engine.WithHint(err, "what was written while the object store ran on the Key Manager may be sealed under it, and KES cannot unseal it: MinIO then loads no IAM at all (the nodes' logs name what does not unseal). runbook rollback --force accepts that and finishes the rollback")
	}
	return engine.WithHint(err, "MinIO seals IAM and configuration with the default key in force when each was written; one sealed under a key the migration left out (its pattern) does not read on the Key Manager. Migrate every key the object store's default key ever was (pattern = \"*\") and run the cutover again")
}

// iamAbsence is what a restart lost of the IAM entries and bucket
// configurations recorded before it.
type iamAbsence struct {
	missing []string // "user NAME", "bucket NAME (…)": not there, or read otherwise
	unread  []string // recorded entries whose list did not answer, or bucket configurations that did not read
	why     []string // why those did not read
}

func (a iamAbsence) String() string {
	var parts []string
	if len(a.missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d of the IAM entries and bucket configurations recorded before the restart are missing: %s", len(a.missing), strings.Join(shortList(a.missing, 50), ", ")))
	}
	if len(a.unread) > 0 {
		parts = append(parts, fmt.Sprintf("%d do not read: %s (%s)", len(a.unread), strings.Join(shortList(a.unread, 50), ", "), strings.Join(shortList(a.why, 10), "; ")))
	}
	return strings.Join(parts, "; ")
}

// absentSince lists the IAM entries and bucket configurations now and
// returns those of rs that are absent.
func absentSince(ctx context.Context, admin *madmin.AdminClient, s3 *minio.Client, rs cutoverRestart) iamAbsence {
	var ab iamAbsence
	l := listIAM(ctx, admin, false)
	ab.why = append(ab.why, l.failed...)
	// The configuration is read after IAM: a restarted MinIO answers admin
	// calls while its configuration still loads, with its defaults, and
	// starts loading IAM only once the configuration has (cmd/server-main.go:
	// initServerConfig, then globalIAMSys.Init), so an IAM that lists means
	// the configuration read is the loaded one; one that does not makes the
	// round unread, and the caller asks again.
	if rs.ServerConfig != "" {
		switch d, err := serverConfigDigest(ctx, admin); {
		case err != nil:
			ab.unread = append(ab.unread, "the server configuration")
			ab.why = append(ab.why, err.Error())
		case d != rs.ServerConfig && len(l.failed) > 0:
			ab.unread = append(ab.unread, "the server configuration (IAM has not listed: it may still be loading)")
		case d != rs.ServerConfig:
			ab.missing = append(ab.missing, "the server configuration (it reads otherwise: MinIO runs on its defaults where config.json does not unseal)")
		}
	}
	for _, n := range rs.IAM {
		switch kind, _, _ := strings.Cut(n, " "); {
		case l.unlisted[kind]:
			ab.unread = append(ab.unread, n)
		case !l.has(n):
			ab.missing = append(ab.missing, n)
		}
	}
	if rs.Buckets == nil {
		return ab
	}
	lctx, cancel := context.WithTimeout(ctx, checkTimeout)
	buckets, err := s3.ListBuckets(lctx)
	cancel()
	if err != nil {
		ab.why = append(ab.why, fmt.Sprintf("list buckets: %v", err))
	}
	listed := map[string]bool{}
	for _, b := range buckets {
		listed[b.Name] = true
	}
	for _, name := range slices.Sorted(maps.Keys(rs.Buckets)) {
		bctx, cancel := context.WithTimeout(ctx, checkTimeout)
		d, err := bucketConfigDigest(bctx, s3, admin, name)
		cancel()
		switch {
		case err == nil && d != rs.Buckets[name]:
			ab.missing = append(ab.missing, "bucket "+name+" (its configuration reads otherwise)")
		case err != nil && buckets != nil && !listed[name]:
			ab.missing = append(ab.missing, "bucket "+name)
		case err != nil:
			ab.unread = append(ab.unread, "bucket "+name+" (configuration)")
			ab.why = append(ab.why, err.Error())
		}
	}
	return ab
}

// iamWrites is the IAM part of the write check before a rollback
// (checkNoNewWrites): entries added since restart rs, or changed after
// since, are found (writes the Key Manager sealed). A recorded entry that
// vanished, or a list or description that does not answer, is reported and
// not counted: on a Key Manager that cannot unseal an entry MinIO loads no
// IAM at all, and what is written then the rollback's own check finds, as
// an IAM that does not load on KES (checkIAMAfterRestart).
func iamWrites(ctx context.Context, admin *madmin.AdminClient, rs cutoverRestart, since time.Time) (found, reported []string) {
	l := listIAM(ctx, admin, true)
	before := map[string]bool{}
	for _, n := range rs.IAM {
		before[n] = true
		if kind, _, _ := strings.Cut(n, " "); !l.unlisted[kind] && !l.has(n) {
			reported = append(reported, "IAM "+n+" (vanished)")
		}
	}
	for _, en := range l.entries {
		switch {
		case rs.IAM != nil && !before[en.kind+" "+en.name]:
			found = append(found, "IAM "+en.kind+" "+en.name+" (added)")
		case en.updated.After(since):
			found = append(found, "IAM "+en.kind+" "+en.name+" (changed)")
		}
	}
	return found, append(reported, l.failed...)
}

// serverConfigDigest digests the server configuration now (before the
// restart); "" with a warning when it does not read.
func (c *cutoverStep) serverConfigDigest(ctx context.Context, r *engine.Run, e *cutoverEnv) string {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return ""
	}
	d, err := serverConfigDigest(ctx, admin)
	if err != nil {
		r.Warnf("the object store's server configuration does not read before the restart (%v): it is not compared after the restart", err)
		return ""
	}
	return d
}

// serverConfigDigest is the SHA-256 (hex) of the server configuration the
// object store runs with (madmin GetConfig: MinIO's configuration in
// memory, cmd/admin-handlers-config-kv.go GetConfigHandler), never kept
// itself: it holds credentials.
func serverConfigDigest(ctx context.Context, admin *madmin.AdminClient) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	cfg, err := admin.GetConfig(cctx)
	if err != nil {
		return "", fmt.Errorf("read the server configuration: %w", err)
	}
	sum := sha256.Sum256(cfg)
	return hex.EncodeToString(sum[:]), nil
}

// iamNames lists the IAM users, groups, policies and service accounts
// ("user NAME", "group NAME", "policy NAME", "service-account ACCESS-KEY"),
// sorted; nil when the object store does not list them all (the write
// check then relies on the times MinIO reports, and checkIAMAfterRestart
// has nothing to compare).
func (c *cutoverStep) iamNames(ctx context.Context, r *engine.Run, e *cutoverEnv) []string {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return nil
	}
	l := listIAM(ctx, admin, false)
	if len(l.failed) > 0 {
		r.Warnf("the object store's IAM does not list on KES before the restart (%s): it is not compared after the restart. An IAM entry sealed under a key KES no longer holds (a default key deleted at KES) keeps MinIO's whole IAM from loading, on KES as on the Key Manager", strings.Join(shortList(l.failed, 5), "; "))
		return nil
	}
	names := []string{}
	for _, en := range l.entries {
		names = append(names, en.kind+" "+en.name)
	}
	sort.Strings(names)
	return names
}

// iamPlanRisk is a plan risk when the object store's IAM does not list
// today: MinIO loads IAM all or nothing, so one entry sealed under a key
// KES no longer holds (a default key deleted at KES long ago) keeps every
// user, group and service account unavailable, on KES now as on the Key
// Manager after the cutover. No migration can carry a key KES lacks, and
// nothing recorded means nothing compared after the restart. "" when the
// IAM lists, or the object store cannot be asked (other checks say so).
func (c *cutoverStep) iamPlanRisk(ctx context.Context, r *engine.Run, e *cutoverEnv) string {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return ""
	}
	l := listIAM(ctx, admin, false)
	if len(l.failed) == 0 {
		return ""
	}
	return fmt.Sprintf("the object store's IAM does not list on KES today (%s): an IAM entry sealed under a key KES no longer holds (a default key deleted at KES) keeps MinIO from loading any; no migration can carry that key, its users, groups and service accounts stay unavailable on the Key Manager too, and the cutover cannot compare IAM after its restart. The nodes' logs name what does not unseal", strings.Join(shortList(l.failed, 5), "; "))
}

// iamEntry is one IAM user, group, policy or service account; updated is
// when MinIO says it last changed (zero when not asked, or for a service
// account, whose time MinIO does not report).
type iamEntry struct {
	kind, name string
	updated    time.Time
}

// iamListing is what listIAM could read: entries, failures as messages,
// and the kinds ("user", "group", "policy", "service-account") whose list
// did not answer.
type iamListing struct {
	entries  []iamEntry
	failed   []string
	unlisted map[string]bool
	names    map[string]bool // "KIND NAME" of each entry
}

func (l iamListing) has(name string) bool { return l.names[name] }

// listIAM lists every IAM user, group, policy and service account (MinIO
// seals them with the default key), one list request per kind, each
// bounded by checkTimeout; with times, it also asks each group's and
// policy's last change (a request each). MinIO holds the lists of users,
// groups and service accounts until its IAM has loaded, which never
// happens when one entry does not unseal: once one of those lists runs
// out of time, the others are not asked. What could not be read is
// returned as failures, the rest is listed.
func listIAM(ctx context.Context, admin *madmin.AdminClient, times bool) iamListing {
	il := &iamLister{ctx: ctx, l: iamListing{unlisted: map[string]bool{}}}
	il.ask("user", func(lctx context.Context) error {
		users, err := admin.ListUsers(lctx)
		for name, u := range users {
			il.l.entries = append(il.l.entries, iamEntry{"user", name, u.UpdatedAt})
		}
		return err
	})
	il.ask("group", func(lctx context.Context) error {
		groups, err := admin.ListGroups(lctx)
		for _, name := range groups {
			il.add("group", name, times, func(ctx context.Context) (time.Time, error) {
				d, err := admin.GetGroupDescription(ctx, name)
				if err != nil {
					return time.Time{}, err
				}
				return d.UpdatedAt, nil
			})
		}
		return err
	})
	il.ask("policy", func(lctx context.Context) error {
		policies, err := admin.ListCannedPolicies(lctx)
		for name := range policies {
			il.add("policy", name, times, func(ctx context.Context) (time.Time, error) {
				info, err := admin.InfoCannedPolicyV2(ctx, name)
				if err != nil {
					return time.Time{}, err
				}
				return info.UpdateDate, nil
			})
		}
		return err
	})
	// An access key is an identifier, not a secret.
	il.ask("service-account", func(lctx context.Context) error {
		resp, err := admin.ListAccessKeysBulk(lctx, nil, madmin.ListAccessKeysOpts{ListType: madmin.AccessKeyListSvcaccOnly, All: true})
		for _, keys := range resp {
			for _, a := range keys.ServiceAccounts {
				il.l.entries = append(il.l.entries, iamEntry{kind: "service-account", name: a.AccessKey})
			}
		}
		return err
	})
	il.l.names = map[string]bool{}
	for _, en := range il.l.entries {
		il.l.names[en.kind+" "+en.name] = true
	}
	return il.l
}

// iamLister gathers an iamListing one kind after another. Once the list
// of users, groups or service accounts runs out of time (MinIO's IAM has
// not loaded, so none of those will answer) the later ones are skipped;
// policies list without IAM loaded.
type iamLister struct {
	ctx     context.Context
	l       iamListing
	stalled string // the kind whose list ran out of time
}

// ask runs list, bounded by checkTimeout, and records how it failed.
func (il *iamLister) ask(kind string, list func(context.Context) error) {
	if il.stalled != "" && kind != "policy" {
		il.l.unlisted[kind] = true
		return
	}
	lctx, cancel := context.WithTimeout(il.ctx, checkTimeout)
	defer cancel()
	start := time.Now()
	err := list(lctx)
	switch {
	case err == nil:
	case errors.Is(lctx.Err(), context.DeadlineExceeded) && kind != "policy":
		il.stalled = kind
		il.l.unlisted[kind] = true
		il.l.failed = append(il.l.failed, fmt.Sprintf("MinIO answered no list of IAM %s in %s: its IAM has not loaded", iamPlural[kind], time.Since(start).Round(time.Second)))
	default:
		il.l.unlisted[kind] = true
		il.l.failed = append(il.l.failed, fmt.Sprintf("list IAM %s: %v", iamPlural[kind], err))
	}
}

// add records the entry kind name; with times, with its last change as
// describe reads it, bounded by checkTimeout on its own (there may be
// thousands). An entry that does not describe is a failure, not an entry.
func (il *iamLister) add(kind, name string, times bool, describe func(context.Context) (time.Time, error)) {
	en := iamEntry{kind: kind, name: name}
	if times {
		dctx, cancel := context.WithTimeout(il.ctx, checkTimeout)
		updated, err := describe(dctx)
		cancel()
		if err != nil {
			il.l.failed = append(il.l.failed, fmt.Sprintf("describe IAM %s %s: %v", kind, name, err))
			return
		}
		en.updated = updated
	}
	il.l.entries = append(il.l.entries, en)
}

var iamPlural = map[string]string{"user": "users", "group": "groups", "policy": "policies", "service-account": "service accounts"}

// shortList is list, cut to its first n and "and K more".
func shortList(list []string, n int) []string {
	if len(list) <= n {
		return list
	}
	return append(append([]string(nil), list[:n]...), fmt.Sprintf("and %d more", len(list)-n))
}

package steps

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/pkg/v3/policy"

	"github.com/runbook-dev/runbook/engine"
)

// After the restart the cutover uses its access key for things nothing
// before the restart proves it may: the write probe (cutover_probe.go)
// makes a bucket, writes, lists and removes; the health wait asks the KMS
// status and the default key's status and lists the servers. A key that
// may not would fail the cutover only after every node restarted, and the
// automatic rollback would restart them all again. So the plan reads the
// key's effective policies (MinIO's admin accountinfo: the policies of the
// user and its groups combined; consoleAdmin for root) and, for a service
// account with a policy of its own, that one too, and evaluates them with
// MinIO's own policy package for every right below.

// cutoverRight is one action the cutover needs after the restart, on what.
type cutoverRight struct {
	action policy.Action
	bucket string // the resource: a probe bucket, or the default key (KMS actions); "" for none
	object string
}

// cutoverRights are the rights checkCutoverAccess asks for, with
// defaultKey the key whose status the health wait asks (MinIO:
// cmd/kms-handlers.go checks kms:Status, and kms:KeyStatus on the key;
// cmd/admin-handlers.go admin:ServerInfo).
func cutoverRights(defaultKey string) []cutoverRight {
	const bucket = "runbook-write-probe-00000000"
	return []cutoverRight{
		{policy.CreateBucketAction, bucket, ""},
		{policy.PutObjectAction, bucket, "probe/server"},
		{policy.ListBucketAction, bucket, ""},
		{policy.DeleteObjectAction, bucket, "probe/server"},
		{policy.DeleteBucketAction, bucket, ""},
		{policy.KMSStatusAction, "", ""},
		{policy.KMSKeyStatusAction, defaultKey, ""},
		{policy.ServerInfoAdminAction, "", ""},
	}
}

// cutoverAccessHint is how to fix an access key that lacks a right.
const cutoverAccessHint = "after the restart the cutover proves each server writable and waits for the KMS status with the aistor block's access key: it must be allowed s3:CreateBucket, s3:PutObject, s3:ListBucket, s3:DeleteObject and s3:DeleteBucket on arn:aws:s3:::runbook-write-probe-* and arn:aws:s3:::runbook-write-probe-*/*, kms:Status, kms:KeyStatus on the default key, and admin:ServerInfo (besides the reads and admin calls the plan already made with it); attach a policy that allows them, or use the root credentials"

// checkCutoverAccess refuses, before any change, an access key whose
// policies do not allow every cutoverRights right. It returns a plan risk
// instead when it cannot judge: the policies cannot be read, or a
// statement's conditions decide (their values exist only in a request:
// the verdict with no condition met differs from the one with every
// condition met).
func (c *cutoverStep) checkCutoverAccess(ctx context.Context, r *engine.Run, e *cutoverEnv, defaultKey string) (string, error) {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return "", err
	}
	policies, account, err := accessPolicies(ctx, admin, e.a.cfg.AccessKey)
	if err != nil {
		return fmt.Sprintf("cannot read the policies of the aistor block's access key (%v), so the plan cannot tell whether the cutover may use it after the restart; %s", err, cutoverAccessHint), nil
	}
	// A condition's values exist only in a request: judge with no condition
	// met and with every one met; where the two differ, conditions decide.
	rights := cutoverRights(defaultKey)
	noneMet := deniedRights(conditionsMet(policies, false), account, rights)
	allMet := deniedRights(conditionsMet(policies, true), account, rights)
	who := e.a.cfg.AccessKey
	if account != who {
		who += " (a service account of " + account + ")"
	}
	switch {
	case !slices.Equal(noneMet, allMet):
		return fmt.Sprintf("the policies of the aistor block's access key %s have conditions that decide whether it may use %s after the restart (with no condition met denied: %s; with every one met denied: %s); if a request of the cutover does not meet them, the cutover fails after the restart and rolls back; %s", who, deniedText(union(noneMet, allMet)), orNone(noneMet), orNone(allMet), cutoverAccessHint), nil
	case len(allMet) > 0:
		return "", engine.RefuseWithHint(cutoverAccessHint, "the policies of the aistor block's access key %s do not allow %s, which the cutover uses after restarting every node, so it would fail then", who, deniedText(allMet))
	}
	return "", nil
}

// deniedRights lists the rights (action and resource) some policy does not
// allow.
func deniedRights(policies []*policy.Policy, account string, rights []cutoverRight) []string {
	var denied []string
	for _, rt := range rights {
		args := policy.Args{AccountName: account, Action: rt.action, BucketName: rt.bucket, ObjectName: rt.object, ConditionValues: map[string][]string{}}
		for _, p := range policies {
			if !p.IsAllowed(args) {
				denied = append(denied, rightName(rt))
				break
			}
		}
	}
	return denied
}

// rightName is the action, and the key of a KMS action on one (an S3
// action is on the probe's buckets: deniedText says so once).
func rightName(rt cutoverRight) string {
	if rt.bucket != "" && !strings.HasPrefix(string(rt.action), "s3:") {
		return string(rt.action) + " on key " + rt.bucket
	}
	return string(rt.action)
}

// deniedText lists denied rights, saying where the S3 ones apply.
func deniedText(denied []string) string {
	s := strings.Join(denied, ", ")
	if slices.ContainsFunc(denied, func(d string) bool { return strings.HasPrefix(d, "s3:") }) {
		s += " (the S3 actions on the write probe's buckets runbook-write-probe-*)"
	}
	return s
}

// conditionsMet is policies as they judge when every condition is met
// (met: the conditions left out) or none is (the statements with
// conditions left out).
func conditionsMet(policies []*policy.Policy, met bool) []*policy.Policy {
	out := make([]*policy.Policy, len(policies))
	for i, p := range policies {
		q := *p
		q.Statements = nil
		for _, st := range p.Statements {
			if len(st.Conditions) > 0 {
				if !met {
					continue
				}
				st.Conditions = nil
			}
			q.Statements = append(q.Statements, st)
		}
		out[i] = &q
	}
	return out
}

func union(a, b []string) []string {
	u := slices.Concat(a, b)
	slices.Sort(u)
	return slices.Compact(u)
}

// accessPolicies returns the policies that must all allow an action of
// accessKey, and the account MinIO evaluates them for (a service account's
// parent user). Errors: the admin API's, or a policy that does not parse.
func accessPolicies(ctx context.Context, admin *madmin.AdminClient, accessKey string) ([]*policy.Policy, string, error) {
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	info, err := admin.AccountInfo(cctx, madmin.AccountOpts{})
	if err != nil {
		return nil, "", fmt.Errorf("read account info: %w", err)
	}
	p, err := policy.ParseConfig(bytes.NewReader(info.Policy))
	if err != nil {
		return nil, "", fmt.Errorf("parse the account's policy: %w", err)
	}
	policies := []*policy.Policy{p}
	if info.AccountName == accessKey {
		return policies, info.AccountName, nil
	}
	// Derived credentials: MinIO reports the parent's policy; a service
	// account may be narrowed by a policy of its own.
	sa, err := admin.InfoServiceAccount(cctx, accessKey)
	if err != nil {
		return nil, "", fmt.Errorf("read service account %s: %w", accessKey, err)
	}
	if !sa.ImpliedPolicy && sa.Policy != "" {
		own, err := policy.ParseConfig(strings.NewReader(sa.Policy))
		if err != nil {
			return nil, "", fmt.Errorf("parse service account %s's policy: %w", accessKey, err)
		}
		policies = append(policies, own)
	}
	return policies, info.AccountName, nil
}

package steps

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/minio/madmin-go/v3"
	"github.com/minio/pkg/v3/policy"

	"github.com/runbook-dev/runbook/engine"
)

// The write probe (cutover_probe.go) is the one thing the cutover does
// with its access key that nothing before the restart does: it makes a
// bucket, writes, lists, removes. An access key that may not would fail
// the cutover only after every node restarted onto the Key Manager, and
// the automatic rollback would restart them all again. So the plan reads
// the key's effective policy (MinIO's admin accountinfo: the policies of
// the user and its groups combined; consoleAdmin for root) and, for a
// service account with a policy of its own, that one too, and evaluates
// them with MinIO's own policy package.

// probeActions are the S3 actions the write probe needs on its bucket
// runbook-write-probe-*: bucket-level ones without an object, the others
// on the probe's objects.
var probeActions = []struct {
	action policy.Action
	object bool
}{
	{policy.CreateBucketAction, false},
	{policy.PutObjectAction, true},
	{policy.ListBucketAction, false},
	{policy.DeleteObjectAction, true},
	{policy.DeleteBucketAction, false},
}

// probeAccessHint is how to fix an access key the write probe cannot use.
const probeAccessHint = "the aistor block's access key must be allowed to make, write, list and remove the buckets runbook-write-probe-* (s3:CreateBucket, s3:PutObject, s3:ListBucket, s3:DeleteObject, s3:DeleteBucket): the cutover proves each server writable with them after the restart; attach a policy that allows them on arn:aws:s3:::runbook-write-probe-* and arn:aws:s3:::runbook-write-probe-*/*, or use the root credentials"

// checkProbeAccess refuses, before any change, an access key whose
// policies do not allow every probeActions action on a probe bucket. It
// returns a plan risk instead when it cannot judge: the policies cannot be
// read, or a statement has conditions (their values exist only in a
// request).
func (c *cutoverStep) checkProbeAccess(ctx context.Context, r *engine.Run, e *cutoverEnv) (string, error) {
	admin, _, err := e.a.Clients(r)
	if err != nil {
		return "", err
	}
	policies, account, err := accessPolicies(ctx, admin, e.a.cfg.AccessKey)
	if err != nil {
		return fmt.Sprintf("cannot read the policies of the aistor block's access key (%v), so the plan cannot tell whether the write probe after the restart may make its bucket; %s", err, probeAccessHint), nil
	}
	bucket := "runbook-write-probe-00000000"
	var denied []string
	conditional := false
	for _, p := range policies {
		for _, st := range p.Statements {
			conditional = conditional || len(st.Conditions) > 0
		}
	}
	for _, pa := range probeActions {
		args := policy.Args{AccountName: account, Action: pa.action, BucketName: bucket, ConditionValues: map[string][]string{}}
		if pa.object {
			args.ObjectName = "probe/server"
		}
		for _, p := range policies {
			if !p.IsAllowed(args) {
				denied = append(denied, string(pa.action))
				break
			}
		}
	}
	if len(denied) == 0 {
		return "", nil
	}
	who := e.a.cfg.AccessKey
	if account != who {
		who += " (a service account of " + account + ")"
	}
	if conditional {
		return fmt.Sprintf("the policies of the aistor block's access key %s have conditions, and without them they do not allow %s on the write probe's bucket; if a request of the cutover does not meet them, the cutover fails after the restart and rolls back; %s", who, strings.Join(denied, ", "), probeAccessHint), nil
	}
	return "", engine.RefuseWithHint(probeAccessHint, "the policies of the aistor block's access key %s do not allow %s on the write probe's bucket runbook-write-probe-*, so the cutover would fail after restarting every node", who, strings.Join(denied, ", "))
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

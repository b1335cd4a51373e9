package main

import (
	"context"
	"sort"
	"strings"

	"aead.dev/mtls"
	"github.com/minio/kms-go/kms"
	"github.com/minio/kms-go/kms/cmds"
	"github.com/rogpeppe/go-internal/testscript"
)

// Script commands that look at the Key Manager emulator the way an auditor
// would after a refused rollback or a lost secret (identity_key_lost.txtar,
// rollback_keys_in_use.txtar).
func init() {
	// km-delete-enclave NAME: delete an enclave at the Key Manager (KM_*).
	moreScriptCmds["km-delete-enclave"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 1 {
			ts.Fatalf("usage: km-delete-enclave NAME")
		}
		ts.Check(kmClient(ts).DeleteEnclave(context.Background(), &kms.DeleteEnclaveRequest{Name: args[0]}))
	}
	// km-delete-identities ENCLAVE: delete every identity of an enclave, as
	// an administrator cleaning up by hand would (cutover_km_refuses_api_key.txtar).
	moreScriptCmds["km-delete-identities"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 1 {
			ts.Fatalf("usage: km-delete-identities ENCLAVE")
		}
		c := kmClient(ts)
		page, err := c.ListIdentities(context.Background(), &kms.ListRequest{Enclave: args[0]})
		ts.Check(err)
		for _, id := range page.Items {
			ts.Check(c.DeleteIdentity(context.Background(), args[0], &kms.DeleteIdentityRequest{Identity: id.Identity}))
		}
		if page.ContinueAt != "" {
			ts.Fatalf("km-delete-identities: enclave %s has more identities than one page", args[0])
		}
	}
	// km-add-identity ENCLAVE KEYFILE PRIVILEGE: register the identity of the
	// API key in KEYFILE (k1:…) in the enclave with PRIVILEGE (Admin, User).
	moreScriptCmds["km-add-identity"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 3 {
			ts.Fatalf("usage: km-add-identity ENCLAVE KEYFILE PRIVILEGE")
		}
		key, err := mtls.ParsePrivateKey(strings.TrimSpace(ts.ReadFile(args[1])))
		ts.Check(err)
		priv, err := kms.ParsePrivilege(args[2])
		ts.Check(err)
		ts.Check(kmClient(ts).CreateIdentity(context.Background(), args[0], &kms.CreateIdentityRequest{Identity: key.Identity(), Privilege: priv}))
	}
	// km-allow ENCLAVE KEYFILE GENERATE DECRYPT: assign the identity of the
	// API key in KEYFILE a policy (made here) that allows generating data
	// keys under the keys matching the comma-separated patterns GENERATE and
	// decrypting under those matching DECRYPT, as a Key Manager administrator
	// gives a User what MinIO needs.
	moreScriptCmds["km-allow"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 4 {
			ts.Fatalf("usage: km-allow ENCLAVE KEYFILE GENERATE DECRYPT")
		}
		key, err := mtls.ParsePrivateKey(strings.TrimSpace(ts.ReadFile(args[1])))
		ts.Check(err)
		rules := func(patterns string) kms.RuleSet {
			set := kms.RuleSet{}
			for _, p := range strings.Split(patterns, ",") {
				set[p] = kms.Rule{}
			}
			return set
		}
		c, ctx := kmClient(ts), context.Background()
		const name = "minio-nodes"
		ts.Check(c.CreatePolicy(ctx, args[0], &kms.CreatePolicyRequest{Name: name, Allow: map[cmds.Command]kms.RuleSet{cmds.KeyGenerate: rules(args[2]), cmds.KeyDecrypt: rules(args[3])}}))
		ts.Check(c.AssignPolicy(ctx, args[0], &kms.AssignPolicyRequest{Policy: name, Identity: key.Identity()}))
	}
	// km-identities ENCLAVE FILE: write the enclave's identities and their
	// privileges, sorted, one a line ("h1:… Admin").
	moreScriptCmds["km-identities"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if len(args) != 2 {
			ts.Fatalf("usage: km-identities ENCLAVE FILE")
		}
		c := kmClient(ts)
		var lines []string
		req := &kms.ListRequest{Enclave: args[0]}
		for {
			page, err := c.ListIdentities(context.Background(), req)
			ts.Check(err)
			for _, id := range page.Items {
				lines = append(lines, id.Identity.String()+" "+id.Privilege.String())
			}
			if page.ContinueAt == "" || len(page.Items) == 0 {
				break
			}
			req = &kms.ListRequest{Enclave: args[0], ContinueAt: page.ContinueAt}
		}
		sort.Strings(lines)
		writeLines(ts, args[1], lines)
	}
}

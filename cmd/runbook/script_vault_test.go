package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// Script commands for the vault key store scripts (keystore_vault_*.txtar),
// run against the script's Vault (vault-server) with its root token:
//
//	vault-put PATH FIELD VALUE
//	    writes FIELD=VALUE at PATH (e.g. kv1/kes/archive/old for kv v1,
//	    kv2/data/kes/archive/old for kv v2: the data is then wrapped as
//	    kv v2 wants it).
//	vault-list PATH FILE
//	    writes the names Vault lists at PATH, sorted, one a line.
//	vault-policy-add NAME RULE
//	    appends RULE (HCL) to the Vault policy NAME.
func init() {
	moreScriptCmds["vault-put"] = cmdVaultPut
	moreScriptCmds["vault-list"] = cmdVaultList
	moreScriptCmds["vault-policy-add"] = func(ts *testscript.TestScript, neg bool, args []string) {
		if neg || len(args) != 2 {
			ts.Fatalf("usage: vault-policy-add NAME RULE")
		}
		c := vaultRoot(ts)
		ctx := context.Background()
		policy, err := c.Sys().GetPolicyWithContext(ctx, args[0])
		ts.Check(err)
		if policy == "" {
			ts.Fatalf("vault-policy-add: no Vault policy %s", args[0])
		}
		ts.Check(c.Sys().PutPolicyWithContext(ctx, args[0], policy+"\n"+args[1]+"\n"))
	}
}

func vaultRoot(ts *testscript.TestScript) *vaultapi.Client {
	url, token := ts.Getenv("VAULT_URL"), ts.Getenv("VAULT_ROOT_TOKEN")
	if url == "" || token == "" {
		ts.Fatalf("run vault-server first")
	}
	hc := &http.Client{Timeout: time.Minute}
	if ca := ts.Getenv("VAULT_CA"); ca != "" {
		pool, err := testenv.CertPool(ca)
		ts.Check(err)
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	c, err := vaultapi.NewClient(&vaultapi.Config{Address: url, HttpClient: hc})
	ts.Check(err)
	c.ClearNamespace()
	c.SetToken(token)
	return c
}

func cmdVaultPut(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: vault-put PATH FIELD VALUE")
	}
	data := map[string]any{args[1]: args[2]}
	if p := strings.SplitN(args[0], "/", 3); len(p) == 3 && p[1] == "data" {
		data = map[string]any{"data": data}
	}
	_, err := vaultRoot(ts).Logical().WriteWithContext(context.Background(), args[0], data)
	ts.Check(err)
}

func cmdVaultList(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: vault-list PATH FILE")
	}
	s, err := vaultRoot(ts).Logical().ListWithContext(context.Background(), args[0])
	ts.Check(err)
	var names []string
	if s != nil {
		keys, _ := s.Data["keys"].([]any)
		for _, k := range keys {
			names = append(names, k.(string))
		}
	}
	slices.Sort(names)
	out := strings.Join(names, "\n")
	if out != "" {
		out += "\n"
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(out), 0o644))
}

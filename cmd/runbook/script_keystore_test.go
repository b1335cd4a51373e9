package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"strings"

	kes "github.com/minio/kes-go"
	"github.com/minio/kms-go/kms"
	"github.com/rogpeppe/go-internal/testscript"
)

// Script commands for the key-store scripts (keystore_*.txtar):
//
//	kes-identity PREFIX
//	    a new KES API key: sets PREFIX_API_KEY (kes:v1:…) and
//	    PREFIX_IDENTITY (its identity, for a policy block).
//	kes-seal [-env PREFIX] FILE NAME...
//	    has the KES server $PREFIX_SERVER (default KES) generate a data key
//	    under each NAME, as MinIO does for an object, and writes one line per
//	    key to FILE: name, context, ciphertext and plaintext (base64).
//	ct-format FILE raw|msgpack|json
//	    every ciphertext in FILE (kes-seal) is in that format.
//	km-decrypt ENCLAVE FILE
//	    the script's Key Manager decrypts every ciphertext in FILE (kes-seal)
//	    under its key name in ENCLAVE to the plaintext KES gave; with !, none
//	    of them does.
//	km-enclaves FILE
//	    writes the names of the script's Key Manager's enclaves to FILE,
//	    sorted, one a line (an empty file when there is none).
func init() {
	moreScriptCmds["km-enclaves"] = cmdKMEnclaves
	moreScriptCmds["kes-identity"] = cmdKESIdentity
	moreScriptCmds["kes-seal"] = cmdKESSeal
	moreScriptCmds["ct-format"] = cmdCTFormat
	moreScriptCmds["km-decrypt"] = cmdKMDecrypt
}

func cmdKESIdentity(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: kes-identity PREFIX")
	}
	key, err := kes.GenerateAPIKey(rand.Reader)
	ts.Check(err)
	ts.Setenv(args[0]+"_API_KEY", key.String())
	ts.Setenv(args[0]+"_IDENTITY", key.Identity().String())
}

// sealedLine is one line of a kes-seal file.
type sealedLine struct {
	name                        string
	context, ciphertext, secret []byte
}

func readSealed(ts *testscript.TestScript, file string) []sealedLine {
	var out []sealedLine
	for _, l := range strings.Split(strings.TrimSpace(ts.ReadFile(file)), "\n") {
		f := strings.Fields(l)
		if len(f) != 4 {
			ts.Fatalf("%s: bad line %q", file, l)
		}
		var s sealedLine
		s.name = f[0]
		var err error
		for i, dst := range []*[]byte{&s.context, &s.ciphertext, &s.secret} {
			*dst, err = base64.StdEncoding.DecodeString(f[i+1])
			ts.Check(err)
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		ts.Fatalf("%s holds no ciphertext", file)
	}
	return out
}

func cmdKESSeal(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "kes-seal", neg)
	env := fs.String("env", "KES", "prefix of the KES server's environment variables")
	ts.Check(fs.Parse(args))
	if fs.NArg() < 2 {
		ts.Fatalf("usage: kes-seal [-env PREFIX] FILE NAME...")
	}
	c := scriptKESClient(ts, *env)
	ctx, cancel := scriptCtx()
	defer cancel()
	var b strings.Builder
	for _, name := range fs.Args()[1:] {
		aad := []byte(fmt.Sprintf(`{"bucket":"bucket/%s"}`, name))
		dek, err := c.GenerateKey(ctx, name, aad)
		if err != nil {
			ts.Fatalf("kes-seal: generate a data key under %s: %v", name, err)
		}
		enc := base64.StdEncoding.EncodeToString
		fmt.Fprintf(&b, "%s %s %s %s\n", name, enc(aad), enc(dek.Ciphertext), enc(dek.Plaintext))
	}
	ts.Check(os.WriteFile(ts.MkAbs(fs.Arg(0)), []byte(b.String()), 0o600))
}

func cmdCTFormat(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: ct-format FILE raw|msgpack|json")
	}
	for _, s := range readSealed(ts, args[0]) {
		got := "raw"
		switch s.ciphertext[0] {
		case 0x95:
			got = "msgpack"
		case '{':
			got = "json"
		}
		if got != args[1] {
			ts.Fatalf("ciphertext of %s is in the %s format, want %s", s.name, got, args[1])
		}
	}
}

func cmdKMDecrypt(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: km-decrypt ENCLAVE FILE")
	}
	c := scriptKMS(ts)
	ctx, cancel := scriptCtx()
	defer cancel()
	for _, s := range readSealed(ts, args[1]) {
		resp, err := c.Decrypt(ctx, args[0], &kms.DecryptRequest{Name: s.name, Ciphertext: s.ciphertext, AssociatedData: s.context})
		ok := err == nil && len(resp) == 1 && bytes.Equal(resp[0].Plaintext, s.secret)
		switch {
		case ok && neg:
			ts.Fatalf("km-decrypt: the Key Manager decrypted the ciphertext of %s", s.name)
		case !ok && !neg:
			ts.Fatalf("km-decrypt: the Key Manager did not decrypt the ciphertext of %s to KES's plaintext (%v)", s.name, err)
		}
	}
}

func cmdKMEnclaves(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: km-enclaves FILE")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	var names []string
	req := &kms.ListRequest{}
	for {
		page, err := scriptKMS(ts).ListEnclaves(ctx, req)
		ts.Check(err)
		for _, e := range page.Items {
			names = append(names, e.Name)
		}
		if page.ContinueAt == "" || len(page.Items) == 0 {
			break
		}
		req = &kms.ListRequest{ContinueAt: page.ContinueAt}
	}
	slices.Sort(names)
	writeLines(ts, args[0], names)
}

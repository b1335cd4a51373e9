package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/minio/kms-go/kms"
	"github.com/minio/madmin-go/v3"
	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/rogpeppe/go-internal/testscript"

	"github.com/runbook-dev/runbook/internal/testenv"
)

// Script commands of the cutover scripts (testdata/scripts/cutover_*.txtar):
//
//	minio-cluster [-nodes N] [-drives D] [-kes] [-key NAME]
//	    a distributed MinIO of N server processes (testenv.CmdMinIOCluster).
//	objects-snapshot FILE
//	    reads every object of every bucket of the script's MinIO in full
//	    (GET, every byte: what SSE decryption must survive) and writes
//	    "bucket/key sha256 SSE" lines, sorted, to FILE; fails if any
//	    object does not read.
//	kms-status
//	    prints AIStor's KMS status: "name=… default-key=… endpoints=N/M
//	    online" (madmin KMSStatus).
//	nosecretfile FILE PATH...
//	    nosecret, with the secret read from FILE.
//	km-no-enclave NAME
//	    the script's Key Manager holds no enclave NAME (EnclaveStatus
//	    answers ErrEnclaveNotFound): nothing was created.
//	minio-admin add-user NAME SECRET | get-config SUBSYS | set-config KV | add-policy NAME |
//	            add-group NAME USER... | add-service-account USER |
//	            set-quota BUCKET BYTES | set-remote-target BUCKET TARGET |
//	            list-iam | list-remote-targets BUCKET
//	    list-iam prints "user NAME", "group NAME", "policy NAME" and
//	    "service-account ACCESS-KEY" lines, sorted; list-remote-targets
//	    "BUCKET -> TARGET" lines. The others change the script's MinIO
//	    through its admin API (madmin AddUser, SetConfigKV, AddCannedPolicy,
//	    UpdateGroupMembers, AddServiceAccount, SetBucketQuota), as an
//	    operator would; set-remote-target creates BUCKET and TARGET with
//	    versioning and makes TARGET, on the same MinIO with its root
//	    credentials, BUCKET's replication target (madmin SetRemoteTarget:
//	    MinIO seals those credentials with its default key).
func init() {
	moreScriptCmds["minio-cluster"] = testenv.ShortSkips("a real MinIO server", testenv.CmdMinIOCluster)
	moreScriptCmds["objects-snapshot"] = cmdObjectsSnapshot
	moreScriptCmds["kms-status"] = cmdKMSStatus
	moreScriptCmds["nosecretfile"] = cmdNoSecretFile
	moreScriptCmds["minio-admin"] = cmdMinIOAdmin
	moreScriptCmds["km-no-enclave"] = cmdKMNoEnclave
}

func cmdKMNoEnclave(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: km-no-enclave NAME")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	_, err := kmClient(ts).EnclaveStatus(ctx, &kms.EnclaveStatusRequest{Name: args[0]})
	switch {
	case err == nil:
		ts.Fatalf("km-no-enclave: enclave %s exists at the Key Manager", args[0])
	case !errors.Is(err, kms.ErrEnclaveNotFound):
		ts.Fatalf("km-no-enclave: status of enclave %s: %v", args[0], err)
	}
}

func cmdObjectsSnapshot(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "objects-snapshot", neg)
	ts.Check(fs.Parse(args))
	if fs.NArg() != 1 {
		ts.Fatalf("usage: objects-snapshot FILE")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	c := scriptMinIO(ts)
	buckets, err := c.ListBuckets(ctx)
	ts.Check(err)
	var lines []string
	for _, b := range buckets {
		for obj := range c.ListObjects(ctx, b.Name, minio.ListObjectsOptions{Recursive: true}) {
			ts.Check(obj.Err)
			o, err := c.GetObject(ctx, b.Name, obj.Key, minio.GetObjectOptions{})
			ts.Check(err)
			h := sha256.New()
			_, err = io.Copy(h, o)
			if err != nil {
				ts.Fatalf("objects-snapshot: read %s/%s: %v", b.Name, obj.Key, err)
			}
			st, err := o.Stat()
			ts.Check(err)
			o.Close()
			sse := st.Metadata.Get("X-Amz-Server-Side-Encryption")
			if id := st.Metadata.Get("X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id"); id != "" {
				sse += ":" + strings.TrimPrefix(id, "arn:aws:kms:")
			}
			if sse == "" {
				sse = "none"
			}
			lines = append(lines, fmt.Sprintf("%s/%s %s %s", b.Name, obj.Key, hex.EncodeToString(h.Sum(nil)), sse))
		}
	}
	sort.Strings(lines)
	ts.Check(os.WriteFile(ts.MkAbs(fs.Arg(0)), []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	fmt.Fprintf(ts.Stdout(), "%d objects read\n", len(lines))
}

func scriptAdmin(ts *testscript.TestScript) *madmin.AdminClient {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = scriptTLS(ts, "MINIO_CA")
	adm, err := madmin.NewWithOptions(ts.Getenv("MINIO_ENDPOINT"), &madmin.Options{
		Creds:     credentials.NewStaticV4(ts.Getenv("MINIO_ROOT_USER"), ts.Getenv("MINIO_ROOT_PASSWORD"), ""),
		Secure:    true,
		Transport: tr,
	})
	ts.Check(err)
	return adm
}

func cmdMinIOAdmin(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("minio-admin cannot be negated")
	}
	ctx, cancel := scriptCtx()
	defer cancel()
	switch {
	case len(args) == 3 && args[0] == "add-user":
		ts.Check(scriptAdmin(ts).AddUser(ctx, args[1], args[2]))
	case len(args) == 2 && args[0] == "get-config":
		// A restarted MinIO answers admin calls with its default
		// configuration until config.json has loaded; IAM loads after it.
		adm := scriptAdmin(ts)
		if err := testenv.IAMLoaded(adm, 2*time.Minute); err != nil {
			ts.Fatalf("get-config: the configuration may not have loaded: %v", err)
		}
		kv, err := adm.GetConfigKV(ctx, args[1])
		ts.Check(err)
		fmt.Fprintf(ts.Stdout(), "%s\n", bytes.TrimSpace(kv))
	case len(args) == 2 && args[0] == "set-config":
		_, err := scriptAdmin(ts).SetConfigKV(ctx, args[1])
		ts.Check(err)
	case len(args) == 2 && args[0] == "add-policy":
		ts.Check(scriptAdmin(ts).AddCannedPolicy(ctx, args[1], []byte(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":["arn:aws:s3:::data/*"]}]}`)))
	case len(args) == 3 && args[0] == "add-policy":
		ts.Check(scriptAdmin(ts).AddCannedPolicy(ctx, args[1], []byte(ts.ReadFile(args[2]))))
	case len(args) == 3 && args[0] == "attach-policy":
		_, err := scriptAdmin(ts).AttachPolicy(ctx, madmin.PolicyAssociationReq{Policies: []string{args[1]}, User: args[2]})
		ts.Check(err)
	case len(args) == 1 && args[0] == "list-iam":
		adm := scriptAdmin(ts)
		users, err := adm.ListUsers(ctx)
		ts.Check(err)
		groups, err := adm.ListGroups(ctx)
		ts.Check(err)
		policies, err := adm.ListCannedPolicies(ctx)
		ts.Check(err)
		var lines []string
		for name := range users {
			lines = append(lines, "user "+name)
		}
		for _, name := range groups {
			lines = append(lines, "group "+name)
		}
		for name := range policies {
			lines = append(lines, "policy "+name)
		}
		accounts, err := adm.ListAccessKeysBulk(ctx, nil, madmin.ListAccessKeysOpts{ListType: madmin.AccessKeyListSvcaccOnly, All: true})
		ts.Check(err)
		for _, keys := range accounts {
			for _, a := range keys.ServiceAccounts {
				lines = append(lines, "service-account "+a.AccessKey)
			}
		}
		sort.Strings(lines)
		for _, l := range lines {
			fmt.Fprintln(ts.Stdout(), l)
		}
	case len(args) >= 3 && args[0] == "add-group":
		ts.Check(scriptAdmin(ts).UpdateGroupMembers(ctx, madmin.GroupAddRemove{Group: args[1], Members: args[2:]}))
	case len(args) == 2 && args[0] == "add-service-account":
		_, err := scriptAdmin(ts).AddServiceAccount(ctx, madmin.AddServiceAccountReq{TargetUser: args[1]})
		ts.Check(err)
	case len(args) == 5 && args[0] == "add-service-account":
		// USER ACCESS SECRET POLICYFILE: a service account narrowed by a policy of its own
		_, err := scriptAdmin(ts).AddServiceAccount(ctx, madmin.AddServiceAccountReq{TargetUser: args[1], AccessKey: args[2], SecretKey: args[3], Policy: []byte(ts.ReadFile(args[4]))})
		ts.Check(err)
	case len(args) == 3 && args[0] == "set-quota":
		size, err := strconv.ParseUint(args[2], 10, 64)
		ts.Check(err)
		ts.Check(scriptAdmin(ts).SetBucketQuota(ctx, args[1], &madmin.BucketQuota{Size: size, Type: madmin.HardQuota}))
	case len(args) == 3 && args[0] == "set-remote-target":
		c := scriptMinIO(ts)
		for _, b := range args[1:] {
			ensureBucket(ctx, ts, c, b)
			ts.Check(c.EnableVersioning(ctx, b))
		}
		_, err := scriptAdmin(ts).SetRemoteTarget(ctx, args[1], &madmin.BucketTarget{
			Endpoint:     ts.Getenv("MINIO_ENDPOINT"),
			Secure:       true,
			TargetBucket: args[2],
			Type:         madmin.ReplicationService,
			API:          "s3v4",
			Credentials:  &madmin.Credentials{AccessKey: ts.Getenv("MINIO_ROOT_USER"), SecretKey: ts.Getenv("MINIO_ROOT_PASSWORD")},
		})
		ts.Check(err)
	case len(args) == 2 && args[0] == "list-remote-targets":
		targets, err := scriptAdmin(ts).ListRemoteTargets(ctx, args[1], "")
		ts.Check(err)
		for _, t := range targets {
			fmt.Fprintf(ts.Stdout(), "%s -> %s\n", t.SourceBucket, t.TargetBucket)
		}
	default:
		ts.Fatalf("usage: minio-admin add-user NAME SECRET | get-config SUBSYS | set-config KV | add-policy NAME [FILE] | attach-policy POLICY USER | add-group NAME USER... | add-service-account USER [ACCESS SECRET POLICYFILE] | set-quota BUCKET BYTES | set-remote-target BUCKET TARGET | list-iam | list-remote-targets BUCKET")
	}
}

func cmdKMSStatus(ts *testscript.TestScript, neg bool, args []string) {
	fs := scriptFlags(ts, "kms-status", neg)
	ts.Check(fs.Parse(args))
	adm := scriptAdmin(ts)
	ctx, cancel := scriptCtx()
	defer cancel()
	st, err := adm.KMSStatus(ctx)
	ts.Check(err)
	online := 0
	for _, s := range st.Endpoints {
		if s == madmin.ItemOnline {
			online++
		}
	}
	fmt.Fprintf(ts.Stdout(), "name=%s default-key=%s endpoints=%d/%d online\n", st.Name, st.DefaultKeyID, online, len(st.Endpoints))
}

// cmdNoSecretFile is nosecret with the secret read from a file (for
// example a generated API key in a journal's secrets/):
//
//	nosecretfile FILE PATH...
func cmdNoSecretFile(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: nosecretfile FILE PATH...")
	}
	b, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	secret := strings.TrimSpace(string(b))
	if len(secret) < 8 {
		ts.Fatalf("nosecretfile: %s holds no secret worth checking", args[0])
	}
	scriptCmds()["nosecret"](ts, neg, append([]string{secret}, args[1:]...))
}

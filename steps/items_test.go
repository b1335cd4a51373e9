package steps

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/runbook-dev/runbook/engine"
	"github.com/runbook-dev/runbook/engine/enginetest"
)

// itemCase is one checkpoint item of a step: the name journals already
// hold for it (never to change), and data to record and read back.
type itemCase struct {
	want  string
	put   func(r *engine.Run) error
	check func(r *engine.Run) error
}

func roundTrip[T any](it engine.Item[T], want string, v T) itemCase {
	return itemCase{
		want: want,
		put:  func(r *engine.Run) error { return it.Put(r, v) },
		check: func(r *engine.Run) error {
			got, ok, err := it.Get(r)
			if err != nil || !ok || !reflect.DeepEqual(got, v) {
				return fmt.Errorf("%s read back as %+v (recorded %v, %v), want %+v", want, got, ok, err, v)
			}
			if !it.Done(r) {
				return fmt.Errorf("%s is not done after it was read back", want)
			}
			return nil
		},
	}
}

// familyRoundTrip checks a family's item of key both as an item and
// through the family: its key reads back from the name, and All finds it.
func familyRoundTrip[T any](f engine.Family[T], key, want string, v T) itemCase {
	c := roundTrip(f.Item(key), want, v)
	check := c.check
	c.check = func(r *engine.Run) error {
		if err := check(r); err != nil {
			return err
		}
		if k, ok := f.Key(want); !ok || k != key {
			return fmt.Errorf("%s: the family reads key %q back (%v), want %q", want, k, ok, key)
		}
		all, err := f.All(r)
		if got, ok := all[key]; err != nil || !ok || !reflect.DeepEqual(got, v) {
			return fmt.Errorf("%s: All holds %+v (%v, %v), want %+v", want, got, ok, err, v)
		}
		return nil
	}
	return c
}

// Every item of the steps but the cutover, the enclave and the identity,
// by the name journals already hold (theirs are in cutoverItemCases,
// enclaveItemCases and identityItemCases: a step's names are its own, and
// the cutover's sample is named as the verification's is, the enclave's
// and the identity's deletions inside the migration's rollback/ family).
var itemCases = []itemCase{
	roundTrip(migrationPreflight, "preflight", preflightCheckpoint{NamesSHA256: "ab12", Identical: []string{"k1"}, Overwrite: []string{}}),
	familyRoundTrip(migratedKeys, "minio/key-1", "key/minio/key-1", keyCheckpoint{Action: actionImported}),
	familyRoundTrip(undoneKeys, "minio-key-2", "rollback/minio-key-2", keyCheckpoint{Action: actionDeleted}),
	familyRoundTrip(verifiedKeys, "minio-key-3", "key/minio-key-3", proofCheckpoint{Proof: proofLocalSeal, Formats: []string{"msgpack", "json"}, KESGenerate: true}),
	roundTrip(verificationSample, "sample", sampleSeed{Seed: 1<<63 + 5}),
	roundTrip(prerequisitesChecked, "checked", prerequisitesState{}),
	roundTrip(prerequisitesKeySet, "key-set", keySetRecord{Keys: 2, SHA256: "cd34", File: "/j/backups/kes-key-names.txt"}),
	roundTrip(prerequisitesBackup, "backup", backupRecord{Config: "/c.yaml", Entries: 2, Snapshot: "/s.tar", SnapshotSHA256: "ef56"}),
	roundTrip(prerequisitesCreationHalted, "creation-halted", keySetSum{Keys: 2, SHA256: "cd34"}),
	familyRoundTrip(objectsRead, "bucket/dir/object", "object bucket/dir/object", objectRead{Bytes: 1 << 40, SSE: "SSE-KMS"}),
}

// Every item of the enclave step, by the name journals already hold.
var enclaveItemCases = []itemCase{
	roundTrip(enclaveCreateIntent, "create-intent", enclaveRecord{Enclave: "e"}),
	roundTrip(enclaveCreated, "created", enclaveRecord{Enclave: "e", Note: "n"}),
	roundTrip(enclaveAdopted, "adopted", enclaveRecord{Enclave: "e", Keys: 3}),
	roundTrip(enclaveDeleted, "rollback/deleted", enclaveRecord{Enclave: "e"}),
}

// Every item of the identity step, by the name journals already hold.
var identityItemCases = []itemCase{
	roundTrip(identityRegisterIntent, "register-intent", identityRecord{Enclave: "e", Identity: "h1:abc", Privilege: "Admin"}),
	roundTrip(identityRegistered, "registered", identityRecord{Enclave: "e", Identity: "h1:abc", Privilege: "Admin"}),
	roundTrip(identityDeleted, "rollback/deleted", identityRecord{Enclave: "e", Identity: "h1:abc", Privilege: "Admin"}),
}

// Every item of the cutover (cutover_items.go), by the name journals
// already hold; an attempt g > 0 prefixes "gN/".
var cutoverItemCases = []itemCase{
	roundTrip(sampleItem, "sample", cutoverSample{Objects: []sampledObject{{Bucket: "b", Key: "k/1", SSE: "SSE-KMS", KMSKey: "minio-key", SHA256: "ab12", Size: 7}}, SSEC: map[string]int{"b": 1}, Buckets: 2}),
	familyRoundTrip(rolledBack, "2", "rolled-back/2", markedAt{At: "2026-12-05T11:00:00Z"}),
	roundTrip(settingsItem(0), "settings", kmsSettings{Server: "https://km:7373", Enclave: "e", SSEKey: "minio-key"}),
	roundTrip(settingsItem(2), "g2/settings", kmsSettings{Server: "https://km:7373", Enclave: "e", SSEKey: "minio-key"}),
	roundTrip(caInstallItem(0), "ca-install", []caInstall{{Node: "/etc/default/minio", Path: "/etc/minio/certs/CAs/runbook-key-manager-0a1b2c3d4e5f.crt", SHA256: "cd34"}}),
	roundTrip(caInstallItem(3), "g3/ca-install", []caInstall{}),
	roundTrip(reportedItem(0), "reported", nodesReport{Checks: 3, Online: []string{"h1:9000"}, KMS: []string{kmsNameKeyManager}}),
	roundTrip(reportedItem(2), "g2/reported", nodesReport{Checks: 1}),
	roundTrip(restoreItem(0), "rollback/restore", markedAt{At: "2026-12-05T11:00:00Z"}),
	roundTrip(restoreItem(1), "g1/rollback/restore", markedAt{At: "2026-12-05T11:00:01Z"}),
	familyRoundTrip(nodeBackups(0), "/etc/default/minio", "backup//etc/default/minio", cutoverBackup{Backup: "node1.env", Original: "ab12", New: "cd34", Mode: 0o640, UID: 0, GID: 996}),
	familyRoundTrip(nodesEdited(1), "ssh://root@h1:22/etc/default/minio", "g1/edited/ssh://root@h1:22/etc/default/minio", fileSum{SHA256: "cd34"}),
	familyRoundTrip(nodesRestored(2), "/srv/g1/minio.env", "g2/rollback/restored//srv/g1/minio.env", fileSum{SHA256: "ab12"}),
	roundTrip(restartItemsOf(0, false).restart, "restart", cutoverRestart{At: probeAt, StoreAt: probeAt.Add(-time.Second), Mode: "systemd", IAM: []string{"user u1", "group g1"}, Buckets: map[string]string{"b": "ef56"}}),
	roundTrip(restartItemsOf(1, false).restarted, "g1/restarted", restartedNodes{Nodes: 4}),
	roundTrip(restartItemsOf(0, false).healthy, "healthy", restartHealth{DownAt: probeAt, KMS: kmsNameKeyManager, UnavailableMS: ptr(int64(0))}),
	roundTrip(restartItemsOf(0, false).validated, "validated", validatedSample{Objects: 12}),
	roundTrip(restartItemsOf(1, true).restart, "g1/rollback/restart", cutoverRestart{At: probeAt, Mode: "kubernetes"}),
	roundTrip(restartItemsOf(0, true).restarted, "rollback/restarted", restartedNodes{Nodes: 1}),
	roundTrip(restartItemsOf(0, true).healthy, "rollback/healthy", restartHealth{KMS: kmsNameKES}),
	roundTrip(restartItemsOf(2, true).validated, "g2/rollback/validated", validatedSample{Objects: 3}),
	roundTrip(k8sItemsOf(0).backup, "k8s/backup", k8sBackup{Resource: "tenant.json", Config: "config.json", KeySecret: "runbook-km-api-key", Strategies: map[string]appsv1.StatefulSetUpdateStrategy{"pool-0": {Type: appsv1.RollingUpdateStatefulSetStrategyType}}, KES: true}),
	roundTrip(k8sItemsOf(0).writing, "k8s/writing", k8sWriting{Generations: map[string]int64{"pool-0": 3}}),
	roundTrip(k8sItemsOf(0).written, "k8s/written", struct{}{}),
	roundTrip(k8sItemsOf(0).configured, "k8s/configured", struct{}{}),
	roundTrip(k8sItemsOf(1).restoring, "g1/k8s/rollback/restoring", k8sWriting{Generations: map[string]int64{"pool-0": 4}}),
	roundTrip(k8sItemsOf(1).restored, "g1/k8s/rollback/restored", struct{}{}),
	roundTrip(k8sItemsOf(1).backConfigured, "g1/k8s/rollback/configured", struct{}{}),
	// The write probe's.
	roundTrip(probeBucketItem(0), "probe-bucket", probeBucket{Bucket: "runbook-write-probe-0a1b2c3d"}),
	roundTrip(probeBucketItem(2), "g2/probe-bucket", probeBucket{Bucket: "runbook-write-probe-4e5f6071"}),
	roundTrip(writableItem(0, false), "writable", writeProbeResult{Servers: []string{"h1:9000", "h2:9000"}, FirstFailed: probeAt, AllAccepted: probeAt.Add(3 * time.Second), WindowMS: 3000, LoneRestarts: []string{"h2:9000"}}),
	roundTrip(writableItem(1, true), "g1/rollback/writable", writeProbeResult{Servers: []string{"h1:9000"}, AllAccepted: probeAt}),
	familyRoundTrip(loneRestarts(0, false), "h2:9000", "lone-restart/h2:9000", loneRestart{At: probeAt, Why: "Resource requested is unwritable"}),
	familyRoundTrip(loneRestarted(0, false), "h2:9000", "lone-restarted/h2:9000", loneRestart{At: probeAt, Node: "/etc/default/minio"}),
	familyRoundTrip(loneRestarts(3, true), "10.0.0.4:9000", "g3/rollback/lone-restart/10.0.0.4:9000", loneRestart{At: probeAt}),
	familyRoundTrip(loneRestarted(3, true), "10.0.0.4:9000", "g3/rollback/lone-restarted/10.0.0.4:9000", loneRestart{At: probeAt, Node: "ssh://root@h4/etc/default/minio"}),
}

var probeAt = time.Date(2026, 12, 5, 11, 0, 0, 0, time.UTC)

func ptr[T any](v T) *T { return &v }

// stepItemCases are the item lists of the steps whose names are kept
// apart, by the item_probe block name that records them; any other
// item_probe block records itemCases.
var stepItemCases = map[string][]itemCase{
	"cutover":  cutoverItemCases,
	"enclave":  enclaveItemCases,
	"identity": identityItemCases,
}

// casesOf is what item_probe.NAME records.
func casesOf(r *engine.Run) []itemCase {
	if cases, ok := stepItemCases[strings.TrimPrefix(r.Addr, "item_probe.")]; ok {
		return cases
	}
	return itemCases
}

// itemProbe records every item on its first attempt and fails; on the
// resumed attempt it reads each back from the journal. Its rollback
// records an undoneKeys item, which a later plan reads with EverRecorded.
type itemProbe struct{}

var errItemsRecorded = errors.New("items recorded")

func init() {
	engine.Register(engine.BlockType{Name: "item_probe", Kind: engine.KindStep, New: func() engine.Block { return &itemProbe{} }})
}

func (*itemProbe) Config() any { return &struct{}{} }

func (*itemProbe) Apply(_ context.Context, r *engine.Run) error {
	if !r.Resumed() {
		for _, c := range casesOf(r) {
			if err := c.put(r); err != nil {
				return err
			}
		}
		return errItemsRecorded
	}
	var errs []error
	for _, c := range casesOf(r) {
		errs = append(errs, c.check(r))
	}
	return errors.Join(errs...)
}

// Plan after the rollback: the rollback cleared the step's checkpoints, and
// what it did is still found in the journal.
func (*itemProbe) Plan(_ context.Context, r *engine.Run) (*engine.StepPlan, error) {
	undone, err := undoneKeys.EverRecorded(r)
	if err != nil || undone["after-rollback"].Action != actionDeleted || migratedKeys.Item("minio/key-1").Done(r) {
		return nil, fmt.Errorf("after a rollback, undoneKeys.EverRecorded = %v, %v; want after-rollback deleted, and no migratedKeys item", undone, err)
	}
	return &engine.StepPlan{}, nil
}

func (*itemProbe) Rollback(_ context.Context, r *engine.Run) error {
	return undoneKeys.Item("after-rollback").Put(r, keyCheckpoint{Action: actionDeleted})
}

// Each item is written to a real journal under the name journals already
// hold, and reads back equal on resume; a rollback clears them, and what
// the rollback recorded is still read by the next plan (EverRecorded).
func TestItemsRoundTrip(t *testing.T) {
	t.Parallel()
	checkItemsRoundTrip(t, "p", itemCases)
}

// The items of the steps kept apart (the cutover, the enclave, the
// identity), likewise, each under its own probe.
func TestStepItemsRoundTrip(t *testing.T) {
	t.Parallel()
	for name, cases := range stepItemCases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			checkItemsRoundTrip(t, name, cases)
		})
	}
}

func checkItemsRoundTrip(t *testing.T, name string, cases []itemCase) {
	t.Helper()
	h := enginetest.New(t, "runbook {\n  name = \"items\"\n}\nitem_probe \""+name+"\" {}\n")
	if err := h.Apply(); err == nil || !strings.Contains(err.Error(), errItemsRecorded.Error()) {
		t.Fatalf("first attempt: %v, want it to stop once the items are recorded", err)
	}
	recorded := map[string]bool{}
	for _, rec := range h.Records() {
		if rec.Kind == engine.RecordCheckpoint {
			recorded[rec.Item] = true
		}
	}
	for _, c := range cases {
		if !recorded[c.want] {
			t.Errorf("no checkpoint named %q in the journal", c.want)
		}
	}
	if len(recorded) != len(cases) {
		t.Errorf("the journal holds %d item names, want %d", len(recorded), len(cases))
	}
	if err := h.Resume(); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if err := h.Rollback(""); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if got := h.State().Step("item_probe." + name); len(got.Checkpoints) != 0 || got.State != engine.StateRolledBack {
		t.Fatalf("after the rollback the step is %s with %d checkpoints, want rolled_back with none", got.State, len(got.Checkpoints))
	}
	if _, err := h.Plan(); err != nil {
		t.Fatalf("plan after the rollback: %v", err)
	}
}

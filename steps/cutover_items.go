package steps

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/runbook-dev/runbook/engine"
)

// The cutover's checkpoint items. Each kind has its own type with a
// constructor and a String() (the name in the journal); only the attempt
// numbers of rolled-back/N are read back, through their engine.Family. An attempt g > 0 (the cutover was
// rolled back automatically g times before) prefixes its items with "gN/".
//
//	sample                          the object sample, read and digested before any change
//	[gN/]settings                   the attempt began: the Key Manager settings every node gets
//	[gN/]ca-install                 the nodes whose certs/CAs get the Key Manager's CA (install_ca), before any is written
//	[gN/]backup/NODE                a node's file backed up; the hash it is about to get
//	[gN/]edited/NODE                a node's file has its new content
//	[gN/]restart, restarted, healthy, validated
//	                                the restart into the Key Manager: begun, done, healthy, sample read
//	[gN/]reported                   what the nodes reported while the cutover waited for health ([]nodesReport)
//	[gN/]probe-bucket               the bucket the write probe writes in, recorded before it is made (probeBucket)
//	[gN/][rollback/]lone-restart/SERVER
//	                                a server that refused writes once another accepted is about to be restarted alone (loneRestart)
//	[gN/][rollback/]lone-restarted/SERVER
//	                                its lone restart returned (loneRestart)
//	[gN/][rollback/]writable        every server accepted a write through its own endpoint (writeProbeResult)
//	[gN/]rollback/restore           a rollback of the attempt began restoring the nodes
//	[gN/]rollback/restored/NODE     a node's file has its original content again
//	[gN/]rollback/restart, rollback/restarted, rollback/healthy, rollback/validated
//	                                the restart back onto KES
//	rolled-back/N                   attempt N was rolled back completely
//	kubernetes/written              the patch and Secret handed over (platform = "kubernetes")
type cutoverItemName interface{ String() string }

// nodeItemKind is what happened to one node's file.
type nodeItemKind string

const (
	nodeBackup   nodeItemKind = "backup"
	nodeEdited   nodeItemKind = "edited"
	nodeRestored nodeItemKind = "rollback/restored"
)

// nodeItem is a checkpoint about one node's env file in attempt Gen.
type nodeItem struct {
	Gen  int
	Kind nodeItemKind
	Node string // the env file as written in env_files
}

func newNodeItem(g int, kind nodeItemKind, node string) nodeItem {
	return nodeItem{Gen: g, Kind: kind, Node: node}
}

func (i nodeItem) String() string { return genPrefix(i.Gen) + string(i.Kind) + "/" + i.Node }

// restartPhase is how far one restart of every node has come.
type restartPhase string

const (
	phaseRestart   restartPhase = "restart"   // begun; data cutoverRestart
	phaseRestarted restartPhase = "restarted" // every node's restart returned
	phaseHealthy   restartPhase = "healthy"   // healthy on the KMS wanted
	phaseValidated restartPhase = "validated" // the sample read byte for byte
)

// restartItem is a checkpoint of attempt Gen's restart: into the Key
// Manager, or (Back) onto KES again by the rollback.
type restartItem struct {
	Gen   int
	Back  bool
	Phase restartPhase
}

func newRestartItem(g int, back bool, p restartPhase) restartItem {
	return restartItem{Gen: g, Back: back, Phase: p}
}

func (i restartItem) String() string {
	s := genPrefix(i.Gen)
	if i.Back {
		s += "rollback/"
	}
	return s + string(i.Phase)
}

// rolledBackItem marks attempt Attempt (1-based) as rolled back completely.
type rolledBackItem struct{ Attempt int }

// rolledBack is the family of rolledBackItem, keyed by the attempt's
// number: the one cutover name that is read back (cutoverGen).
var rolledBack = engine.NewFamily[struct{}]("rolled-back/")

func (i rolledBackItem) String() string { return rolledBack.Item(strconv.Itoa(i.Attempt)).Name() }

// settingsItem records, before attempt Gen's first change, the Key Manager
// settings every node gets (kmsSettings: no secret); a resume writes
// exactly these. Its presence means the attempt has begun.
type settingsItem struct{ Gen int }

func (i settingsItem) String() string { return genPrefix(i.Gen) + "settings" }

// caInstallItem lists, before the first is written, the CA files attempt
// Gen installs ([]caInstall).
type caInstallItem struct{ Gen int }

func (i caInstallItem) String() string { return genPrefix(i.Gen) + "ca-install" }

// reportedItem holds what the nodes reported after attempt Gen's restart
// into the Key Manager (nodesReport): the rollback's evidence of whether
// anything can have been sealed under it.
type reportedItem struct{ Gen int }

func (i reportedItem) String() string { return genPrefix(i.Gen) + "reported" }

// restoreItem marks, before the first node's environment is restored, that
// a rollback of attempt Gen began.
type restoreItem struct{ Gen int }

func (i restoreItem) String() string { return genPrefix(i.Gen) + "rollback/restore" }

// sampleItem holds the object sample (cutoverSample), for every attempt.
type sampleItem struct{}

func (sampleItem) String() string { return "sample" }

// kubernetesWrittenItem marks the patch and Secret as handed over
// (platform = "kubernetes"; data cutoverRestart).
type kubernetesWrittenItem struct{}

func (kubernetesWrittenItem) String() string { return "kubernetes/written" }

func genPrefix(g int) string {
	if g == 0 {
		return ""
	}
	return fmt.Sprintf("g%d/", g)
}

// The write probe's items (cutover_probe.go), declared as engine items.
// Their names take the attempt's prefix, and "rollback/" for the probe
// after the rollback's restart.

// probeBucketItem records, before the bucket is made, which bucket attempt
// g's write probes write in (and the end of the cutover or its rollback
// removes).
func probeBucketItem(g int) engine.Item[probeBucket] {
	return engine.NewItem[probeBucket](genPrefix(g) + "probe-bucket")
}

// writableItem records that every server accepted a write after attempt
// g's restart (back: the rollback's restart onto KES).
func writableItem(g int, back bool) engine.Item[writeProbeResult] {
	return engine.NewItem[writeProbeResult](probePrefix(g, back) + "writable")
}

// loneRestarts holds, by server, the intent to restart it alone: recorded
// before its restart command runs.
func loneRestarts(g int, back bool) engine.Family[loneRestart] {
	return engine.NewFamily[loneRestart](probePrefix(g, back) + "lone-restart/")
}

// loneRestarted holds, by server, that its lone restart returned.
func loneRestarted(g int, back bool) engine.Family[loneRestart] {
	return engine.NewFamily[loneRestart](probePrefix(g, back) + "lone-restarted/")
}

func probePrefix(g int, back bool) string {
	if back {
		return genPrefix(g) + "rollback/"
	}
	return genPrefix(g)
}

// cutoverGen is the number of earlier attempts of this step that were rolled
// back completely.
func cutoverGen(r *engine.Run) int {
	n := 0
	for _, k := range rolledBack.Keys(r) {
		if a, err := strconv.Atoi(k); err == nil && a > n {
			n = a
		}
	}
	return n
}

// cutoverCheckpoint decodes the data of checkpoint item.
func cutoverCheckpoint[T any](r *engine.Run, item cutoverItemName) (T, bool) {
	var v T
	raw, ok := r.Checkpoints()[item.String()]
	if !ok {
		return v, false
	}
	return v, json.Unmarshal(raw, &v) == nil
}

func hasItem(r *engine.Run, item cutoverItemName) bool { return r.HasCheckpoint(item.String()) }

func checkpointItem(r *engine.Run, item cutoverItemName, data any) error {
	return r.Checkpoint(item.String(), data)
}

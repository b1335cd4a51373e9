package steps

import (
	"fmt"
	"strconv"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// The cutover's checkpoint items, all declared below as engine items. An
// attempt g > 0 (the cutover was rolled back automatically g times before)
// prefixes its items with "gN/"; the rollback's restart and write probe
// add "rollback/". Only the attempt numbers of rolled-back/N are read back
// from names (cutoverGen).
//
//	sample                          the object sample, read and digested before any change (cutoverSample)
//	[gN/]settings                   the attempt began: the Key Manager settings every node gets (kmsSettings)
//	[gN/]ca-install                 the nodes whose certs/CAs get the Key Manager's CA (install_ca), before any is written ([]caInstall)
//	[gN/]backup/NODE                a node's file backed up; the hash it is about to get (cutoverBackup)
//	[gN/]edited/NODE                a node's file has its new content (fileSum)
//	[gN/]k8s/...                    the Kubernetes platform's moves (platform = "kubernetes"; k8sItemsOf)
//	[gN/][rollback/]restart         a restart of every node begun (cutoverRestart)
//	[gN/][rollback/]restarted       every node's restart returned (restartedNodes)
//	[gN/][rollback/]healthy         every node healthy on the KMS wanted (restartHealth)
//	[gN/][rollback/]validated       the sample read byte for byte (validatedSample)
//	                                without rollback/: into the Key Manager; with it: back onto KES
//	[gN/]reported                   what the nodes reported while the cutover waited for health (nodesReport)
//	[gN/]probe-bucket               the bucket the write probe writes in, recorded before it is made (probeBucket)
//	[gN/][rollback/]lone-restart/SERVER
//	                                a server that refused writes once another accepted is about to be restarted alone (loneRestart)
//	[gN/][rollback/]lone-restarted/SERVER
//	                                its lone restart returned (loneRestart)
//	[gN/][rollback/]writable        every server accepted a write through its own endpoint (writeProbeResult)
//	[gN/]rollback/restore           a rollback of the attempt began restoring the nodes (markedAt)
//	[gN/]rollback/restored/NODE     a node's file has its original content again (fileSum)
//	rolled-back/N                   attempt N was rolled back completely (markedAt)
//
// Items that carry nothing but their presence are engine.Item[struct{}]:
// they are recorded as {}; trees before the items were typed recorded them
// as null, which reads back as struct{}{} all the same. The name
// "kubernetes/written" was written by trees before the Kubernetes platform
// (b09c503) and is read by none since: no item may take it again.

// sampleItem holds the object sample, chosen and proven before attempt 0's
// first change and read by every later attempt and by the rollback.
var sampleItem = engine.NewItem[cutoverSample]("sample")

// rolledBack holds, by attempt number (1-based), that the attempt was
// rolled back completely: the one cutover name that is read back
// (cutoverGen).
var rolledBack = engine.NewFamily[markedAt]("rolled-back/")

// markedAt is the data of a mark: when it was made (RFC 3339, UTC, this
// host's clock).
type markedAt struct {
	At string `json:"at"`
}

func markNow() markedAt { return markedAt{At: time.Now().UTC().Format(time.RFC3339)} }

// settingsItem records, before attempt g's first change, the Key Manager
// settings every node gets (no secret); a resume writes exactly these. Its
// presence means the attempt has begun.
func settingsItem(g int) engine.Item[kmsSettings] {
	return engine.NewItem[kmsSettings](genPrefix(g) + "settings")
}

// caInstallItem lists, before the first is written, the CA files attempt g
// installs.
func caInstallItem(g int) engine.Item[[]caInstall] {
	return engine.NewItem[[]caInstall](genPrefix(g) + "ca-install")
}

// reportedItem holds what the nodes reported after attempt g's restart
// into the Key Manager: the rollback's evidence of whether anything can
// have been sealed under it.
func reportedItem(g int) engine.Item[nodesReport] {
	return engine.NewItem[nodesReport](genPrefix(g) + "reported")
}

// restoreItem marks, before the first node's environment is restored, that
// a rollback of attempt g began.
func restoreItem(g int) engine.Item[markedAt] {
	return engine.NewItem[markedAt](genPrefix(g) + "rollback/restore")
}

// The items of a node's env file in attempt g, keyed by the node's name
// (its env file as written in env_files).

// nodeBackups holds each node's backup record, recorded before its file is
// edited: the intent, with the hash the file is about to get.
func nodeBackups(g int) engine.Family[cutoverBackup] {
	return engine.NewFamily[cutoverBackup](genPrefix(g) + "backup/")
}

// nodesEdited holds, by node, that its file has its new content.
func nodesEdited(g int) engine.Family[fileSum] {
	return engine.NewFamily[fileSum](genPrefix(g) + "edited/")
}

// nodesRestored holds, by node, that a rollback gave its file its original
// content again.
func nodesRestored(g int) engine.Family[fileSum] {
	return engine.NewFamily[fileSum](genPrefix(g) + "rollback/restored/")
}

// fileSum is the SHA-256 (hex) a node's file has after a move.
type fileSum struct {
	SHA256 string `json:"sha256"`
}

// restartItems are attempt g's checkpoints of one restart of every node,
// in the order they are recorded (restartAndConfirm): into the Key Manager,
// or (back) onto KES again by the rollback.
type restartItems struct {
	restart   engine.Item[cutoverRestart]  // begun: recorded before the first node is restarted
	restarted engine.Item[restartedNodes]  // every node's restart returned
	healthy   engine.Item[restartHealth]   // every node healthy on the KMS wanted
	validated engine.Item[validatedSample] // the sample read byte for byte
}

func restartItemsOf(g int, back bool) restartItems {
	p := attemptPrefix(g, back)
	return restartItems{
		restart:   engine.NewItem[cutoverRestart](p + "restart"),
		restarted: engine.NewItem[restartedNodes](p + "restarted"),
		healthy:   engine.NewItem[restartHealth](p + "healthy"),
		validated: engine.NewItem[validatedSample](p + "validated"),
	}
}

// restartedNodes is how many servers the restart restarted.
type restartedNodes struct {
	Nodes int `json:"nodes"`
}

// restartHealth is what the wait for health measured. DownAt and
// UnavailableMS are there only when this run restarted (the probe ran);
// UnavailableMS may then be 0. runbook demo reads UnavailableMS
// (cmd/runbook/demo_run.go). Fields in this order keep the bytes of the
// map earlier trees wrote.
type restartHealth struct {
	DownAt        time.Time `json:"down_at,omitzero"` // the probe's first failure: where the write probe's window starts
	KMS           string    `json:"kms"`              // the KMS the nodes were healthy on
	UnavailableMS *int64    `json:"unavailable_ms,omitempty"`
}

// validatedSample is how many objects of the sample read back.
type validatedSample struct {
	Objects int `json:"objects"`
}

// k8sItems are the Kubernetes platform's checkpoints in attempt g
// (platform = "kubernetes"), in the order they are recorded. Each names a
// move done once: a resume after a crash between the write and the
// restart restarts, and writes nothing again.
//
//	k8s/backup              the resource and Secrets saved; nothing changed yet
//	k8s/writing             the change is about to be written
//	k8s/written             the resource and the Secret carry the change
//	k8s/configured          every StatefulSet carries it (the controller saw the new template)
//	k8s/rollback/restoring  the saved state is about to be written back
//	k8s/rollback/restored   the resource and Secrets are as saved
//	k8s/rollback/configured every StatefulSet carries the saved state
type k8sItems struct {
	backup         engine.Item[k8sBackup]
	writing        engine.Item[k8sWriting]
	written        engine.Item[struct{}]
	configured     engine.Item[struct{}]
	restoring      engine.Item[k8sWriting]
	restored       engine.Item[struct{}]
	backConfigured engine.Item[struct{}]
}

func k8sItemsOf(g int) k8sItems {
	p := genPrefix(g) + "k8s/"
	return k8sItems{
		backup:         engine.NewItem[k8sBackup](p + "backup"),
		writing:        engine.NewItem[k8sWriting](p + "writing"),
		written:        engine.NewItem[struct{}](p + "written"),
		configured:     engine.NewItem[struct{}](p + "configured"),
		restoring:      engine.NewItem[k8sWriting](p + "rollback/restoring"),
		restored:       engine.NewItem[struct{}](p + "rollback/restored"),
		backConfigured: engine.NewItem[struct{}](p + "rollback/configured"),
	}
}

// The write probe's items (cutover_probe.go).

// probeBucketItem records, before the bucket is made, which bucket attempt
// g's write probes write in (and the end of the cutover or its rollback
// removes).
func probeBucketItem(g int) engine.Item[probeBucket] {
	return engine.NewItem[probeBucket](genPrefix(g) + "probe-bucket")
}

// writableItem records that every server accepted a write after attempt
// g's restart (back: the rollback's restart onto KES).
func writableItem(g int, back bool) engine.Item[writeProbeResult] {
	return engine.NewItem[writeProbeResult](attemptPrefix(g, back) + "writable")
}

// loneRestarts holds, by server, the intent to restart it alone: recorded
// before its restart command runs.
func loneRestarts(g int, back bool) engine.Family[loneRestart] {
	return engine.NewFamily[loneRestart](attemptPrefix(g, back) + "lone-restart/")
}

// loneRestarted holds, by server, that its lone restart returned.
func loneRestarted(g int, back bool) engine.Family[loneRestart] {
	return engine.NewFamily[loneRestart](attemptPrefix(g, back) + "lone-restarted/")
}

func genPrefix(g int) string {
	if g == 0 {
		return ""
	}
	return fmt.Sprintf("g%d/", g)
}

// attemptPrefix is the prefix of attempt g's restart and write-probe items;
// back: those of the rollback's restart onto KES.
func attemptPrefix(g int, back bool) string {
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

package steps

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// The cutover's items keep the names journals already hold: a resume or
// rollback by a newer runbook reads an older run's journal by them
// (TestStepItemsRoundTrip/cutover records and reads each through a journal).
func TestCutoverItemNames(t *testing.T) {
	t.Parallel()
	for want, got := range map[string]string{
		"sample":                    sampleItem.Name(),
		"settings":                  settingsItem(0).Name(),
		"g2/settings":               settingsItem(2).Name(),
		"rollback/restore":          restoreItem(0).Name(),
		"g1/rollback/restore":       restoreItem(1).Name(),
		"ca-install":                caInstallItem(0).Name(),
		"g3/ca-install":             caInstallItem(3).Name(),
		"reported":                  reportedItem(0).Name(),
		"g2/reported":               reportedItem(2).Name(),
		"rolled-back/2":             rolledBack.Item("2").Name(),
		"backup//etc/default/minio": nodeBackups(0).Item("/etc/default/minio").Name(),
		"g1/edited/ssh://root@h1:22/etc/default/minio": nodesEdited(1).Item("ssh://root@h1:22/etc/default/minio").Name(),
		"g3/rollback/restored//srv/g1/minio.env":       nodesRestored(3).Item("/srv/g1/minio.env").Name(),
		"restart":                                      restartItemsOf(0, false).restart.Name(),
		"g1/restarted":                                 restartItemsOf(1, false).restarted.Name(),
		"g2/rollback/validated":                        restartItemsOf(2, true).validated.Name(),
		"rollback/healthy":                             restartItemsOf(0, true).healthy.Name(),
		"k8s/backup":                                   k8sItemsOf(0).backup.Name(),
		"g1/k8s/written":                               k8sItemsOf(1).written.Name(),
		"k8s/rollback/configured":                      k8sItemsOf(0).backConfigured.Name(),
		"g1/rollback/writable":                         writableItem(1, true).Name(),
	} {
		if got != want {
			t.Errorf("item named %q, want %q", got, want)
		}
	}
	// The attempt numbers are read back through the family alone.
	if k, ok := rolledBack.Key(rolledBack.Item("12").Name()); !ok || k != "12" {
		t.Errorf("rolledBack.Key = %q, %v; want 12", k, ok)
	}
	for _, other := range []string{"rollback/restore", "g1/restarted", "rolled-back/"} {
		if k, ok := rolledBack.Key(other); ok {
			t.Errorf("rolledBack.Key(%q) = %q, want none", other, k)
		}
	}
	// Written by trees before the Kubernetes platform; read by none since.
	for _, c := range cutoverItemCases {
		if c.want == "kubernetes/written" {
			t.Errorf("an item is named %q again, a name older journals hold with other data", c.want)
		}
	}
}

// journalItems stands in for a journal's checkpoints in a test.
type journalItems map[string]json.RawMessage

func (j journalItems) CheckpointData(name string) (json.RawMessage, bool) {
	raw, ok := j[name]
	return raw, ok
}

func (j journalItems) CheckpointOrder() []string { return slices.Sorted(maps.Keys(j)) }

// What trees before the typed items recorded (maps, and null for a mark)
// still reads, and the typed data is recorded as the same bytes (marks
// alone are recorded as {} now).
func TestCutoverItemsReadOlderData(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 5, 11, 0, 0, 123456789, time.UTC)
	older := func(v any) []byte {
		b, err := json.Marshal(v) // as r.Checkpoint(name, v) encoded it
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	same := func(name string, raw []byte, get func(journalItems) (any, bool, error)) {
		t.Helper()
		v, ok, err := get(journalItems{name: raw})
		if err != nil || !ok {
			t.Errorf("%s %s reads back as %v, %v", name, raw, ok, err)
			return
		}
		if again, _ := json.Marshal(v); !bytes.Equal(again, raw) {
			t.Errorf("%s %s is recorded now as %s", name, raw, again)
		}
	}
	stamp := older(map[string]string{"at": at.Format(time.RFC3339)})
	same("rolled-back/1", stamp, func(j journalItems) (any, bool, error) { return rolledBack.Item("1").Get(j) })
	same("rollback/restore", stamp, func(j journalItems) (any, bool, error) { return restoreItem(0).Get(j) })
	sum := older(map[string]string{"sha256": "ab12"})
	same("edited/n", sum, func(j journalItems) (any, bool, error) { return nodesEdited(0).Item("n").Get(j) })
	same("rollback/restored/n", sum, func(j journalItems) (any, bool, error) { return nodesRestored(0).Item("n").Get(j) })
	same("restarted", older(map[string]int{"nodes": 4}), func(j journalItems) (any, bool, error) { return restartItemsOf(0, false).restarted.Get(j) })
	same("validated", older(map[string]int{"objects": 12}), func(j journalItems) (any, bool, error) { return restartItemsOf(0, false).validated.Get(j) })
	for _, data := range []map[string]any{
		{"kms": kmsNameKES}, // this run did not restart
		{"kms": kmsNameKeyManager, "unavailable_ms": int64(0)},
		{"kms": kmsNameKeyManager, "unavailable_ms": int64(2300), "down_at": at},
	} {
		same("healthy", older(data), func(j journalItems) (any, bool, error) { return restartItemsOf(0, false).healthy.Get(j) })
	}
	k := k8sItemsOf(1)
	for _, mark := range []engine.Item[struct{}]{k.written, k.configured, k.restored, k.backConfigured} {
		if _, ok, err := mark.Get(journalItems{mark.Name(): json.RawMessage("null")}); !ok || err != nil {
			t.Errorf("%s recorded as null reads back as %v, %v", mark.Name(), ok, err)
		}
	}
}

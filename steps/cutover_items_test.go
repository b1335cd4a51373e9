package steps

import "testing"

func TestCutoverItemsRoundTrip(t *testing.T) {
	t.Parallel()
	items := []cutoverItemName{
		sampleItem{},
		kubernetesWrittenItem{},
		settingsItem{},
		settingsItem{Gen: 2},
		restoreItem{},
		restoreItem{Gen: 1},
		caInstallItem{},
		caInstallItem{Gen: 3},
		reportedItem{},
		reportedItem{Gen: 2},
		rolledBackItem{Attempt: 2},
		newNodeItem(0, nodeBackup, "/etc/default/minio"),
		newNodeItem(1, nodeEdited, "ssh://root@h1:22/etc/default/minio"),
		newNodeItem(3, nodeRestored, "/srv/g1/minio.env"),
		newRestartItem(0, false, phaseRestart),
		newRestartItem(2, true, phaseValidated),
		newRestartItem(0, true, phaseHealthy),
	}
	for _, it := range items {
		got, err := parseCutoverItem(it.String())
		if err != nil {
			t.Errorf("parse %q: %v", it, err)
			continue
		}
		if got != it {
			t.Errorf("parse %q = %#v, want %#v", it, got, it)
		}
	}
	// The names journals already hold keep their meaning.
	for s, want := range map[string]cutoverItemName{
		"backup//tmp/n1/minio.env": nodeItem{Kind: nodeBackup, Node: "/tmp/n1/minio.env"},
		"g1/restarted":             restartItem{Gen: 1, Phase: phaseRestarted},
		"rolled-back/1":            rolledBackItem{Attempt: 1},
	} {
		if got, err := parseCutoverItem(s); err != nil || got != want {
			t.Errorf("parse %q = %#v, %v; want %#v", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "backup/", "rolled-back/x", "g1/nothing", "restarting"} {
		if _, err := parseCutoverItem(bad); err == nil {
			t.Errorf("parse %q: no error", bad)
		}
	}
}

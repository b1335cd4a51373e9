package steps

import "testing"

// The cutover's items keep the names journals already hold: a resume or
// rollback by a newer runbook reads an older run's journal by them.
func TestCutoverItemNames(t *testing.T) {
	t.Parallel()
	for want, it := range map[string]cutoverItemName{
		"sample":                    sampleItem{},
		"kubernetes/written":        kubernetesWrittenItem{},
		"settings":                  settingsItem{},
		"g2/settings":               settingsItem{Gen: 2},
		"rollback/restore":          restoreItem{},
		"g1/rollback/restore":       restoreItem{Gen: 1},
		"ca-install":                caInstallItem{},
		"g3/ca-install":             caInstallItem{Gen: 3},
		"reported":                  reportedItem{},
		"g2/reported":               reportedItem{Gen: 2},
		"rolled-back/2":             rolledBackItem{Attempt: 2},
		"backup//etc/default/minio": newNodeItem(0, nodeBackup, "/etc/default/minio"),
		"g1/edited/ssh://root@h1:22/etc/default/minio": newNodeItem(1, nodeEdited, "ssh://root@h1:22/etc/default/minio"),
		"g3/rollback/restored//srv/g1/minio.env":       newNodeItem(3, nodeRestored, "/srv/g1/minio.env"),
		"restart":                                      newRestartItem(0, false, phaseRestart),
		"g1/restarted":                                 newRestartItem(1, false, phaseRestarted),
		"g2/rollback/validated":                        newRestartItem(2, true, phaseValidated),
		"rollback/healthy":                             newRestartItem(0, true, phaseHealthy),
	} {
		if got := it.String(); got != want {
			t.Errorf("%#v is named %q, want %q", it, got, want)
		}
	}
	// The attempt numbers are read back through the family alone.
	if k, ok := rolledBack.Key(rolledBackItem{Attempt: 12}.String()); !ok || k != "12" {
		t.Errorf("rolledBack.Key = %q, %v; want 12", k, ok)
	}
	for _, other := range []string{"rollback/restore", "g1/restarted", "rolled-back/"} {
		if k, ok := rolledBack.Key(other); ok {
			t.Errorf("rolledBack.Key(%q) = %q, want none", other, k)
		}
	}
}

package steps

import (
	"context"
	"testing"
)

// BenchmarkMigrate imports 5,000 keys per iteration into a fresh enclave of
// an in-process emulator (default readings) with an in-memory journal: the
// CPU cost of the import path on both ends, without fsync.
func BenchmarkMigrate(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		env := newMigrationEnv(b, 5000)
		m := &migrationStep{}
		j := &fakeJournal{}
		b.StartTimer()
		if _, err := m.migrate(context.Background(), j.hooks(), env.src, env.c, env.enclave); err != nil {
			b.Fatal(err)
		}
	}
}

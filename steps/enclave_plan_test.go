package steps

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/runbook-dev/runbook/emulator"
)

// TestPlanListsEnclaveOnce: a plan lists the target enclave once, beside
// the enclave step's status request, and the migration's plan, which the
// graph puts after it, takes that listing (planListTarget) rather than a
// round trip of its own, as the Key Manager's request log counts them;
// an apply's steps list it again, each checking what it acts on.
func TestPlanListsEnclaveOnce(t *testing.T) {
	var lists atomic.Int64
	ip := newInProcessWith(t, 5, emulator.Config{Logf: func(format string, args ...any) {
		if strings.Contains(fmt.Sprintf(format, args...), "KEY:LIST") {
			lists.Add(1)
		}
	}})
	p, err := ip.h.Plan()
	if err != nil {
		t.Fatal(err)
	}
	if n := lists.Swap(0); n != 1 {
		t.Errorf("a plan asked the Key Manager to list enclave fast %d times, want once", n)
	}
	for _, s := range p.Steps {
		if s.Addr == "migration.keys" && (s.Plan == nil || !strings.Contains(strings.Join(s.Plan.Observed, "\n"), "does not exist yet")) {
			t.Errorf("the migration's plan does not say enclave fast does not exist yet: %+v", s)
		}
	}
	if err := ip.h.Apply(); err != nil {
		t.Fatal(err)
	}
	if n := lists.Swap(0); n != 3 {
		t.Errorf("an apply listed enclave fast %d times, want 3: its quiet plan once, then the migration and the verification each", n)
	}
}

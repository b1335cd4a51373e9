package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/runbook-dev/runbook/fleet/rollout"
)

// sshKey makes an ed25519 key pair and returns the private key's path and
// the allowed-signers line for principal.
func sshKey(t *testing.T, dir, principal string) (string, string) {
	t.Helper()
	key := filepath.Join(dir, principal)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return key, principal + " " + strings.TrimSpace(string(pub))
}

// TestApprovalGate: wave 1 needs one approval signed by a key listed in the
// allowed signers. Before a valid one, nothing of wave 1 starts; an approval
// for another wave, an unsigned one and the fleet plan author's do not
// count, each recorded with why (status and Temporal's history); bob's
// signed approval lets the wave start and the rollout finish.
func TestApprovalGate(t *testing.T) {
	keys := t.TempDir()
	alice, aliceLine := sshKey(t, keys, "alice")
	bob, bobLine := sshKey(t, keys, "bob")
	_, carolLine := sshKey(t, keys, "carol")
	fe := newFleet(t, fleetSpec{name: "gate", deployments: 5, keys: 5, canary: 1, waveSize: 2, maxConc: 2,
		approval: "  approval {\n    waves           = [1]\n    approvers       = 1\n    allowed_signers = \"signers\"\n  }\n"})
	write(t, filepath.Join(fe.dir, "signers"), aliceLine+"\n"+bobLine+"\n"+carolLine+"\n")
	if out, code := fe.run("plan", fe.file); code != 2 || !strings.Contains(out, "signed by its author") {
		t.Fatalf("plan without --by/--key: exit %d, want 2\n%s", code, out)
	}
	fe.must("plan", fe.file, "--by", "alice", "--key", alice)
	fe.must("apply", fe.file)
	fe.startWorker("local")
	fe.waitFor("wave 1 to wait for approval", 5*time.Minute, func(r *statusReport) bool {
		return r.Status.Waves[0].State == rollout.StateDone && r.Status.Waves[1].State == "waiting for approval"
	})
	wave1 := []string{"gate-02", "gate-03"}
	notStarted := func(when string) {
		for _, n := range wave1 {
			if fe.started(n) {
				t.Fatalf("%s: %s started before wave 1 was approved", when, n)
			}
		}
	}
	refusals := []struct {
		args []string
		why  string
	}{
		{[]string{"--wave", "2", "--by", "bob", "--key", bob}, "wave 2 needs no approval: recorded only"},
		{[]string{"--wave", "1", "--by", "carol"}, "not signed"},
		{[]string{"--wave", "1", "--by", "alice", "--key", alice}, "alice made the plan and cannot approve it"},
	}
	for _, r := range refusals {
		out, code := fe.run(append([]string{"approve", fe.file}, r.args...)...)
		if code != 3 || !strings.Contains(out, r.why) {
			t.Fatalf("approve %v: exit %d, want 3 and %q\n%s", r.args, code, r.why, out)
		}
		time.Sleep(2 * time.Second) // a wave wrongly let through would start in this time
		notStarted("after approve " + strings.Join(r.args, " "))
	}
	out := fe.must("approve", fe.file, "--wave", "1", "--by", "bob", "--key", bob, "--comment", "checked the canary")
	if !strings.Contains(out, "it counts: valid, signed with key SHA256:") {
		t.Fatalf("bob's approval:\n%s", out)
	}
	final := fe.waitFor("the rollout to end", 10*time.Minute, finished)
	for _, ws := range final.Status.Waves {
		for _, d := range ws.Deployments {
			if d.State != rollout.StateDone {
				t.Errorf("%s is %s: %s", d.Name, d.State, d.Message)
			}
		}
	}
	entries := final.Status.Waves[1].Approvals
	if len(entries) != 3 || entries[0].By != "carol" || entries[1].By != "alice" || !entries[2].Counts || entries[2].By != "bob" {
		t.Errorf("wave 1's approvals: %+v", entries)
	}
	if e := final.Status.Waves[2].Approvals; len(e) != 1 || e[0].Counts {
		t.Errorf("wave 2's approvals: %+v", e)
	}
	text := fe.must("status", fe.file)
	for _, want := range []string{"approval of wave 1 by carol does not count", "approval of wave 1 by alice does not count", "approval of wave 1 by bob counts", "wave 1 approved by bob"} {
		if !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
}

package steps

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/runbook-dev/runbook/engine"
)

// An exec step's command runs in a process group of its own, and the group
// is recorded in the journal before the command starts (the child waits on a
// pipe until the record is durable). After kill -9 of runbook, the command's
// direct child dies with it (Pdeathsig) but what it started lives on in the
// group; before the step (or its rollback command) runs again, resume and
// rollback find that group and end it, so that two runs of the command never
// go side by side (issue 20, input 5).

// execMarkEnv carries a random mark in the environment of everything the
// command starts: a process that still has it is one of the command's.
const execMarkEnv = "RUNBOOK_EXEC_ID"

// execProcess is the checkpoint that names a started command's process group.
type execProcess struct {
	PGID  int    `json:"pgid"`
	Start uint64 `json:"start"` // the leader's start, clock ticks since boot (/proc/PID/stat field 22)
	Boot  string `json:"boot"`  // /proc/sys/kernel/random/boot_id: a group of another boot is gone
	Mark  string `json:"mark"`  // execMarkEnv's value
	// Ended: runbook saw the command exit. What it left running in its
	// group then is its own business (a daemon it started), not a
	// half-done command.
	Ended bool `json:"ended,omitempty"`
}

// endTimeout is how long a leftover group gets to end after SIGTERM, and
// then after SIGKILL.
const endTimeout = 10 * time.Second

func newExecMark() string {
	b := make([]byte, 12)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func bootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// procStat is what /proc/PID/stat says of a process.
type procStat struct {
	pid, pgrp int
	state     byte
	start     uint64
}

func readProcStat(pid int) (procStat, error) {
	raw, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses,
	// so the fields are counted from the last ')'.
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	pgrp, err1 := strconv.Atoi(f[2])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return procStat{}, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return procStat{pid: pid, pgrp: pgrp, state: f[0][0], start: start}, nil
}

// processOf records the process group of a started command.
func processOf(pid int, mark string) (execProcess, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return execProcess{}, fmt.Errorf("read the started command's process: %w", err)
	}
	return execProcess{PGID: st.pgrp, Start: st.start, Boot: bootID(), Mark: mark}, nil
}

// members lists the live processes of the recorded group (zombies left
// out), and those of them that cannot be told to be the command's: not
// marked, and not the group's leader as recorded.
func (p execProcess) members() (ours, unsure []int, err error) {
	if p.PGID <= 0 || p.Boot != bootID() {
		return nil, nil, nil // another boot: nothing of it runs
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, nil, fmt.Errorf("list processes: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.pgrp != p.PGID || st.state == 'Z' || st.state == 'X' {
			continue
		}
		env, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		marked := slices.ContainsFunc(bytes.Split(env, []byte{0}), func(kv []byte) bool { return string(kv) == execMarkEnv+"="+p.Mark })
		if marked || (pid == p.PGID && st.start == p.Start) {
			ours = append(ours, pid)
		} else {
			unsure = append(unsure, pid)
		}
	}
	return ours, unsure, nil
}

// endLeftover ends what is left of the command that an earlier attempt
// started under checkpoint item and that runbook did not see exit (it was
// killed meanwhile), before the command runs again: SIGTERM to
// its process group, then SIGKILL, waiting for each. It refuses, changing
// nothing, when the group holds a process it cannot tell to be the
// command's (the group's number reused), and fails when the group will not
// end.
func endLeftover(r *engine.Run, item, what string) error {
	raw, ok := r.Checkpoints()[item]
	if !ok {
		return nil
	}
	var p execProcess
	if err := json.Unmarshal(raw, &p); err != nil {
		return fmt.Errorf("decode checkpoint %s: %w", item, err)
	}
	if p.Ended {
		return nil
	}
	ours, unsure, err := p.members()
	if err != nil {
		return err
	}
	if len(unsure) > 0 {
		return engine.Refusef("process group %d, where an earlier attempt ran %s, holds processes %s that cannot be told to be that command's (they lack its %s mark): end them or wait for them to finish, then run this again", p.PGID, what, joinInts(unsure), execMarkEnv)
	}
	if len(ours) == 0 {
		return nil
	}
	r.Logf("%s from an earlier attempt still runs (process group %d: %s): ending it before it runs again", what, p.PGID, joinInts(ours))
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := syscall.Kill(-p.PGID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal process group %d: %w", p.PGID, err)
		}
		deadline := time.Now().Add(endTimeout)
		for time.Now().Before(deadline) {
			if ours, unsure, err = p.members(); err != nil {
				return err
			}
			if len(ours)+len(unsure) == 0 {
				r.Logf("process group %d ended (%s)", p.PGID, sig)
				return nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return fmt.Errorf("end process group %d of the earlier attempt of %s: processes %s still run after SIGKILL", p.PGID, what, joinInts(append(ours, unsure...)))
}

func joinInts(l []int) string {
	s := make([]string, len(l))
	for i, n := range l {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ", ")
}

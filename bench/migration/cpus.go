package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// placement is where the processes of a run at scale may run. In
// production the KES server has a host of its own; on a small benchmark
// machine it shares the CPUs with the runbook and the Key Manager, so its
// listing, the floor of the verification, slows down by whatever the
// runbook computes meanwhile. "KES apart" gives the KES server one CPU of
// its own and everything else (this process, which runs the Key Manager
// emulator, and the runbook it starts) the others, for the floor and the
// apply alike.
type placement struct {
	name, short string
	kesCPU      int // -1: every process may run on every CPU
}

var shared = placement{name: "shared", short: "shared", kesCPU: -1}

// placements are the ones a machine with cpus CPUs can run: with one CPU
// only shared; otherwise shared and, when kesCPU is a CPU of it, KES apart.
func placements(cpus, kesCPU int) []placement {
	if cpus < 2 || kesCPU < 0 || kesCPU >= cpus {
		return []placement{shared}
	}
	return []placement{shared, {name: fmt.Sprintf("KES apart (CPU %d; the rest on the other %d)", kesCPU, cpus-1), short: "KES apart", kesCPU: kesCPU}}
}

// place applies p to the KES server kesPID and this process, and returns
// what undoes it (each process's CPUs as they were). Processes started
// meanwhile (the runbook) inherit this process's CPUs.
func place(p placement, kesPID int) (undo func(), err error) {
	if p.kesCPU < 0 {
		return func() {}, nil
	}
	var self, kes unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &self); err != nil {
		return nil, err
	}
	if err := unix.SchedGetaffinity(kesPID, &kes); err != nil {
		return nil, fmt.Errorf("read the KES server's CPUs: %w", err)
	}
	if !kes.IsSet(p.kesCPU) || self.Count() < 2 {
		return nil, fmt.Errorf("CPU %d is not the KES server's to take, or this process has one CPU (%d)", p.kesCPU, self.Count())
	}
	apart, rest := self, self
	apart.Zero()
	apart.Set(p.kesCPU)
	rest.Clear(p.kesCPU)
	if err := setAffinity(kesPID, &apart); err != nil {
		return nil, fmt.Errorf("give the KES server CPU %d: %w", p.kesCPU, err)
	}
	if err := setAffinity(os.Getpid(), &rest); err != nil {
		return nil, fmt.Errorf("keep this process off CPU %d: %w", p.kesCPU, err)
	}
	return func() {
		check(setAffinity(os.Getpid(), &self))
		check(setAffinity(kesPID, &kes))
	}, nil
}

// setAffinity sets the CPUs of every thread of process pid: a thread's
// affinity is its own (sched_setaffinity(2)), and a thread takes its
// creator's, so the threads are listed again until a pass finds none it
// has not set.
func setAffinity(pid int, set *unix.CPUSet) error {
	if pid <= 0 {
		return fmt.Errorf("process %d is not running", pid)
	}
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
			done[tid], fresh = true, fresh+1
		}
		if fresh == 0 {
			return nil
		}
	}
}

// procCPU is the user + system CPU time process pid has used, from
// /proc/PID/stat (fields 14 and 15, in USER_HZ, 100 per second on Linux).
// It stops the benchmark when the file cannot be read: a CPU time missing
// on one side of a difference would be reported as a false one.
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	check(err)
	s := string(raw)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces
	f := strings.Fields(s[i+1:])       // f[0] is field 3, the state
	if i < 0 || len(f) < 13 {
		check(fmt.Errorf("/proc/%d/stat: %q has no CPU times", pid, s))
	}
	utime, err := strconv.ParseInt(f[11], 10, 64)
	check(err)
	stime, err := strconv.ParseInt(f[12], 10, 64)
	check(err)
	return time.Duration(utime+stime) * time.Second / 100
}

// selfCPU is the user + system CPU time this process has used.
func selfCPU() time.Duration {
	var ru unix.Rusage
	check(unix.Getrusage(unix.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

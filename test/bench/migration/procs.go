package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// pidsIn are the processes of ns whose command (comm) is one of comms.
func pidsIn(ns string, comms ...string) ([]int, error) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil, fmt.Errorf("list processes of %s: %w", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		comm, err := os.ReadFile("/proc/" + f + "/comm")
		if err != nil {
			continue // ended meanwhile
		}
		c := strings.TrimSpace(string(comm))
		for _, want := range comms {
			if c == want {
				pid, _ := strconv.Atoi(f)
				pids = append(pids, pid)
			}
		}
	}
	if len(pids) == 0 {
		return nil, fmt.Errorf("no %s in %s", strings.Join(comms, " or "), ns)
	}
	return pids, nil
}

// schedVariants are the scheduling settings -sched-ab alternates the
// home's roam-agent and roam-ctrl between, migration by migration (set
// from here on every thread of theirs, root; threads made later inherit
// the setting of the thread that makes them):
//   - built: as the daemons run by default, the fair class at nice 0 and
//     the kernel's slice;
//   - nice: the fair class at nice -10 with a 100 µs slice (a woken
//     thread preempts at once, and keeps the CPU ~9x longer than a
//     nice-0 peer before it is preempted in turn);
//   - rt: SCHED_FIFO priority 1, the lowest real-time priority (a woken
//     thread preempts any fair-class thread at once and is not preempted
//     by them; the kernel's RT throttling still leaves fair tasks their
//     share of each second).
var schedVariants = map[string]unix.SchedAttr{
	"built": {Policy: unix.SCHED_NORMAL},
	"nice":  {Policy: unix.SCHED_NORMAL, Nice: -10, Runtime: 100_000},
	"rt":    {Policy: unix.SCHED_FIFO, Priority: 1},
}

// setSched gives every thread of pids the scheduling variant v.
func setSched(pids []int, v string) error {
	want, ok := schedVariants[v]
	if !ok {
		return fmt.Errorf("scheduling variant %q: want built, nice or rt", v)
	}
	for _, pid := range pids {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return fmt.Errorf("process %d: list threads: %w", pid, err)
		}
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			a := want
			a.Size = unix.SizeofSchedAttr
			if err := unix.SchedSetAttr(tid, &a, 0); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("process %d thread %d: set %s scheduling: %w", pid, tid, v, err)
			}
		}
	}
	return nil
}

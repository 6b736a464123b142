// Package schedslice asks the Linux scheduler (EEVDF, Linux 6.12 and
// later) for a short time slice for every thread of this process: a
// thread of it woken on a busy CPU (a call arriving on a socket) then
// preempts the thread running there at once, instead of waiting until
// that thread's slice ends (the kernel's default is a few hundred µs to
// a few ms). It asks for latency, not for more CPU: a short slice also
// ends sooner. Threads made later inherit it from the thread that makes
// them. Older kernels accept the call and ignore the slice. A leaf
// package.
package schedslice

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Min and Max are the slices the kernel accepts.
const (
	Min = 100 * time.Microsecond
	Max = 100 * time.Millisecond
)

// Check says whether the kernel accepts d as a slice (0: its default).
func Check(d time.Duration) error {
	if d != 0 && (d < Min || d > Max) {
		return fmt.Errorf("scheduler slice %s: want 0 (the kernel's) or %s to %s", d, Min, Max)
	}
	return nil
}

// Set gives every thread of this process the slice d (0: the kernel's
// default) and returns how many threads it set. A thread that ended
// meanwhile is skipped.
func Set(d time.Duration) (int, error) { return SetProcess(0, d) }

// Apply is Set for a daemon's --sched-slice flag: 0 (the flag's default)
// leaves every thread's slice as it is (one set from outside, by chrt or
// a parent, is kept; where seccomp denies sched_setattr nothing is
// tried), and returns 0 threads and no error.
func Apply(d time.Duration) (int, error) {
	if d == 0 {
		return 0, Check(d)
	}
	return Set(d)
}

// SetProcess is Set for the process pid (0: this one; another's needs
// the right to change its scheduling, e.g. root).
func SetProcess(pid int, d time.Duration) (int, error) {
	if err := Check(d); err != nil {
		return 0, err
	}
	dir := "/proc/self/task"
	if pid != 0 {
		dir = fmt.Sprintf("/proc/%d/task", pid)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("set scheduler slice: list threads: %w", err)
	}
	n := 0
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		a, err := unix.SchedGetAttr(tid, 0)
		if errors.Is(err, unix.ESRCH) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("set scheduler slice: read thread %d: %w", tid, err)
		}
		if a.Policy != unix.SCHED_NORMAL && a.Policy != unix.SCHED_BATCH {
			continue // a real-time or idle thread: not ours to change
		}
		a.Size = unix.SizeofSchedAttr
		a.Runtime = uint64(d.Nanoseconds())
		if err := unix.SchedSetAttr(tid, a, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return n, fmt.Errorf("set scheduler slice: thread %d: %w", tid, err)
		}
		n++
	}
	return n, nil
}

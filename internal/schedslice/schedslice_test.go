package schedslice

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slices reads each thread's se.slice (ns) from /proc; ok is false on a
// kernel that does not show it.
func slices(t *testing.T) (map[int]uint64, bool) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]uint64{}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		b, err := os.ReadFile("/proc/self/task/" + e.Name() + "/sched")
		if err != nil {
			continue // ended meanwhile
		}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "se.slice" {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
				if err != nil {
					t.Fatalf("thread %d: se.slice %q", tid, v)
				}
				out[tid] = n
			}
		}
	}
	return out, len(out) > 0
}

// TestSet: every thread gets the slice asked for, and so do threads made
// afterwards; 0 gives the kernel's back; a slice the kernel refuses is
// refused with a clear error, nothing changed.
func TestSet(t *testing.T) {
	if _, err := Set(10 * time.Microsecond); err == nil || !strings.Contains(err.Error(), "want 0") {
		t.Fatalf("Set(10µs): %v, want a refusal", err)
	}
	before, ok := slices(t)
	if !ok {
		t.Skip("this kernel does not show se.slice in /proc/<pid>/task/<tid>/sched")
	}
	t.Cleanup(func() {
		if _, err := Set(0); err != nil {
			t.Error(err)
		}
	})
	n, err := Set(Min)
	if err != nil || n < len(before)/2 {
		t.Fatalf("Set(%s): %d threads, %v", Min, n, err)
	}
	// Blocking system calls at once make the runtime start new threads
	// (more of them than it had).
	var wg sync.WaitGroup
	for range len(before) + 16 {
		wg.Go(func() { _ = unix.Nanosleep(&unix.Timespec{Nsec: 20e6}, nil) })
	}
	wg.Wait()
	after, _ := slices(t)
	made := 0
	for tid, s := range after {
		if _, old := before[tid]; !old {
			made++
		}
		if s != uint64(Min.Nanoseconds()) {
			t.Fatalf("thread %d: slice %d ns, want %d", tid, s, Min.Nanoseconds())
		}
	}
	if made == 0 {
		t.Fatal("no thread was made meanwhile: inheritance not seen")
	}
	if _, err := Set(0); err != nil {
		t.Fatal(err)
	}
	reset, _ := slices(t)
	for tid, s := range reset {
		if s == uint64(Min.Nanoseconds()) {
			t.Fatalf("thread %d: slice still %d ns after Set(0)", tid, s)
		}
	}
}

// TestApply: a daemon's --sched-slice 0 (Apply(0)) keeps the slice set
// from outside (here by Set); a non-zero one is set; a refused one is
// refused.
func TestApply(t *testing.T) {
	if _, err := Apply(10 * time.Microsecond); err == nil || !strings.Contains(err.Error(), "want 0") {
		t.Fatalf("Apply(10µs): %v, want a refusal", err)
	}
	if _, ok := slices(t); !ok {
		t.Skip("this kernel does not show se.slice in /proc/<pid>/task/<tid>/sched")
	}
	t.Cleanup(func() {
		if _, err := Set(0); err != nil {
			t.Error(err)
		}
	})
	if _, err := Set(2 * Min); err != nil {
		t.Fatal(err)
	}
	if n, err := Apply(0); n != 0 || err != nil {
		t.Fatalf("Apply(0): %d threads, %v; want 0, nil", n, err)
	}
	kept, _ := slices(t)
	for tid, s := range kept {
		if s != uint64(2*Min.Nanoseconds()) {
			t.Fatalf("thread %d: slice %d ns after Apply(0), want the %d set before", tid, s, 2*Min.Nanoseconds())
		}
	}
	if n, err := Apply(Min); n == 0 || err != nil {
		t.Fatalf("Apply(%s): %d threads, %v", Min, n, err)
	}
	set, _ := slices(t)
	for tid, s := range set {
		if s != uint64(Min.Nanoseconds()) {
			t.Fatalf("thread %d: slice %d ns after Apply(%s)", tid, s, Min)
		}
	}
}

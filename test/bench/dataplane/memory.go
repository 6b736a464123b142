package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/roamnet/roam/dataplane"
)

// htabElemHeader is the kernel's struct htab_elem before the key (Linux
// 6.x, 64-bit): what a hash map's element costs besides its key and value.
const htabElemHeader = 48

// ctTableBytes is the memory of roam's conntrack map holding flows flows:
// one element (header, key, value) per flow.
func ctTableBytes(flows int) int {
	return flows * (htabElemHeader + int(unsafe.Sizeof(dataplane.CTKey{})) + int(unsafe.Sizeof(dataplane.CTValue{})))
}

// randomRead is what one dependent read at a random place of a buffer of
// size bytes costs on cpu: a chase through a random cycle of its cache
// lines (each read's address comes from the one before, as a hash
// bucket's element comes from the bucket), median of 3 runs of steps
// reads. It bounds from below what a flow's first cache miss costs when
// the flows are too many for the caches: what a lookup in a large
// conntrack table pays at least, for any forwarder on this machine.
func randomRead(cpu, size, steps int) (time.Duration, error) {
	const line = 64
	n := size / line
	if n < 2 {
		return 0, errors.New("random read: buffer too small")
	}
	buf := make([]uint32, n*line/4) // word 0 of each line holds the next line's index
	perm := rand.Perm(n)
	for i := range n {
		buf[perm[i]*line/4] = uint32(perm[(i+1)%n])
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return 0, fmt.Errorf("get affinity: %w", err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return 0, fmt.Errorf("pin to CPU %d: %w", cpu, err)
	}
	var runs []float64
	i := uint32(perm[0])
	var err error
	for range 3 { // CPU time: by the clock a run also measures other people's work
		t0 := threadCPU()
		for range steps {
			i = buf[int(i)*line/4]
		}
		runs = append(runs, float64(threadCPU()-t0)/float64(steps))
	}
	if rerr := unix.SchedSetaffinity(0, &old); rerr != nil {
		err = errors.Join(err, fmt.Errorf("restore affinity: %w", rerr))
	}
	if i == uint32(n) { // never: keeps the chase from being optimized away
		err = errors.Join(err, errors.New("random read: chase left the cycle"))
	}
	if err != nil {
		return 0, err
	}
	return time.Duration(median(runs)), nil
}

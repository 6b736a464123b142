// This file holds the garbage collector settings roam-meta runs with.
//
// Most of an MO's live heap is its registry (about 3 KB a cluster: 300 MB
// at 100,000 clusters), and every GC cycle marks all of it, while the
// garbage comes from hellos and placements (nats copies every message).
// At Go's default GOGC=100 the MO ran a cycle about every two seconds at
// 10,000 clusters; placements answered while a cycle marks share the
// cores with it and wait out its pauses. GOGC=400 runs a cycle per four
// live heaps allocated instead of one (a quarter of the cycles, for the
// same mark work each), at the cost of a heap up to five times the live
// one; a memory limit below the process's cgroup limit keeps that from
// ever getting the process killed: near the limit the GC runs sooner.

package meta

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultGOGC is roam-meta's GC percent unless GOGC is set.
const DefaultGOGC = 400

// memLimitShare is the share of the cgroup memory limit roam-meta's
// GOMEMLIMIT is set to unless GOMEMLIMIT is set (the rest is for what the
// Go runtime does not count, and for the page cache of the JetStream store).
const memLimitShare = 0.8

// TuneGC applies roam-meta's GC defaults to this process, each only when
// its environment variable is not set (or set empty, which the runtime
// ignores too): GOGC=DefaultGOGC, and GOMEMLIMIT at 80% of the memory
// limit of the process's cgroup, if it has one. It
// returns the GC percent and the memory limit in force after it (limit
// math.MaxInt64: none).
func TuneGC() (gogc int, limit int64) {
	return tuneGC(os.LookupEnv, os.ReadFile)
}

func tuneGC(env func(string) (string, bool), read func(string) ([]byte, error)) (gogc int, limit int64) {
	if !setIn(env, "GOGC") {
		debug.SetGCPercent(DefaultGOGC)
	}
	gogc = debug.SetGCPercent(-1)
	debug.SetGCPercent(gogc)
	if !setIn(env, "GOMEMLIMIT") {
		if max, ok := cgroupMemoryLimit(read); ok {
			debug.SetMemoryLimit(int64(float64(max) * memLimitShare))
		}
	}
	return gogc, debug.SetMemoryLimit(-1)
}

// setIn says whether env sets k to something: the runtime reads an empty
// GOGC or GOMEMLIMIT as unset (GOGC=100, no limit), and so does TuneGC.
func setIn(env func(string) (string, bool), k string) bool {
	v, _ := env(k)
	return v != ""
}

// MemLimitText is a limit TuneGC returned as its callers print it: in
// MiB, or "none" for no limit (math.MaxInt64).
func MemLimitText(limit int64) string {
	if limit == math.MaxInt64 {
		return "none"
	}
	return strconv.FormatInt(limit>>20, 10) + " MiB"
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup (v2,
// else v1); ok is false when there is none (or it cannot be read).
func cgroupMemoryLimit(read func(string) ([]byte, error)) (int64, bool) {
	self, err := read("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	var files []string
	sc := bufio.NewScanner(bytes.NewReader(self))
	for sc.Scan() {
		// hierarchy-id:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			files = append(files, filepath.Join("/sys/fs/cgroup", parts[2], "memory.max"), "/sys/fs/cgroup/memory.max")
		case strings.Contains(","+parts[1]+",", ",memory,"):
			files = append(files, filepath.Join("/sys/fs/cgroup/memory", parts[2], "memory.limit_in_bytes"),
				"/sys/fs/cgroup/memory/memory.limit_in_bytes")
		}
	}
	for _, f := range files {
		b, err := read(f)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		// "max" (v2), or v1's "no limit" (a page-rounded huge number).
		if err != nil || v <= 0 || v >= 1<<60 {
			return 0, false
		}
		return v, true
	}
	return 0, false
}
